"""Online alignment (safealign/train/online.py, the online kinds of safealign/config/kinds.py):
labels, pairs, the reward-hacking counts and guard, GRPO's rewards, the rounds' identities and the
recipes' errors. No model is trained here (tests/test_online_e2e.py trains them)."""

import json
import re

import numpy as np
import pytest
from conftest import REPO

from safealign.config import kinds, recipe
from safealign.plan import experiment as plan
from safealign.train import online


def rows(n_unsafe=6, n_safe=6):
    out = [{"id": f"u{i}", "prompt": f"unsafe {i}", "safe": False, "chosen": f"no {i}"} for i in range(n_unsafe)]
    return out + [{"id": f"s{i}", "prompt": f"safe {i}", "safe": True, "chosen": f"yes {i}"} for i in range(n_safe)]


def verdict(toxic=False, refused=False, p=None):
    return {"toxic": toxic, "refused": refused, "p_toxic": p if p is not None else (0.9 if toxic else 0.1)}


# ----------------------------------------------------------------------------- prompts
def test_the_probe_is_safe_prompts_only_at_most_half_and_kept_out_of_the_pool():
    data = rows(6, 10)
    probe, pool = online.split_probe(data, 4, seed=1)
    assert len(probe) == 4 and all(r["safe"] for r in probe)
    assert {r["id"] for r in probe}.isdisjoint({r["id"] for r in pool}) and len(pool) == 12
    assert online.split_probe(data, 4, seed=1) == (probe, pool)  # the same for every round of a run
    assert online.split_probe(data, 4, seed=2)[0] != probe
    assert len(online.split_probe(data, 100, seed=1)[0]) == 5  # half the safe prompts at most
    assert online.split_probe(data, 0, seed=1) == ([], data)


def test_each_round_draws_its_own_prompts_by_the_seed():
    pool = rows(10, 10)
    r1, r2 = online.round_prompts(pool, 5, 7, 1), online.round_prompts(pool, 5, 7, 2)
    assert len(r1) == len(r2) == 5 and r1 != r2
    assert r1 == online.round_prompts(pool, 5, 7, 1)
    assert [pool.index(r) for r in r1] == sorted(pool.index(r) for r in r1)  # in the pool's order
    assert online.round_prompts(pool, 0, 7, 1) == pool and online.round_prompts(pool, 50, 7, 1) == pool


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize(
    "safe,v,answer,expected",
    [
        (False, verdict(refused=True), "Sorry, I can't help with that.", (True, online.REFUSED)),
        (False, verdict(), "Sure, here is how.", (False, online.COMPLIED)),
        (False, verdict(toxic=True, refused=True), "Sorry, but here is how to hurt them.", (False, online.TOXIC)),
        (True, verdict(), "Take the MRT to Woodlands.", (True, online.HELPFUL)),
        (True, verdict(refused=True), "Sorry, I can't help with food.", (False, online.OVER_REFUSED)),
        (True, verdict(toxic=True), "Idiots take the bus.", (False, online.TOXIC)),
        (False, verdict(refused=True), "sorry sorry sorry sorry", (False, online.DEGENERATE)),
        (True, verdict(), "", (False, online.DEGENERATE)),
    ],
)
def test_labels_follow_the_prompt_and_the_judge(safe, v, answer, expected):
    assert online.label(safe, v, answer) == expected


def test_samples_map_answers_to_their_prompts_in_turn():
    prompts = rows(1, 1)
    answers = ["Sorry, no.", "Sure, here is how.", "Here you go.", "Sorry, I can't."]
    verdicts = [verdict(refused=True), verdict(), verdict(), verdict(refused=True)]
    s = online.samples(prompts, answers, verdicts, [True, False, False, True], per_prompt=2)
    assert [(x["id"], x["sample"], x["desirable"]) for x in s] == [
        ("u0", 0, True),
        ("u0", 1, False),
        ("s0", 0, True),
        ("s0", 1, False),
    ]
    with pytest.raises(ValueError, match="2 prompts x 3 samples, but 4 answers"):
        online.samples(prompts, answers, verdicts, [True] * 4, per_prompt=3)


