"""Names that come from the command line, and the one rule for each.

The Makefile refuses shell and make metacharacters in every command-line value before it
expands one (its `_check`); these rules are the Python side's, for the CLI and the tools,
and they also keep every path the project writes inside the experiments folder.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

# an experiment or comparison folder, a recipe name: no path separator, no leading dot
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}\Z")
# folders of the experiments root that are not experiments
RESERVED = (".stages", "compare", "regress")


class InvalidName(ValueError):
    pass


def check_name(value: str, what: str) -> str:
    """`value` if it is a safe folder name, else a InvalidName saying what is allowed."""
    if not isinstance(value, str) or not NAME.match(value):
        raise InvalidName(
            f"{what} {value!r}: expected 1-128 letters, digits, '_', '.', '+' or '-', starting with a "
            "letter or digit (no '/', no spaces)"
        )
    if value in RESERVED:
        raise InvalidName(f"{what} {value!r}: reserved for safealign's own folders ({', '.join(RESERVED)})")
    return value


def exp_name(recipe: str, overrides: list[str]) -> str:
    """sft_kto + [kto.beta=0.2] -> sft_kto+kto.beta-0.2; over 128 characters, a hash of the rest."""
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", s.replace("=", "-")).strip("_") for s in overrides]
    name = "+".join([recipe, *parts])
    if len(name) > 128:
        name = f"{name[:111]}+{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return check_name(name, "experiment name")


def inside(root: Path, path: Path, what: str) -> Path:
    """`path`, refused unless it resolves to a place under `root` (links followed)."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p != r and r not in p.parents:
        raise InvalidName(f"{what} {path}: resolves to {p}, outside {r}")
    return Path(path)


def grid_points(items: list[str]) -> list[list[str]]:
    """A sweep grid, `key=v1,v2 ...`, as one list of SET items per point (every combination)."""
    axes = []
    for arg in items:
        key, eq, values = arg.partition("=")
        if not eq or not key or not values:
            raise ValueError(f"{arg!r}: expected key=v1,v2,... e.g. kto.beta=0.05,0.1,0.2")
        axes.append([f"{key}={v}" for v in values.split(",")])
    if not axes:
        raise ValueError("GRID is empty; e.g. GRID='kto.beta=0.05,0.1,0.2,0.4'")
    return [list(point) for point in itertools.product(*axes)]


def sweep_sets(sets: list[str], grid: list[str]) -> list[list[str]]:
    """Each point's SET items: the user's SET, then the point's grid values (`make sweep` and
    `make pipeline-sweep` both). A key in both SET and GRID is refused: which would win?"""
    points = grid_points(grid)
    swept = {g.partition("=")[0] for g in grid}
    both = sorted(swept & {s.partition("=")[0] for s in sets})
    if both:
        raise ValueError(f"{', '.join(both)}: set by both SET and GRID; keep it in one")
    return [[*sets, *point] for point in points]
