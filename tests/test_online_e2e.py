"""Online alignment end to end on tiny-local (`make test-slow`): iterative KTO's rounds as store
stages (a longer run reuses them, the probe's guard stops a run and a higher bound resumes it),
iterative DPO's pairs, GRPO's judge rewards in trl's log. The recipes at their own length are the
CPU regression suite's (regress/cpu.yaml runs every recipe)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from safealign.core import fsutil

REPO = Path(__file__).resolve().parent.parent
QUICK = "eval.leaderboard.enabled=false sft.max_steps=40"


def make_exp(root: Path, name: str, sets: str, exp_name: str):
    r = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "exp",
            f"NAME={name}",
            "MODEL=",
            f"SET={sets}",
            f"EXP_NAME={exp_name}",
            f"EXPERIMENTS={root}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return r


def stamp(folder: Path) -> str:
    return (folder / fsutil.STAMP).read_text()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


@pytest.mark.slow
def test_iterative_kto_rounds_are_stages_a_longer_run_reuses_and_the_guard_stops(root, monkeypatch):
    one = make_exp(root, "sft_kto_iter", f"{QUICK} kto_iter.rounds=1 kto_iter.max_steps=6", "iter1")
    exp = root / "iter1"
    (r1,) = json.loads((exp / "kto_iter" / "rounds.json").read_text())
    labels = r1["labels"]
    assert labels["samples"] == 48 * 4 and labels["desirable"] + labels["undesirable"] == 192
    assert 0 < labels["desirable"] < 192 and sum(labels["why"].values()) == 192
    assert r1["probe"]["n"] == 24 and 0 <= r1["probe"]["before"] <= 1 and r1["degenerate"]["empty"] >= 0
    samples = [json.loads(x) for x in (exp / "kto_iter" / "round1" / "samples.jsonl").read_text().splitlines()]
    train = [json.loads(x) for x in (exp / "kto_iter" / "round1" / "round_rows.jsonl").read_text().splitlines()]
    assert [t["label"] for t in train] == [s["desirable"] for s in samples]  # every sample, as the judge labelled it
    from safealign.data import rows as data
    from safealign.train import online

    probe, _ = online.split_probe(data.read_jsonl(exp / "data" / "train.jsonl"), 24, 42)
    assert len(probe) == 24 and not {p["id"] for p in probe} & {s["id"] for s in samples}  # the probe is never sampled
    assert (exp / "kto_iter" / "merged").resolve() == (exp / "kto_iter" / "round1" / "merged").resolve()
    assert "kto_iter: round 1:" in one.stdout and "probe false refusal" in one.stdout
    round1 = (exp / "kto_iter" / "round1").resolve()
    first = stamp(round1)

    # two rounds: round 1 is reused (not retrained), round 2 starts from its model
    make_exp(root, "sft_kto_iter", f"{QUICK} kto_iter.rounds=2 kto_iter.max_steps=6", "iter2")
    exp2 = root / "iter2"
    assert (exp2 / "kto_iter" / "round1").resolve() == round1 and stamp(round1) == first
    r1b, r2 = json.loads((exp2 / "kto_iter" / "rounds.json").read_text())
    assert r1b == r1 and r2["input_model"] == str((round1 / "merged").resolve())
    assert r2["probe"]["before"] == r1["probe"]["after"]
    log = [json.loads(x) for x in (exp2 / "kto_iter" / "train_log.jsonl").read_text().splitlines()]
    assert {x["round"] for x in log} == {1, 2} and max(x["step"] for x in log) == 12

    # the guard: a third round whose probe jumps past the bound stops the run, rounds 1-3 stay done
    from safealign.plan import experiment as plan
    from safealign.run import rounds, stages

    exp3 = root / "iter3"
    plan.resolve(
        str(REPO / "recipes" / "sft_kto_iter.yaml"),
        exp3,
        [*QUICK.split(), "kto_iter.rounds=3", "kto_iter.max_steps=6", "kto_iter.max_false_refusal_jump=0.25"],
    )
    e3 = plan.Experiment(exp3)
    monkeypatch.setattr(rounds, "online_probe", lambda *a, **k: 0.5)  # round 3's probe after training
    with pytest.raises(stages.StageError) as err:
        stages.run_online(e3, "kto_iter")
    before = r2["probe"]["after"]
    assert f"round 3 raised the false-refusal rate on the 24 probe prompts from {before:.1%} to 50.0%" in str(err.value)
    assert "past max_false_refusal_jump 25 points" in str(err.value) and "rounds 1-3 are kept" in str(err.value)
    rounds = [root / ".stages" / x["dir"] for x in e3.rounds("kto_iter")]
    assert stamp(rounds[0]) == first and all(fsutil.is_done(d) for d in rounds)
    assert not fsutil.is_done(e3.dir("kto_iter"))
    # a higher bound: every round reused, the stage done, its model round 3's
    exp4 = root / "iter4"
    plan.resolve(
        str(REPO / "recipes" / "sft_kto_iter.yaml"),
        exp4,
        [*QUICK.split(), "kto_iter.rounds=3", "kto_iter.max_steps=6", "kto_iter.max_false_refusal_jump=0.9"],
    )
    done = [stamp(d) for d in rounds]
    e4 = plan.Experiment(exp4)
    stages.run_online(e4, "kto_iter")
    assert [stamp(d) for d in rounds] == done and fsutil.is_done(e4.dir("kto_iter"))
    assert (e4.dir("kto_iter") / "merged").resolve() == (rounds[2] / "merged").resolve()


@pytest.mark.slow
def test_iterative_dpo_pairs_the_models_own_answers(root):
    make_exp(root, "sft_dpo_iter", f"{QUICK} dpo_iter.rounds=1 dpo_iter.max_steps=4", "dpo_iter1")
    folder = root / "dpo_iter1" / "dpo_iter" / "round1"
    (rec,) = json.loads((root / "dpo_iter1" / "dpo_iter" / "rounds.json").read_text())
    pairs = [json.loads(x) for x in (folder / "round_rows.jsonl").read_text().splitlines()]
    samples = [json.loads(x) for x in (folder / "samples.jsonl").read_text().splitlines()]
    assert len(pairs) == rec["pairs"]["pairs"] > 0
    assert rec["pairs"]["from_samples"] + rec["pairs"]["from_reference"] == len(pairs)
    bad = {(s["id"], s["answer"]) for s in samples if not s["desirable"]}
    good = {(s["id"], s["answer"]) for s in samples if s["desirable"]}
    for p in pairs:  # the rejected answer is always one of the model's undesirable samples
        assert (p["id"], p["rejected"][0]["content"]) in bad
    from_samples = sum((p["id"], p["chosen"][0]["content"]) in good for p in pairs)
    assert from_samples == rec["pairs"]["from_samples"]
    assert (root / "dpo_iter1" / "eval" / "summary.json").exists()


@pytest.mark.slow
def test_grpo_logs_each_judge_reward_apart(root):
    make_exp(root, "sft_grpo", f"{QUICK} grpo.max_steps=4 grpo.prompts=24", "grpo")
    log = [json.loads(x) for x in (root / "grpo" / "grpo" / "train_log.jsonl").read_text().splitlines()]
    steps = [x for x in log if "loss" in x]
    assert len(steps) == 4
    for name in ("refusal", "helpful", "similarity", "degenerate"):
        assert all(f"rewards/{name}/mean" in x for x in steps), name
    rows = [json.loads(x) for x in (root / "grpo" / "grpo" / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and all(r["base_answer"] for r in rows if r["safe"])
    # a reward at weight 0 is not computed, and without similarity the base model answers nothing
    make_exp(
        root, "sft_grpo", f"{QUICK} grpo.max_steps=2 grpo.prompts=24 grpo.reward_weights.similarity=0", "grpo_nosim"
    )
    log = [json.loads(x) for x in (root / "grpo_nosim" / "grpo" / "train_log.jsonl").read_text().splitlines()]
    assert not any("rewards/similarity/mean" in x for x in log) and any("rewards/refusal/mean" in x for x in log)
    rows = [json.loads(x) for x in (root / "grpo_nosim" / "grpo" / "train.jsonl").read_text().splitlines()]
    assert not any(r["base_answer"] for r in rows)
