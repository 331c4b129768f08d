"""Slow end-to-end behaviour beyond the recipes themselves (`make test-slow`; .ci/run runs it).

Every shipped recipe end to end, the study's comparison and their figures are the CPU
regression suite's (regress/cpu.yaml, `make regress SUITE=cpu`, run by .ci/run right after these
tests and checked against committed baselines); what is here is what that suite does not run:
full-parameter training and two concurrent runs on one store.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


@pytest.mark.slow
def test_full_parameter_mode(root):
    sets = (
        "sft.full_finetune=true kto.full_finetune=true sft.max_steps=20 kto.max_steps=10 "
        "sft.learning_rate=1e-4 kto.learning_rate=1e-5 eval.leaderboard.enabled=false"
    )
    r = subprocess.run(
        ["make", "--no-print-directory", "exp", "NAME=sft_kto", f"SET={sets}", "EXP_NAME=full", f"EXPERIMENTS={root}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for stage in ("sft", "kto"):
        d = root / "full" / stage
        assert (d / "merged" / "model.safetensors").exists() and not (d / "adapter").exists()
    assert "adapter: lora" not in (root / "full" / "sft" / "axolotl.yaml").read_text()
    assert "lora" not in yaml.safe_load((root / "full" / "kto" / "kto.yaml").read_text())


@pytest.mark.slow
def test_two_concurrent_runs_on_an_empty_store(two_concurrent_runs):
    """Two `make exp` started together on an empty store (conftest.two_concurrent_runs): both
    succeed, each stage is built once (the other process waits on the stage's lock and reuses it),
    and nothing is left half-done."""
    root, runs = two_concurrent_runs
    for _, rc, out, err in runs:
        assert rc == 0, out[-3000:] + err[-3000:]
    # a stage's command line is in its log (the terminal is quiet); a stage another process built has none
    logs = [[f.read_text() for f in (folder / "logs").glob("*.log")] for folder, *_ in runs]
    trained = [sum(t.count("-m axolotl.cli.train") + t.count("train_kto.py kto.yaml") for t in ts) for ts in logs]
    assert sorted(trained) in ([0, 2], [1, 1]) and sum(trained) == 2, trained  # SFT once and KTO once in all
    assert any("waiting: another process is building" in err for *_, err in runs)
    assert any("which another process built meanwhile" in out for *_, out, _ in runs)
    summaries = [json.loads((folder / "eval" / "summary.json").read_text())["models"] for folder, *_ in runs]
    assert summaries[0] == summaries[1] and summaries[0]["kto"]["leaderboard"]
    assert not list((root / ".stages").glob("*.tmp")) and all(
        (d / ".done").exists() for d in (root / ".stages").iterdir() if d.is_dir()
    )
