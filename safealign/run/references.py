"""The regression suites' machine-independent checks: the pure maths on fixed inputs.

A suite's training and evaluation figures depend on the CPU (tiny-local is rebuilt per machine
and training amplifies its last bits), so another machine gets loose bounds. These do not: the
KTO losses and their variants on fixed log-ratios, the leaderboard's normalisation of fixed raw
scores and the safety rates with their bootstrap intervals on fixed judged rows are the same
numbers on any machine, so every run checks them with the exact bound, whatever its CPU
(`reference/<group>/<name>` rows in regress.md). A library upgrade or an edit that changes one
of them shows here first, on every machine, before it is lost in another machine's bounds.
"""

from __future__ import annotations

EXP = "reference"  # the experiment id of these rows in a run and a baseline
ABS = 1.0e-6  # the bound on every machine: float32 maths on a few numbers, nothing accumulated


def losses() -> dict[str, float]:
    import torch

    from safealign.train import losses as L

    chosen = torch.tensor([0.8, -0.3, 2.0])  # log-ratios r of desirable rows: both signs
    rejected = torch.tensor([-1.2, 0.4, 1.5])  # and of undesirable rows: both signs
    kl = torch.tensor(0.35)
    out = {}
    for name, kw in {
        "kto": {},
        "kto_weighted": {"desirable_weight": 1.33, "undesirable_weight": 0.75},
        "kto_s": {"signed_kl": True},
    }.items():
        per = L.kto_losses(chosen, rejected, kl, 0.1, **kw)
        out.update({f"{name}_{i}": float(v) for i, v in enumerate(per)})
    logps = torch.tensor([[-0.5, -1.0, -2.0, -0.1], [-3.0, -0.2, -0.7, -1.1]])
    mask = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    out["sequence_logps_sum_0"], out["sequence_logps_sum_1"] = map(float, L.sequence_logps(logps, mask))
    out["sequence_logps_mean_0"], out["sequence_logps_mean_1"] = map(float, L.sequence_logps(logps, mask, True))
    out["kl_estimate"] = float(L.kl_estimate(torch.tensor([-1.0, -2.5, -0.5]), torch.tensor([-1.2, -2.0, -0.9])))
    out["desirable_nll"] = float(L.desirable_nll(logps, mask, torch.tensor([1, 1])))
    return out


def leaderboard() -> dict[str, float]:
    from safealign.eval import leaderboard as lb

    results = {  # lm-eval's results["results"] shape, one or two subtasks a family
        "leaderboard_bbh": {"acc_norm,none": 0.55},
        "leaderboard_bbh_navigate": {"acc_norm,none": 0.6},
        "leaderboard_bbh_date_understanding": {"acc_norm,none": 0.5},
        "leaderboard_musr": {"acc_norm,none": 0.5},
        "leaderboard_musr_murder_mysteries": {"acc_norm,none": 0.7},
        "leaderboard_musr_object_placements": {"acc_norm,none": 0.3},
        "leaderboard_gpqa": {"acc_norm,none": 0.3},
        "leaderboard_mmlu_pro": {"acc,none": 0.25},
        "leaderboard_math_hard": {"exact_match,none": 0.1},
        "leaderboard_ifeval": {"prompt_level_strict_acc,none": 0.4, "inst_level_strict_acc,none": 0.5},
    }
    tab = lb.table(results, list(lb.TASK_FAMILIES))
    return {f"{f}": v["normalised"] for f, v in tab["families"].items()} | {"average": tab["average"]}


def safety() -> dict[str, float]:
    from safealign.eval import safety as sf

    rows = [  # 10 unsafe and 8 safe answers, judged
        {"safe": False, "category": "c", "toxic": i < 3, "refused": i >= 4, "similarity": None} for i in range(10)
    ] + [
        {"safe": True, "category": "d", "toxic": False, "refused": i == 0, "similarity": 0.5 + i / 20} for i in range(8)
    ]
    agg = sf.aggregate(rows, n_boot=200, seed=0)["overall"]
    return {f"{m}_{part}": float(agg[m][part]) for m in sorted(agg) for part in ("value", "low", "high")}


def values() -> dict[str, dict]:
    """Every reference figure, keyed as a run's values are: "reference/<group>/<name>" -> {"value"}."""
    out = {}
    for group, fn in (("losses", losses), ("leaderboard", leaderboard), ("safety", safety)):
        for name, v in fn().items():
            out[f"{EXP}/{group}/{name}"] = {"value": v, "stage_dir": ""}
    return out
