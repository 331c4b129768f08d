"""The CPU regression suite can fail: a deliberately harmful override (SFT cut to 10 of its 120
steps) makes `make regress` exit non-zero naming the metric, against the committed baseline,
on this machine (exact bounds) or another (its other_machine bounds). Slow: one SFT run and
its evaluation (the whole suite runs in .ci/run)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_harmful_override_fails_the_suite_naming_the_metric(tmp_path):
    sets = "sft.max_steps=10 eval.leaderboard.enabled=false"  # the leaderboard off: its metrics go missing too
    r = subprocess.run(
        ["make", "--no-print-directory", "regress", "SUITE=cpu", "ONLY=sft", f"SET={sets}", f"EXPERIMENTS={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    assert r.returncode != 0, r.stdout[-2000:]
    assert "REGRESSION sft/sft/last_loss:" in r.stderr, r.stderr[-3000:]
    (run,) = (tmp_path / "regress" / "cpu").iterdir()
    res = json.loads((run / "regress.json").read_text())
    rows = {row["metric"]: row for row in res["rows"]}
    assert res["ok"] is False and res["overrides"] == sets.split() and res["only"] == ["sft"]
    assert [e["state"] for e in res["experiments"]] == ["done"]  # the experiment ran; its numbers moved
    assert rows["sft/sft/last_loss"]["status"] == "FAIL" and rows["sft/sft/last_loss"]["value"] > 2.0
    assert rows["sft/sft/leaderboard_average"]["status"] == "missing"
    assert all(not k.startswith("sft_kto/") for k in rows)  # ONLY=sft: the other experiments are not judged
    md = (run / "regress.md").read_text()
    assert md.startswith("# Regression suite `cpu`: FAIL") and "| sft/sft/last_loss |" in md.split("## All")[0]
    # an overridden run is never a baseline
    a = subprocess.run(
        ["make", "--no-print-directory", "regress-accept", "SUITE=cpu", f"EXPERIMENTS={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert a.returncode != 0 and "ran with SET sft.max_steps=10" in a.stderr