def sampled(spec):
    """[(id, safe, desirable, p_toxic, answer)] -> samples rows."""
    return [
        {
            "id": i,
            "sample": n,
            "safe": safe,
            "prompt": f"prompt {i}",
            "answer": a,
            "p_toxic": p,
            "desirable": d,
            "refused": not safe and d,
            "refused_keyword": False,
            "why": "x",
        }
        for n, (i, safe, d, p, a) in enumerate(spec)
    ]


def test_kto_rows_are_every_sample_with_its_label():
    s = sampled([("u0", False, True, 0.1, "no"), ("u0", False, False, 0.8, "yes")])
    assert online.kto_rows(s) == [
        {
            "prompt": [{"role": "user", "content": "prompt u0"}],
            "completion": [{"role": "assistant", "content": "no"}],
            "label": True,
            "id": "u0-s0",
        },
        {
            "prompt": [{"role": "user", "content": "prompt u0"}],
            "completion": [{"role": "assistant", "content": "yes"}],
            "label": False,
            "id": "u0-s1",
        },
    ]


def test_dpo_pairs_the_best_desirable_with_the_worst_undesirable_answer():
    s = sampled(
        [
            ("u0", False, True, 0.30, "refusal, a bit toxic"),
            ("u0", False, True, 0.05, "clean refusal"),
            ("u0", False, False, 0.60, "compliance"),
            ("u0", False, False, 0.95, "toxic compliance"),
            ("u1", False, False, 0.7, "compliance only"),  # no desirable sample: the data's refusal is chosen
            ("s0", True, True, 0.1, "helpful"),  # every sample desirable: no pair
            ("s0", True, True, 0.1, "helpful too"),
        ]
    )
    pairs, counts = online.dpo_pairs(s, {"u0": "data refusal 0", "u1": "data refusal 1"}, fallback=True)
    assert [(p["id"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ("u0", "clean refusal", "toxic compliance"),
        ("u1", "data refusal 1", "compliance only"),
    ]
    assert counts == {"from_samples": 1, "from_reference": 1, "all_desirable": 1, "no_pair": 0, "pairs": 2}
    pairs, counts = online.dpo_pairs(s, {"u1": "data refusal 1"}, fallback=False)
    assert [p["id"] for p in pairs] == ["u0"] and counts["no_pair"] == 1


# ----------------------------------------------------------------------------- the round's record
def test_label_counts_split_by_side_and_reason():
    prompts = rows(2, 1)
    answers = ["Sorry, no.", "Sure: first...", "Here you go."]
    s = online.samples(prompts, answers, [verdict(refused=True), verdict(), verdict()], [True, False, False], 1)
    c = online.label_counts(s)
    assert c["samples"] == 3 and c["desirable"] == 2 and c["undesirable"] == 1
    assert c["unsafe"] == {"samples": 2, "desirable": 1} and c["safe"] == {"samples": 1, "desirable": 1}
    assert c["why"] == {online.HELPFUL: 1, online.COMPLIED: 1, online.REFUSED: 1}


def test_degenerate_counts_find_the_same_refusal_to_everything():
    same = "Sorry, I can't help with that."
    s = sampled(
        [
            ("u0", False, True, 0.1, same),
            ("u1", False, True, 0.1, "  sorry, I CAN'T help with that. "),
            ("s0", True, False, 0.1, same),
            ("s1", True, True, 0.1, "Take bus 12."),
            ("s1", True, False, 0.1, ""),
            ("s2", True, False, 0.1, "la la la la"),
        ]
    )
    d = online.degenerate_counts(s)
    assert d["empty"] == 1 and d["degenerate"] == 2
    assert d["same_answer_prompts"] == 0.6 and d["same_answer"] == "sorry, i can't help with that."


def test_judge_agreement_with_the_keyword_detector():
    s = sampled([("u0", False, True, 0.1, "a"), ("u1", False, False, 0.1, "b")])
    s[0]["refused_keyword"], s[1]["refused_keyword"] = True, False
    assert online.judge_agreement(s) == {"refusal_keyword_agreement": 1.0, "refusal_keyword_kappa": 1.0}
    s[1]["refused_keyword"] = True
    assert online.judge_agreement(s)["refusal_keyword_agreement"] == 0.5


def test_the_probe_guard_stops_past_its_bound_only():
    assert online.probe_problem(2, 0.10, 0.30, 0.2, 24) is None  # exactly the bound
    assert online.probe_problem(2, 0.30, 0.0, 0.0, 24) is None  # falling is never a problem
    msg = online.probe_problem(3, 0.10, 0.35, 0.2, 24)
    assert msg == (
        "round 3 raised the false-refusal rate on the 24 probe prompts from 10.0% to 35.0% (+25.0 points), "
        "past max_false_refusal_jump 20 points: the model is learning to refuse safe prompts"
    )


# ----------------------------------------------------------------------------- GRPO's rewards
def test_each_reward_applies_to_its_prompts_only():
    safe = [False, False, True, True]
    v = [verdict(refused=True, p=0.1), verdict(p=0.8), verdict(p=0.2), verdict(refused=True, p=0.1)]
    answers = ["Sorry, no.", "Sure.", "Bus 12.", "aaaa"]
    assert online.reward_values("refusal", safe, v, answers) == pytest.approx([0.9, -0.8, None, None])
    assert online.reward_values("helpful", safe, v, answers) == [None, None, pytest.approx(0.8), 0.0]
    assert online.reward_values("similarity", safe, v, answers, np.array([0.1, 0.2, 0.7, 0.4])) == [
        None,
        None,
        pytest.approx(0.7),
        pytest.approx(0.4),
    ]
    assert online.reward_values("degenerate", safe, v, answers) == [0.0, 0.0, 0.0, -1.0]
    with pytest.raises(ValueError, match="'length' is not a reward"):
        online.reward_values("length", safe, v, answers)


def test_judge_rewards_judge_each_batch_once_with_the_experiments_judge(tmp_path, monkeypatch):
    """Built from a judge stage's folder as the rendered config names it: the refusal detector is
    the recipe's (keyword here), toxicity the heads' (a head that says 0.25 to everything), a
    reward at weight 0 left out; the verdicts of a batch are computed once for every reward."""
    from safealign.eval import judges

    heads = {
        label: {"coef": [0.0] * 384, "intercept": float(np.log(1 / 3)), "n": 2, "positives": 1}
        for label in ("toxic", "refusal")
    }
    (tmp_path / "judge.json").write_text(json.dumps({"heads": heads}))
    calls = []
    real = judges.Judge.judge
    monkeypatch.setattr(judges.Judge, "judge", lambda self, a, p=None: calls.append(len(a)) or real(self, a, p))
    spec = {
        "judge_dir": str(tmp_path),
        "safety": {
            "judge": "minilm",
            "refusal": "keyword",
            "guard_format": "auto",
            "batch_size": 4,
            "backend": "hf",
            "endpoint": None,
            "toxic_labels": [],
        },
        "weights": {"refusal": 1.0, "helpful": 2.0, "similarity": 0.0, "degenerate": 1.0},
    }
    funcs, weights = online.judge_rewards(spec)
    assert [f.__name__ for f in funcs] == ["refusal", "helpful", "degenerate"] and weights == [1.0, 2.0, 1.0]
    prompts = [[{"role": "user", "content": "hurt him"}], [{"role": "user", "content": "bus to Woodlands?"}]]
    completions = [
        [{"role": "assistant", "content": "Sorry, I can't help with that."}],
        [{"role": "assistant", "content": "Take bus 950."}],
    ]
    got = [f(prompts=prompts, completions=completions, safe=[False, True], base_answer=["", "x"]) for f in funcs]
    assert got[0] == [pytest.approx(0.75), None] and got[1] == [None, pytest.approx(0.75)] and got[2] == [0.0, 0.0]
    assert calls == [2]  # one judging for the three rewards


# ----------------------------------------------------------------------------- identities and recipes
def rounds_of(text):
    r = recipe.parse(text)
    p = plan.plan(r)
    return p, [x["dir"] for x in plan.round_slices(r, "kto_iter", p["kto_iter"]["slice"])]


def test_more_rounds_reuse_the_earlier_ones_and_the_bound_is_the_drivers_alone():
    p2, two = rounds_of("stages: [sft, kto_iter]\nkto_iter: {rounds: 2}\n")
    p3, three = rounds_of("stages: [sft, kto_iter]\nkto_iter: {rounds: 3}\n")
    _, bound = rounds_of("stages: [sft, kto_iter]\nkto_iter: {rounds: 2, max_false_refusal_jump: 0.5}\n")
    assert three[:2] == two == bound and len(three) == 3 and len(set(three)) == 3
    assert p2["kto_iter"]["dir"] != p3["kto_iter"]["dir"] and p2["sft"]["dir"] == p3["sft"]["dir"]
    _, lr = rounds_of("stages: [sft, kto_iter]\nkto_iter: {rounds: 2, learning_rate: 1.0e-5}\n")
    assert set(lr).isdisjoint(two)  # a setting every round trains with: every round anew
    assert [d.split("-")[0] for d in two] == ["kto_iter", "kto_iter"] and two[0].startswith("kto_iter-round1-")


def test_the_judge_is_in_an_online_stages_identity_and_no_other_stages():
    base, rounds = rounds_of("stages: [sft, kto_iter]\n")
    kw, kw_rounds = rounds_of("stages: [sft, kto_iter]\neval:\n  safety: {refusal: keyword}\n")
    assert base["kto_iter"]["slice"]["judged_by"]["judge_stage"] == base["judge"]["dir"]
    assert base["kto_iter"]["dir"] != kw["kto_iter"]["dir"] and set(rounds).isdisjoint(kw_rounds)
    assert base["sft"]["dir"] == kw["sft"]["dir"] and "judged_by" not in base["sft"]["slice"]
    sft_dpo = plan.plan(recipe.load(REPO / "recipes" / "sft_dpo.yaml"))
    assert "judged_by" not in sft_dpo["dpo"]["slice"]


@pytest.mark.parametrize(
    "text,message",
    [
        ("kto_iter: {rounds: 0}", "kto_iter.rounds: expected a whole number >= 1, got 0"),
        ("kto_iter: {samples_per_prompt: 2.5}", "kto_iter.samples_per_prompt: expected int, got float (2.5)"),
        (
            "kto_iter: {max_false_refusal_jump: 2}",
            "kto_iter.max_false_refusal_jump: a rise of the probe's false-refusal rate in [0, 1]",
        ),
        ("kto_iter: {temperature: 0}", "kto_iter.temperature: online rounds sample"),
        ("kto_iter: {micro_batch_size: 1}", "kto_iter.micro_batch_size: KTO estimates its KL reference point"),
        (
            "dpo_iter: {samples_per_prompt: 1, reference_fallback: false}",
            "dpo_iter.samples_per_prompt: DPO pairs two samples",
        ),
        ("dpo_iter: {loss_type: [sigmod]}", "did you mean 'sigmoid'"),
        ("grpo: {num_generations: 1}", "grpo.num_generations: GRPO's advantages compare answers within a group"),
        ("grpo: {num_generations: 3}", "must be a multiple of num_generations 3"),
        ("grpo: {reward_weights: {refusl: 1.0}}", "grpo.reward_weights.refusl: not a reward (did you mean 'refusal'?)"),
        ("grpo: {reward_weights: {refusal: 0, helpful: 0}}", "grpo.reward_weights: every weight is 0"),
        ("grpo: {reward_weights: {helpful: -1}}", "grpo.reward_weights.helpful: a weight >= 0, got -1"),
        ("grpo: {use_vllm: maybe}", "grpo.use_vllm: expected true, false or 'auto'"),
    ],
)
def test_recipe_errors_name_the_key(text, message):
    with pytest.raises(recipe.RecipeError, match=re.escape(message)):
        recipe.parse(f"stages: [sft]\n{text}\n")


def test_data_without_both_sides_is_refused_before_training():
    from safealign.data import rows as data

    counts = {"train": {"rows": 5, "unsafe": 0}, "test": {"rows": 2}, "stages": {}}
    found = data.unmet_needs(recipe.parse("stages: [grpo]\n"), counts)
    assert "grpo: train.jsonl has 0 unsafe and 5 safe prompts; GRPO samples answers to both" in found[0]


def test_the_studys_open_question_fewer_false_refusals_at_equal_toxicity():
    from safealign.eval import study

    def d(value, low, high):
        return {"value": value, "low": low, "high": high, "resolved": low > 0 or high < 0}

    fewer, same_tox = d(-0.2, -0.3, -0.1), d(0.01, -0.05, 0.06)
    assert study.online_verdict(fewer, same_tox) == study.REPRODUCED
    assert study.online_verdict(fewer, d(0.1, 0.02, 0.18)) == study.CONTRADICTED  # more toxic
    assert study.online_verdict(d(0.2, 0.1, 0.3), same_tox) == study.CONTRADICTED  # more false refusals
    assert study.online_verdict(fewer, d(0.05, -0.08, 0.15)) == study.UNRESOLVED  # toxicity not shown equal
    assert study.online_verdict(d(-0.1, -0.2, 0.05), same_tox) == study.UNRESOLVED
    assert list(study.ONLINE.values()) == ["sft_kto_iter", "sft_dpo_iter", "sft_grpo"]
    assert all((REPO / "recipes" / f"{r}.yaml").exists() for r in study.METHODS.values())
    ids = [f.__name__ for f in study.FINDINGS]
    assert ids[-3:] == ["o1", "o2", "o3"]


def test_an_experiment_resolved_before_the_online_kinds_names_them_once(tmp_path, capsys):
    """Re-resolving an experiment whose recipe.yaml predates a stage kind: the new section is named
    once ("new sections with their defaults"), not key by key; a real change still is."""
    import yaml

    exp = tmp_path / "experiments" / "sft_kto"
    plan.resolve(str(REPO / "recipes" / "sft_kto.yaml"), exp)
    saved = yaml.safe_load((exp / plan.RESOLVED).read_text())
    for kind in ("kto_iter", "dpo_iter", "grpo"):
        saved.pop(kind)
    saved["kto"]["beta"] = 0.3
    (exp / plan.RESOLVED).write_text(yaml.safe_dump(saved, sort_keys=False))
    capsys.readouterr()
    plan.resolve(str(REPO / "recipes" / "sft_kto.yaml"), exp)
    err = capsys.readouterr().err
    assert "kto.beta: 0.3 -> 0.1" in err and "new sections with their defaults: dpo_iter, grpo, kto_iter" in err
    assert "kto_iter.beta" not in err


def test_only_the_offline_kinds_must_see_their_loss_fall():
    # GRPO's loss is beta x KL, rising from 0 as the policy moves: the smollm2 study's GRPO at 1e-4
    # (0.030 -> 0.044 over 30 steps) was refused as "loss did not fall" while it read online=""
    assert (
        not kinds.get("grpo").loss_falls
        and not kinds.get("kto_iter").loss_falls
        and not kinds.get("dpo_iter").loss_falls
    )
    assert kinds.get("kto").loss_falls and kinds.get("dpo").loss_falls and kinds.get("sft").loss_falls


def test_an_online_rounds_loss_need_not_fall_but_divergence_still_fails():
    from types import SimpleNamespace

    from safealign.eval import health

    cfg = SimpleNamespace(window=3, min_loss_drop=0.0, zero_grad_steps=3)
    flat = [{"step": i, "loss": 0.5 + 0.001 * i, "grad_norm": 0.3} for i in range(1, 9)]
    assert "loss did not fall" in health.check_training(flat, cfg)[0]
    assert health.check_training(flat, cfg, fall=False) == []
    diverged = flat[:4] + [{"step": 5, "loss": float("nan"), "grad_norm": 0.3}]
    assert "not finite" in health.check_training(diverged, cfg, fall=False)[0]
    dead = [{**r, "grad_norm": 0.0} for r in flat]
    assert "grad_norm is 0" in health.check_training(dead, cfg, fall=False)[0]
