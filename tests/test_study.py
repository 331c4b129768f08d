"""The study's verdicts (safealign/eval/study.py): each finding from fixed per-prompt answers and
logged curves, reproduced / contradicted / not resolvable, and marked where its judge is not trusted.
No model: the answers and logs are written here."""

import numpy as np
import pytest

from safealign.core import names
from safealign.eval import study

N = 200  # prompts a side: enough to resolve the differences built below


def answers(unsafe_refused: float, false_refusal: float, toxic: float = 0.0, similarity: float = 0.9, seed: int = 0):
    """Judged answers to N unsafe and N safe prompts with the given rates (deterministic per seed;
    seed > 0 also draws which unsafe prompts are refused, so two models disagree both ways)."""
    rng = np.random.default_rng(seed)
    which = rng.permutation(N) if seed else np.arange(N)
    out = {}
    for i in range(N):
        out[f"u{i}"] = {
            "safe": False,
            "refused": bool(which[i] < unsafe_refused * N),
            "toxic": bool(i >= N - toxic * N),
        }
        out[f"s{i}"] = {
            "safe": True,
            "refused": bool(i < false_refusal * N),
            "toxic": False,
            "similarity": float(similarity + rng.normal(0, 0.01)),
        }
    return out


def evidence(methods: dict, logs: dict | None = None) -> study.Evidence:
    return study.Evidence(methods, logs or {}, n_boot=500, seed=1)


def d(value, low, high):
    return {"value": value, "low": low, "high": high, "resolved": low > 0 or high < 0}


def test_the_verdict_rules_read_the_interval_not_the_point():
    up, down, wide = d(0.2, 0.1, 0.3), d(-0.2, -0.3, -0.1), d(0.2, -0.05, 0.45)
    assert study.better([(up, +1)]) == study.REPRODUCED
    assert study.better([(down, +1)]) == study.CONTRADICTED
    assert study.better([(wide, +1)]) == study.UNRESOLVED  # +20 points, but the interval holds 0
    assert study.better([(up, +1), (up, -1)]) == study.CONTRADICTED  # a trade-off is not "better"
    tight = d(0.01, -0.04, 0.06)
    assert study.same([tight, tight]) == study.REPRODUCED
    assert study.same([tight, wide]) == study.UNRESOLVED
    assert study.same([tight, up]) == study.CONTRADICTED
    assert study.same([d(0.03, 0.01, 0.05)]) == study.REPRODUCED  # resolved but inside the margin: the same
    assert study.no_improvement([(tight, -1)]) == study.REPRODUCED
    assert study.no_improvement([(down, -1)]) == study.CONTRADICTED  # lower toxicity: an improvement
    assert study.no_improvement([(up, -1)]) == study.REPRODUCED  # worse is no improvement either
    assert study.no_improvement([(wide, -1)]) == study.UNRESOLVED


def test_f1_follows_the_paired_differences_on_unsafe_prompts():
    strong, weak = answers(0.95, 0.1), answers(0.5, 0.1)
    assert study.f1(evidence({"SFT": strong, "KTO": weak})).verdict == study.REPRODUCED
    assert study.f1(evidence({"SFT": weak, "KTO": strong})).verdict == study.CONTRADICTED
    assert study.f1(evidence({"SFT": answers(0.5, 0.1, seed=1), "KTO": answers(0.52, 0.1, seed=2)})).verdict == (
        study.UNRESOLVED
    )  # 2 points apart, disagreeing on ~100 prompts both ways
    assert study.f1(evidence({"SFT": weak})).verdict == study.NOT_RUN


def test_f2_reads_refusing_unsafe_and_answering_safe_prompts_at_once():
    best = answers(0.95, 0.05)
    m = {"SFT+KTO": best, "SFT": answers(0.7, 0.05), "SFT+DPO": answers(0.95, 0.4)}
    assert study.f2(evidence(m)).verdict == study.REPRODUCED
    m["KTO"] = answers(0.95, 0.0)  # refuses as much, never falsely: better at both at once
    f = study.f2(evidence(m))
    assert f.verdict == study.CONTRADICTED and "resolved worse than KTO" in f.evidence
    m["KTO"] = answers(0.0, 0.0)  # never refuses: no false refusals, but that is not "better overall"
    assert study.f2(evidence(m)).verdict == study.REPRODUCED


