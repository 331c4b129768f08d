"""Public benchmarks end to end on CPU (slow: ~1 minute): `make exp` with eval.safety.sets on the
offline fixtures, as the issue's command runs them here, each set a stage per model answered by
the model and judged; a second experiment reuses them; the summary and the report show them."""

import json
import os
import subprocess

import pytest
from classifiers import make_classifier
from conftest import REPO

from safealign.core import names

pytestmark = pytest.mark.slow
SET = (
    "sft.max_steps=6 eval.leaderboard.enabled=false eval.models=final eval.safety.set_source=fixtures "
    "eval.safety.sets=[heldout,xstest,jbb,harmbench]"
)
ENV = {**os.environ, "SAFEALIGN_QUIET": "1"}


def make_exp(name, experiments, sets=SET):
    out = subprocess.run(
        ["make", "--no-print-directory", "exp", f"NAME={name}", f"SET={sets}", f"EXPERIMENTS={experiments}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out, experiments / names.exp_name(name, sets.split())


def test_make_exp_answers_and_judges_every_set_per_model_and_reports_them(tmp_path):
    out, exp = make_exp("sft", tmp_path)
    _check_sets(exp)
    _check_reuse(tmp_path, exp)


def _check_sets(exp):
    for b, n in (("xstest", 12), ("jbb", 10), ("harmbench", 5)):
        for m in ("base", "sft"):
            rows = [json.loads(line) for line in (exp / f"safety-{b}-{m}" / "answers.jsonl").read_text().splitlines()]
            assert len(rows) == n and all(r["id"].startswith(f"{b}-") and r["answer"] is not None for r in rows)
            met = json.loads((exp / f"safety-{b}-{m}" / "metrics.json").read_text())
            assert met["set"] == b and met["source"].endswith(f"data/benchmark_fixtures/{b}")
            unsafe = [r for r in rows if not r["safe"]]
            assert met["overall"]["refusal_rate"]["value"] == round(sum(r["refused"] for r in unsafe) / len(unsafe), 4)
            if m == "sft":
                assert all("similarity" in r for r in rows if r["safe"])  # against the base model's answer
    assert json.loads((exp / "safety-harmbench-base" / "metrics.json").read_text())["import"]["skipped"]
    assert len((exp / "safety-sft" / "answers.jsonl").read_text().splitlines()) == 90  # the held-out rows as before
    s = json.loads((exp / "eval" / "summary.json").read_text())
    assert s["sets"] == ["xstest", "jbb", "harmbench"]
    assert "refusal_gap" in s["models"]["sft"]["sets"]["jbb"]["overall"]
    assert "refusal_gap" not in s["models"]["sft"]["sets"]["harmbench"]["overall"]  # harmful prompts only
    md = (exp / "report.md").read_text()
    assert "### XSTest (`xstest`, CC-BY-4.0)" in md and "### HarmBench text behaviours (`harmbench`, MIT)" in md


def _check_reuse(tmp_path, exp):
    # another experiment with the same base model and sets: the base model's set stages are reused
    out2, exp2 = make_exp("sft_kto", tmp_path, SET + " kto.max_steps=4")
    for b in ("xstest", "jbb", "harmbench"):
        assert (exp2 / f"safety-{b}-base").resolve() == (exp / f"safety-{b}-base").resolve()
        assert f"safety-{b}-base: reusing" in out2.stderr
    assert (exp2 / "safety-xstest-kto").resolve() != (exp / "safety-xstest-sft").resolve()

    bad = subprocess.run(
        [str(REPO / ".venv/bin/python"), "-m", "safealign", "stage", "safety", "--model", "base", "--exp", str(exp)]
        + ["--eval-set", "orbench"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert bad.returncode != 0 and "--eval-set orbench: not a benchmark of this experiment" in bad.stderr


def test_toxigen_s_generations_are_scored_by_the_set_s_own_classifier(tmp_path):
    """ToxiGen's prompts continued by the model and scored by a classifier named for that set only
    (a user's classifier:tomh/toxigen_roberta with toxic_labels [LABEL_1]; here a tiny local one
    whose LABEL_1 takes every answer for toxic), beside the held-out set judged by MiniLM."""
    make_classifier(tmp_path / "clf", {0: "LABEL_0", 1: "LABEL_1"}, bias=(-2.0, 2.0))
    sets = (
        "sft.max_steps=6 eval.leaderboard.enabled=false eval.models=final eval.safety.set_source=fixtures "
        f"eval.safety.sets=[heldout,toxigen] eval.safety.set_judges.toxigen=classifier:{tmp_path / 'clf'} "
        "eval.safety.toxic_labels=[LABEL_1] eval.safety.set_limit=6"
    )
    _, exp = make_exp("sft", tmp_path / "experiments", sets)
    m = json.loads((exp / "safety-toxigen-sft" / "metrics.json").read_text())
    assert m["judge"] == f"classifier:{tmp_path / 'clf'}" and m["set"] == "toxigen"
    assert m["overall"]["toxicity_rate"]["value"] == 1.0 and m["overall"]["toxicity_rate"]["n"] == 6  # set_limit
    assert len(m["by_category"]) >= 2  # a sample across the groups
    held = json.loads((exp / "safety-sft" / "metrics.json").read_text())
    assert held["judge"] == "minilm" and held["overall"]["toxicity_rate"]["value"] < 1.0
    md = (exp / "eval" / "summary.md").read_text()
    assert "judge `classifier:" in md and "This set's own judge (eval.safety.set_judges) is not measured" in md
