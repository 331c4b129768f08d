"""Evaluation: the leaderboard through lm-eval with the official normalisation (leaderboard,
nltkdata), the safety suite (safety: answers, rates, bootstrap intervals), its judges and
refusal detectors (judges, refusal), health checks of logs and answers (health), and the
experiment's summary and report (summary, report).

May import: core, models, config, plan.
"""
