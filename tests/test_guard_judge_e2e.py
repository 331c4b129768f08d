"""A guard model as the safety judge, end to end on CPU (slow: ~3 minutes): tiny-guard (tiny-local
fine-tuned to answer in WildGuard's format, as a user's Llama Guard 3 / ShieldGemma / WildGuard
would be named by hub id) built by make, asked by the judge stage about the labelled answers and
by the safety stage about every held-out answer, as a user runs it:
`make exp NAME=sft SET='eval.safety.judge=guard:tiny-guard eval.safety.refusal=guard'`."""

import json
import os
import subprocess

import pytest
from conftest import REPO

from safealign.core import names
from safealign.data import rows as data
from safealign.eval import judges
from safealign.models import guards
from safealign.models import load as models

pytestmark = pytest.mark.slow
SET = "sft.max_steps=6 eval.leaderboard.enabled=false eval.models=final eval.safety.judge=guard:tiny-guard eval.safety.refusal=guard"
ENV = {**os.environ, "SAFEALIGN_QUIET": "1"}


def make(*args):
    out = subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, env=ENV)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def guard():
    make("tiny-guard")
    return models.embedded_path(models.GUARD)


def test_tiny_guard_judges_templated_answers_in_wildguards_grammar(guard):
    info = json.loads((guard / "build_info.json").read_text())
    assert info["guard_format"] == "wildguard" and info["final_loss"] < info["first_loss"] / 5
    splits, _ = data.load_canonical("data/sg_safety", REPO)
    labelled = judges.labelled_answers(splits["test"])  # 135 held-out answers it never learnt
    got = guards.verdicts(str(guard), "wildguard", [(a["prompt"], a["response"]) for a in labelled], batch_size=16)
    assert sum(v.malformed for v in got) <= 5
    toxic = sum(v.toxic == a["toxic"] for v, a in zip(got, labelled)) / len(labelled)
    refused = sum(bool(v.refused) == a["refusal"] for v, a in zip(got, labelled)) / len(labelled)
    assert toxic >= 0.9 and refused >= 0.9, (toxic, refused)


def test_make_exp_with_a_guard_judge_writes_its_verdicts_counts_and_agreement(guard, tmp_path):
    out = subprocess.run(
        ["make", "exp", "NAME=sft", f"SET={SET}", f"EXPERIMENTS={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    exp = tmp_path / names.exp_name("sft", SET.split())
    rows = [json.loads(line) for line in (exp / "safety-sft" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 90 and all("guard_malformed" in r and "guard_categories" in r for r in rows)
    m = json.loads((exp / "safety-sft" / "metrics.json").read_text())
    assert m["judge"] == "guard:tiny-guard" and m["refusal_detector"] == "guard"
    assert m["guard"]["verdicts"] == 90 and m["guard"]["malformed"] == sum(r["guard_malformed"] for r in rows)
    unsafe = [r for r in rows if not r["safe"]]
    assert m["overall"]["toxicity_rate"]["value"] == round(sum(r["toxic"] for r in unsafe) / len(unsafe), 4)
    gap = m["overall"]["refusal_gap"]["value"]
    assert gap == pytest.approx(
        m["overall"]["refusal_rate"]["value"] - m["overall"]["false_refusal_rate"]["value"], abs=1e-4
    )
    agree = json.loads((exp / "judge" / "agreement.json").read_text())
    assert "toxic_guard" in agree["held_out"] and "refusal_guard" in agree["real_answers"]["kappa"]
    summary = (exp / "eval" / "summary.md").read_text()
    assert "toxicity by guard:tiny-guard: κ" in summary and "refusal gap" in summary
    assert "| toxic: guard | refusal: guard |" in summary  # its agreement beside the other detectors'
