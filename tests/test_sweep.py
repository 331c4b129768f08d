"""`make sweep`: each grid point runs with the user's SET as well (it used to replace it, so a
short sweep silently ran full-length defaults), nothing is resolved for NAME itself, and a bad
GRID writes nothing. `make pipeline-sweep` expands the same way (safealign.core.names.sweep_sets)."""

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from safealign.core import names

REPO = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def make(*args):
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, capture_output=True, text=True, env=ENV)


def test_each_point_keeps_the_users_set_and_nothing_else_is_resolved(tmp_path):
    root = tmp_path / "experiments"
    # -n: each point is resolved (its experiment folder written) but nothing trains
    r = make(
        "-n",
        "sweep",
        "NAME=sft_kto",
        "GRID=kto.beta=0.1,0.2",
        "SET=kto.max_steps=3 sft.max_steps=2",
        f"EXPERIMENTS={root}",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    folders = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    assert len(folders) == 2, [p.name for p in folders]  # the two points; no folder for NAME with SET alone
    seen = []
    for f in folders:
        recipe = yaml.safe_load((f / "recipe.yaml").read_text())
        assert recipe["kto"]["max_steps"] == 3 and recipe["sft"]["max_steps"] == 2, f
        seen.append(recipe["kto"]["beta"])
    assert sorted(seen) == [0.1, 0.2]


@pytest.mark.parametrize(
    "grid, sets, expect",
    [
        ("kto.beta", "", "expected key=v1,v2"),
        ("kto.beta=0.1,0.2", "kto.beta=0.3", "kto.beta: set by both SET and GRID"),
    ],
)
def test_a_bad_grid_is_refused_and_writes_nothing(tmp_path, grid, sets, expect):
    root = tmp_path / "experiments"
    r = make("sweep", "NAME=sft_kto", f"GRID={grid}", f"SET={sets}", f"EXPERIMENTS={root}")
    assert r.returncode != 0 and expect in r.stderr, r.stdout + r.stderr
    assert not root.exists()


@pytest.mark.parametrize(
    "grid, sets, expect",
    [
        # a key twice in GRID ran each point with both values, the last winning
        ("kto.beta=0.1,0.2 kto.beta=0.3", "", "GRID kto.beta: given twice (0.1,0.2 and 0.3); keep one"),
        ("seed=1,2", "kto.beta=0.1 kto.beta=0.2", "SET kto.beta: given twice (0.1 and 0.2); keep one"),
    ],
)
def test_a_key_given_twice_to_make_sweep_is_refused_and_writes_nothing(tmp_path, grid, sets, expect):
    # -n: were it accepted, its points would be resolved, not trained
    root = tmp_path / "experiments"
    r = make("-n", "sweep", "NAME=sft_kto", f"GRID={grid}", f"SET={sets}", f"EXPERIMENTS={root}")
    assert r.returncode != 0 and expect in r.stderr, r.stdout + r.stderr
    assert not root.exists()


def test_sweep_sets_puts_the_users_set_first_in_every_point():
    assert names.sweep_sets(["kto.max_steps=3"], ["kto.beta=0.1,0.2", "seed=1,2"]) == [
        ["kto.max_steps=3", "kto.beta=0.1", "seed=1"],
        ["kto.max_steps=3", "kto.beta=0.1", "seed=2"],
        ["kto.max_steps=3", "kto.beta=0.2", "seed=1"],
        ["kto.max_steps=3", "kto.beta=0.2", "seed=2"],
    ]
    with pytest.raises(ValueError, match="seed: set by both SET and GRID"):
        names.sweep_sets(["seed=3"], ["seed=1,2"])


@pytest.mark.parametrize(
    "sets, grid, expect",
    [
        ([], ["kto.beta=0.1,0.2", "kto.beta=0.3"], "GRID kto.beta: given twice (0.1,0.2 and 0.3); keep one"),
        (["kto.beta=0.1", "kto.beta=0.2"], ["seed=1,2"], "SET kto.beta: given twice (0.1 and 0.2); keep one"),
        (["kto.beta=0.3"], ["kto.beta=0.1,0.2"], "kto.beta: set by both SET and GRID (0.3 and 0.1,0.2)"),
        # a key and one inside it, in one of them or across both: which would win?
        ([], ["kto=[1],[2]", "kto.beta=0.1,0.2"], "GRID kto and kto.beta overlap (kto=[1],[2] and kto.beta=0.1,0.2)"),
        (["eval.leaderboard.tasks.bbh=null"], ["eval.leaderboard.tasks.bbh.limit=5,10"], "SET and GRID "),
    ],
)
def test_a_key_given_twice_in_set_or_grid_is_refused_naming_both_values(sets, grid, expect):
    with pytest.raises(ValueError) as e:
        names.sweep_sets(sets, grid)
    assert str(e.value).startswith(expect), str(e.value)


def test_keys_overlap_by_whole_parts_only():
    names.check_keys(("SET", ["kto.beta=0.1", "kto.beta_x=2", "sft.beta=1"]), ("GRID", ["kto.betas=1,2"]))
