import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Nothing in the suite may reach a network: everything runs on the shipped data and tiny-local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["AXOLOTL_DO_NOT_TRACK"] = "1"
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SAFEALIGN_CACHE", str(REPO / ".cache"))
# every `make` a test starts runs the recipes on their own base_model, tiny-local: the Makefile's
# default MODEL is the real smollm2-135m (the README's main job), which tests/test_smollm2.py covers
os.environ["MODEL"] = ""


@pytest.fixture
def repo() -> Path:
    return REPO


# One short sft_kto (base and final model evaluated, the leaderboard on its fixtures), made twice at
# once on an empty store: tests/test_recipes_e2e.py checks the two runs against each other,
# tests/test_pipeline_e2e.py takes the first as `make exp`'s reference for the compiled pipeline.
TWO_RUNS_SETS = ["sft.max_steps=20", "kto.max_steps=16", "eval.models=final"]


@pytest.fixture(scope="session")
def two_concurrent_runs(tmp_path_factory):
    """(store, [(experiment folder, returncode, stdout, stderr)] x 2): `make exp` twice, started
    together; the first under the recipe's default name for these SETs, the second as `b`."""
    from safealign.core import names

    root = tmp_path_factory.mktemp("two-runs") / "experiments"
    procs = [
        subprocess.Popen(
            [
                "make",
                "--no-print-directory",
                "exp",
                "NAME=sft_kto",
                "SET=" + " ".join(TWO_RUNS_SETS),
                *extra,
                f"EXPERIMENTS={root}",
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SAFEALIGN_QUIET": "1"},
        )
        for extra in ([], ["EXP_NAME=b"])
    ]
    outs = [p.communicate(timeout=1800) for p in procs]
    folders = [root / names.exp_name("sft_kto", TWO_RUNS_SETS), root / "b"]
    return root, [(f, p.returncode, out, err) for f, p, (out, err) in zip(folders, procs, outs)]
