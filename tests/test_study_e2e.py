"""`make study` end to end (kept apart from tests/test_study.py, whose pure tests `make mutation`
runs in its copy of the tree, where make has no venv): a method outside the grid is refused before
anything runs; part of the grid runs in one store and writes its page (slow)."""

import pytest

from safealign.eval import study


# ----------------------------------------------------------------------------- make study, end to end
def _make(*args):
    import os
    import subprocess

    from conftest import REPO

    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, env=env)


def test_make_study_refuses_a_method_outside_the_grid(tmp_path):
    r = _make("study", "METHODS=sft sft_kto_typo", f"EXPERIMENTS={tmp_path / 'experiments'}")
    assert r.returncode != 0 and "METHODS: sft_kto_typo: not in the study" in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "experiments").exists()


@pytest.mark.slow
def test_make_study_runs_part_of_the_grid_in_one_store_and_writes_its_verdicts(tmp_path):
    import json

    root = tmp_path / "experiments"
    sets = "sft.max_steps=12 kto.max_steps=10 eval.leaderboard.enabled=false eval.safety.limit=30"
    r = _make("study", "METHODS=sft kto sft_kto", f"SET={sets}", f"EXPERIMENTS={root}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = root / study.out_name(None, sets.split())
    page = (out / "study.md").read_text()
    assert "| SFT+KTO |" in page and "| base |" in page and "## Findings" in page
    assert "Each method is trained once (seed " in page and "make study SET=seed=N" in page  # what no interval covers
    assert len([p for p in (root / ".stages").glob("sft-*") if p.is_dir()]) == 1  # SFT trained once, shared
    got = {f["id"]: f for f in json.loads((out / "study.json").read_text())["findings"]}
    assert list(got) == [f"F{i}" for i in range(1, 11)] + ["O1", "O2", "O3"]  # the online questions, not run here
    assert got["F4"]["verdict"] == study.NOT_RUN and got["F1"]["verdict"] != study.NOT_RUN
    assert all(got[o]["verdict"] == study.NOT_RUN for o in ("O1", "O2", "O3"))
    assert got["F1"]["verdict"] in (study.REPRODUCED, study.CONTRADICTED, study.UNRESOLVED)
    assert (out / "kto_kl.png").stat().st_size > 0 and "![KL estimate z0: KTO vs SFT+KTO](kto_kl.png)" in page