def test_f3_reads_similarity_to_the_base():
    m = {"KTO": answers(0.5, 0.1, similarity=0.95), "SFT": answers(0.9, 0.1, similarity=0.7)}
    assert study.f3(evidence(m)).verdict == study.REPRODUCED
    m["SFT+KTO"] = answers(0.9, 0.1, similarity=0.99)
    assert study.f3(evidence(m)).verdict == study.CONTRADICTED


def test_f4_and_f5():
    kto, dpo = answers(0.95, 0.1), answers(0.95, 0.5)
    assert study.f4(evidence({"SFT+KTO": kto, "SFT+DPO": dpo})).verdict == study.REPRODUCED
    assert study.f4(evidence({"SFT+KTO": kto, "SFT+DPO": kto})).verdict == study.CONTRADICTED  # not "far more"
    assert study.f4(evidence({"SFT+KTO": kto, "SFT+DPO": answers(0.95, 0.5, toxic=0.3)})).verdict == study.CONTRADICTED
    assert study.f5(evidence({"SFT+KTO symmetric": dpo, "SFT+DPO": dpo})).verdict == study.REPRODUCED
    assert study.f5(evidence({"SFT+KTO symmetric": kto, "SFT+DPO": dpo})).verdict == study.CONTRADICTED


def log(losses, kl=None, rejected=None):
    return [
        {
            "step": i + 1,
            "loss": v,
            **({"kl": kl[i]} if kl else {}),
            **({"rewards/rejected": rejected[i]} if rejected else {}),
        }
        for i, v in enumerate(losses)
    ]


def test_training_findings_read_the_curves():
    steps = 40
    smooth = list(np.linspace(0.5, 0.3, steps))
    spiky_kl = [0.02] * 4 + [0.5] * 6 + [0.05] * 30
    kto = log(smooth, kl=spiky_kl, rejected=list(np.linspace(0, -1, steps)))
    sft_kto = log(smooth, kl=[0.0] * steps, rejected=[0.0] * steps)
    assert study.f6(evidence({}, {"KTO": kto, "SFT+KTO": sft_kto})).verdict == study.REPRODUCED
    flat = log(smooth, kl=[0.1] * steps, rejected=list(np.linspace(0, 1, steps)))
    moved = log(smooth, kl=[0.3] * steps)  # SFT+KTO's KL above KTO's
    assert study.f6(evidence({}, {"KTO": flat, "SFT+KTO": moved})).verdict == study.CONTRADICTED
    no_spike = log(smooth, kl=list(np.linspace(0.1, 1.0, steps)), rejected=list(np.linspace(0, -1, steps)))
    late_spike = log(
        smooth, kl=[0.02] * 4 + [0.5] * 6 + [0.05] * 20 + [2.0] + [0.05] * 9, rejected=list(np.linspace(0, -1, steps))
    )
    assert study.f6(evidence({}, {"KTO": late_spike, "SFT+KTO": sft_kto})).verdict == study.PARTLY  # not the early one
    assert study.f6(evidence({}, {"KTO": no_spike, "SFT+KTO": sft_kto})).verdict == study.PARTLY
    faster = log(list(np.linspace(0.5, 0.1, steps)))
    assert study.f7(evidence({}, {"SFT+KTO symmetric": faster, "SFT+KTO": sft_kto})).verdict == study.REPRODUCED
    assert study.f7(evidence({}, {"SFT+KTO symmetric": sft_kto, "SFT+KTO": faster})).verdict == study.CONTRADICTED
    jagged = log([0.5 + (0.3 if i % 2 else -0.3) for i in range(steps)])
    assert (
        study.f10(evidence({}, {"SFT+KTO length-normalised": jagged, "SFT+KTO": sft_kto})).verdict == study.REPRODUCED
    )
    assert (
        study.f10(evidence({}, {"SFT+KTO length-normalised": sft_kto, "SFT+KTO": jagged})).verdict == study.CONTRADICTED
    )
    blown = log(smooth[:-1] + [float("nan")])
    assert study.volatility([x["loss"] for x in blown]) == float("inf")
    assert study.volatility([0.4]) is None and study.slope([1, 2, 3], [1.0, float("nan"), 3.0]) == pytest.approx(1.0)
    one = log([0.4])
    assert study.f10(evidence({}, {"SFT+KTO length-normalised": one, "SFT+KTO": sft_kto})).verdict == study.UNRESOLVED
    clamped_both = {"KTO": sft_kto, "SFT+KTO": sft_kto}
    assert study.f6(evidence({}, clamped_both)).verdict == study.UNRESOLVED


