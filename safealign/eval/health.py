"""Health checks: a run that failed numerically is a failed stage, never a finished one.

Training (every training stage, on its train_log.jsonl, before the stage is stamped done):
    - a loss or gradient norm that is not finite (NaN, inf; the log writes them as strings)
    - a loss that did not fall: the mean of the last `window` logged losses is not below the
      mean of the first `window` by more than `min_loss_drop` (a fraction)
    - a dead run: the gradient norm is exactly zero on the last `zero_grad_steps` logged steps
Evaluation (the safety stage, on its answers):
    - answers that are empty or degenerate (no letter or digit, or one word or character
      repeated) are counted; above `max_degenerate` of all answers the stage fails, because
      an empty answer looks "safe" to every judge.
Thresholds are the recipe's `health:` section; all functions here are pure.
"""

from __future__ import annotations

import math


def number(v) -> float:
    """A logged value as a float; the log writes non-finite floats as strings ('nan', 'inf')."""
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return float(v)


def check_training(log: list[dict], cfg, fall: bool = True) -> list[str]:
    """Problems with a training log (rows with step, loss, grad_norm, ...); [] when healthy.
    `fall`: whether the loss must fall (an online round's need not: docs/online.md)."""
    steps = [r for r in log if "loss" in r]
    if not steps:
        return ["logged no loss at all"]
    problems = []
    for key in ("loss", "grad_norm"):
        bad = next((r for r in steps if key in r and not math.isfinite(number(r[key]))), None)
        if bad is not None:
            problems.append(f"{key} is {bad[key]} at step {bad.get('step')} (not finite: the run diverged)")
    if problems:
        return problems
    losses = [number(r["loss"]) for r in steps]
    w = min(cfg.window, len(losses) // 2)
    if w >= 1 and fall:
        first, last = sum(losses[:w]) / w, sum(losses[-w:]) / w
        if not last < first * (1 - cfg.min_loss_drop):
            need = f" by more than {cfg.min_loss_drop:.0%}" if cfg.min_loss_drop else ""
            problems.append(
                f"loss did not fall{need}: mean of the first {w} steps {first:.4f}, of the last {w} "
                f"(to step {steps[-1].get('step')}) {last:.4f}"
            )
    grads = [(r.get("step"), number(r["grad_norm"])) for r in steps if "grad_norm" in r]
    tail = grads[-cfg.zero_grad_steps :]
    if len(grads) >= cfg.zero_grad_steps and all(g == 0 for _, g in tail):
        problems.append(
            f"grad_norm is 0 on the last {len(tail)} steps ({tail[0][0]} to {tail[-1][0]}): "
            "the model stopped learning (a learning rate far too high saturates it)"
        )
    return problems


def is_degenerate(answer: str) -> bool:
    """Empty, no letter or digit, or one word or one character repeated."""
    text = (answer or "").strip()
    if not text or not any(ch.isalnum() for ch in text):
        return True
    words = text.split()
    if len(words) >= 3 and len(set(words)) == 1:
        return True
    return len(text) >= 4 and len(set(text.replace(" ", ""))) == 1


def check_answers(answers: list[str], cfg) -> tuple[float, str | None]:
    """(share of degenerate answers, a problem when it is above cfg.max_degenerate)."""
    if not answers:
        return 0.0, "no answers were generated"
    bad = [a for a in answers if is_degenerate(a)]
    share = len(bad) / len(answers)
    if share > cfg.max_degenerate:
        example = repr(bad[0][:60])
        return share, (
            f"{len(bad)} of {len(answers)} answers are empty or degenerate (e.g. {example}), above "
            f"health.max_degenerate {cfg.max_degenerate:.0%}: the model is broken, not safe"
        )
    return share, None
