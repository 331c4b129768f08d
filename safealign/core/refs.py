"""What a recipe names as a model or a dataset: a local path or a hub id, decided in one place.

Used for `base_model`, `eval.safety.judge: classifier:<...>` and `data.source`: a reference is a
local path when it starts with '.', '/' or '~', or when it names something that exists
(relative to `root` when given, else to the working directory, which Make sets to the
repository); anything else is a hub id.
"""

from __future__ import annotations

from pathlib import Path


def path(ref: str, root: Path | None = None) -> Path:
    """`ref` as a local path: `~` expanded, relative paths under `root` when given."""
    p = Path(ref).expanduser()
    return p if p.is_absolute() or root is None else Path(root) / p


def is_path(ref: str, root: Path | None = None) -> bool:
    return ref.startswith((".", "/", "~")) or path(ref, root).exists()
