"""Health checks on hand-made training logs and answers (pure functions, no model)."""

import json
import math

import pytest

from safealign.config import recipe
from safealign.eval import health, safety
from safealign.models import generation

CFG = recipe.HealthCfg()


def log(losses, grads=None):
    grads = grads or [1.0] * len(losses)
    return [{"step": i + 1, "loss": l, "grad_norm": g} for i, (l, g) in enumerate(zip(losses, grads))]


def test_a_learning_run_is_healthy():
    assert health.check_training(log([2.0, 1.8, 1.5, 1.2, 1.0, 0.9, 0.8, 0.7, 0.65, 0.6]), CFG) == []


def test_saturated_run_like_lr_1e6_fails_naming_step_and_metric():
    # the case: loss stuck at ln(vocab) with zero gradient norm from step 4
    ln_v = math.log(1024)
    problems = health.check_training(
        log([2.1, 3.0, ln_v, ln_v, ln_v, ln_v, ln_v, ln_v], [5.0, 40.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0]), CFG
    )
    assert any(p.startswith("loss did not fall") for p in problems)
    assert any("grad_norm is 0 on the last 3 steps (6 to 8)" in p for p in problems)


@pytest.mark.parametrize("bad", ["nan", "inf", float("nan"), float("-inf")])
def test_non_finite_loss_or_grad_fails_with_the_step(bad):
    (p,) = health.check_training(log([2.0, 1.5, bad, 1.0]), CFG)
    assert p.startswith(f"loss is {bad} at step 3")
    (p,) = health.check_training(log([2.0, 1.5, 1.2, 1.0], [1.0, bad, 1.0, 1.0]), CFG)
    assert p.startswith(f"grad_norm is {bad} at step 2")


def test_the_log_file_round_trip_keeps_nan_detectable(tmp_path):
    from safealign.train.callbacks import JsonlLogCallback

    cb = JsonlLogCallback(tmp_path / "log.jsonl")

    class State:
        is_world_process_zero, global_step, epoch = True, 1, 0.1

    cb.on_log(None, State(), None, logs={"loss": float("nan"), "grad_norm": 1.0})
    rows = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert health.check_training(rows, CFG) == ["loss is nan at step 1 (not finite: the run diverged)"]


def test_thresholds_come_from_the_recipe():
    flat = log([1.0, 0.99, 1.0, 0.98, 0.99, 0.97])
    assert health.check_training(flat, CFG) == []
    strict = recipe.parse("health:\n  min_loss_drop: 0.2\n").health
    (p,) = health.check_training(flat, strict)
    assert "did not fall by more than 20%" in p
    with pytest.raises(recipe.RecipeError, match=r"health.min_loss_drop: must be in \[0, 1\), got 2"):
        recipe.parse("health:\n  min_loss_drop: 2\n")


def test_empty_log_is_a_problem():
    assert health.check_training([{"step": 1, "train_runtime": 3.0}], CFG) == ["logged no loss at all"]


@pytest.mark.parametrize(
    "answer,degenerate",
    [
        ("", True),
        ("   ", True),
        ("!!!! ...", True),
        ("the the the the", True),
        ("aaaaaaaa", True),
        ("I cannot help with that.", False),
        ("Boleh, try the hawker centre", False),
        ("OK", False),
        ("不可以", False),
    ],
)
def test_degenerate_answers(answer, degenerate):
    assert health.is_degenerate(answer) is degenerate


def test_safety_stage_refuses_to_score_empty_answers(monkeypatch, tmp_path):
    rows = [{"id": f"r{i}", "safe": i % 2 == 0, "category": "c", "prompt": f"p{i}"} for i in range(10)]
    monkeypatch.setattr(generation, "generate", lambda *a, **k: [""] * 9 + ["I cannot help with that."])
    monkeypatch.setattr(safety, "load_tokenizer", lambda m: None)  # no model "m": no control tokens either
    monkeypatch.setattr(safety, "refuse_control", lambda tok, rows: (rows, []))

    class NoJudge:
        def judge(self, answers):
            raise AssertionError("degenerate answers must not be judged (they would score as safe)")

    cfg = recipe.Recipe().eval.safety
    with pytest.raises(safety.DegenerateAnswers, match="9 of 10 answers are empty or degenerate"):
        safety.run("m", rows, cfg, NoJudge(), tmp_path, 0, health_cfg=CFG)
    assert not (tmp_path / "metrics.json").exists() and (tmp_path / "answers.jsonl").exists()