def test_f8_reads_the_pair_whose_kl_estimate_moved():
    steps = 40
    same_answers = answers(0.9, 0.1)
    kto = log(list(np.linspace(0.5, 0.3, steps)), kl=[0.5] * steps)
    kto_s = log(list(np.linspace(0.5, 0.1, steps)), kl=[0.2] * steps)
    clamped = log(list(np.linspace(0.5, 0.3, steps)), kl=[0.0] * steps)
    m = {k: same_answers for k in ("KTO", "KTO-S", "SFT+KTO", "SFT+KTO-S")}
    both = {"KTO": kto, "KTO-S": kto_s, "SFT+KTO": clamped, "SFT+KTO-S": clamped}
    f = study.f8(evidence(m, both))
    assert f.verdict == study.REPRODUCED and "clamped" in f.evidence  # the SFT pair is one run
    assert study.f8(evidence(m, {"SFT+KTO": clamped, "SFT+KTO-S": clamped})).verdict == study.UNRESOLVED
    higher = log(list(np.linspace(0.5, 0.1, steps)), kl=[0.9] * steps)
    assert study.f8(evidence(m, {**both, "KTO-S": higher})).verdict == study.CONTRADICTED


def test_a_finding_on_an_untrusted_detector_is_marked():
    m = {"SFT": answers(0.95, 0.1), "KTO": answers(0.5, 0.1)}
    out = {f.id: f for f in study.judge_findings(evidence(m), {"toxicity": -0.02, "refusal": 0.91})}
    assert out["F1"].untrusted == ["toxicity"] and "κ 0.6" in out["F1"].row()[2]
    assert out["F3"].untrusted == []  # similarity: no detector
    assert out["F4"].verdict == study.NOT_RUN and out["F4"].untrusted == []
    trusted = {f.id: f for f in study.judge_findings(evidence(m), {"toxicity": 0.7, "refusal": 0.91})}
    assert trusted["F1"].untrusted == []


def test_study_experiment_names_follow_the_makefile_rule():
    n = study.exp_names("smollm2-135m", ["eval.leaderboard.enabled=false"], ["sft", "SFT+KTO"])
    assert n == {  # smollm2-135m's profile gives the study its data route: data-study stands for it
        "SFT": "sft+model-smollm2-135m+data-study+eval.leaderboard.enabled-false",
        "SFT+KTO": "sft_kto+model-smollm2-135m+data-study+eval.leaderboard.enabled-false",
    }
    assert study.exp_names(None, [], ["kto"]) == {"KTO": "kto"}  # no profile, no route
    assert study.exp_names("toy-llama3", [], ["kto"]) == {"KTO": "kto+model-toy-llama3"}
    assert study.out_name(None, []) == "study-tiny-local"


