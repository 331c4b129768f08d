import os
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


@pytest.fixture
def repo() -> Path:
    return REPO
