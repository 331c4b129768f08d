"""Where the libraries under a stage keep their caches: the project's cache, not the user's home or /tmp.

Left alone, matplotlib writes its font list to ~/.cache/matplotlib and ~/.config/matplotlib,
torch's compiler $TMPDIR/torchinductor_<user>, Triton ~/.triton, and wandb (tracker: wandb)
its artifact and staging folders to ~/.cache/wandb and ~/.local/share/wandb. Each has a
variable; `contain` points the unset ones into $SAFEALIGN_CACHE as a command starts (cli.main),
and every process a stage starts inherits them. A variable the user set is kept. (datasets'
Arrow copies go to the training stage's own folder: train/launcher.child_env.)
"""

from __future__ import annotations

import os
from pathlib import Path

VARS = {  # variable -> folder under the project cache
    "MPLCONFIGDIR": "matplotlib",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
    "WANDB_CACHE_DIR": "wandb/cache",
    "WANDB_DATA_DIR": "wandb/data",
}


def root() -> Path:
    """The project cache: $SAFEALIGN_CACHE (the Makefile's .cache/), else .cache in the current folder."""
    return Path(os.environ.get("SAFEALIGN_CACHE", ".cache")).resolve()


def contain(environ=os.environ) -> dict:
    """Set each unset cache variable to its folder under the project cache; return what was set."""
    base = root()
    set_ = {k: str(base / sub) for k, sub in VARS.items() if not environ.get(k)}
    environ.update(set_)
    return set_