def test_methods_groups_stand_for_their_recipes_and_unknown_words_are_named():
    assert study.select(None) is None and study.select([]) is None  # all thirteen
    grid = study.select(["grid"])
    assert grid == list(study.GRID.values()) and "sft_kto_iter" not in grid and len(grid) == 10
    assert study.select(["online", "sft"]) == ["sft_kto_iter", "sft_dpo_iter", "sft_grpo", "sft"]
    assert list(study.exp_names(None, [], study.select(["online"]))) == list(study.ONLINE)
    with pytest.raises(ValueError, match=r"METHODS: grids, sft_kto_typo: not in the study .*a group: grid online"):
        study.select(["sft", "grids", "sft_kto_typo"])


def test_the_study_runs_each_method_on_the_models_data_route_then_the_users_set():
    runs = study.runs("smollm2-135m", ["kto.beta=0.2"], ["sft", "kto"])
    assert [(r, name) for r, name, _ in runs] == [
        ("sft", "sft+model-smollm2-135m+data-study+kto.beta-0.2"),
        ("kto", "kto+model-smollm2-135m+data-study+kto.beta-0.2"),
    ]
    items = runs[0][2]
    assert items[-1] == "kto.beta=0.2" and items[:-1] == study.route("smollm2-135m")
    assert "data.generate.prompts=data/sg_safety/study_prompts.jsonl" in items
    assert "data.generate.answers.backend=local" in items and "data.generate.refusals.backend=prompts" in items
    assert study.runs(None, [], ["sft"]) == [("sft", "sft", [])]


def test_the_table_shows_the_over_refusal_probes_where_the_held_out_set_has_them():
    def rate(v):
        return {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 40}

    def model(fr, probes=None):
        safety = {"overall": {"toxicity_rate": rate(0.2), "refusal_rate": rate(0.7), "false_refusal_rate": rate(fr)}}
        if probes is not None:
            safety["by_subset"] = {"over_refusal": {"false_refusal_rate": rate(probes)}}
        return {"safety": safety}

    s = {"model_order": ["base", "sft"], "models": {"base": model(0.1, 0.2), "sft": model(0.3, 0.5)}}
    header, rows = study.table({"SFT": s})
    assert header[4] == "of which over-refusal probes % ↓"
    assert (
        [r[0] for r in rows] == ["base", "SFT"]
        and rows[1][4] == "50.0 [40.0, 60.0]"
        and rows[0][4] == "20.0 [10.0, 30.0]"
    )
    plain = {"model_order": ["base", "sft"], "models": {"base": model(0.1), "sft": model(0.3)}}
    header, rows = study.table({"SFT": plain})
    assert "of which over-refusal probes % ↓" not in header and rows[1][3] == "30.0 [20.0, 40.0]"


def test_the_users_set_replaces_the_routes_items_on_the_same_or_an_overlapping_key():
    route = ["kto.max_steps=30", "eval.safety.max_new_tokens=48", "data.generate.answers.backend=local"]

    def merged(sets):
        return names.merge_sets(("study_set", route), ("SET", sets))

    assert merged(["kto.max_steps=10", "seed=3"]) == [
        "eval.safety.max_new_tokens=48",
        "data.generate.answers.backend=local",
        "kto.max_steps=10",
        "seed=3",
    ]
    assert merged(["kto={beta: 0.2}"]) == route[1:] + ["kto={beta: 0.2}"]  # kto= covers kto.*
    whole = "eval.safety={max_new_tokens: 32}"
    assert merged([whole]) == [route[0], route[2], whole]
    # a longer name that starts with the key is another key
    assert merged(["kto.max_steps_x=1"]) == route + ["kto.max_steps_x=1"]
    items = study.runs("smollm2-135m", ["kto.max_steps=12"], ["kto"])[0][2]
    assert [x for x in items if x.startswith("kto.max_steps=")] == ["kto.max_steps=12"]  # the route's is replaced
    with pytest.raises(ValueError, match=r"SET: data.generate.answers.backend=local falls inside data.generate"):
        names.merge_sets(("study_set", ["data.generate={limit: 2}"]), ("SET", ["data.generate.answers.backend=local"]))
