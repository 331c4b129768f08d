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


def merge_sets(*layers: tuple[str, list[str]]) -> list[str]:
    """SET layers, (where, items) each, as one SET merged by key, so that make's SET (which refuses
    a key given twice) gets each key once: a later layer's item replaces an earlier one of the same
    key and every earlier one inside it (`kto={beta: 0.1}` replaces `kto.beta=0.2`). A later key
    inside an earlier layer's whole mapping (`kto.beta=0.2` after `kto={beta: 0.1, ...}`) is a
    ValueError: give the mapping's keys one by one. The regression suite's layers and `make
    study`'s (the profile's study_set, then SET) merge by this rule."""
    out: list[tuple[str, str]] = []  # (where, item)
    for where, items in layers:
        for item in items:
            path = tuple(item.partition("=")[0].strip().split("."))
            kept = []
            for w, old in out:
                op = tuple(old.partition("=")[0].strip().split("."))
                if op[: len(path)] == path:
                    continue  # the same key, or one inside it: the later layer wins
                if path[: len(op)] == op:
                    raise ValueError(
                        f"{where}: {item} falls inside {old} ({w}), a value given whole; "
                        f"set {op[-1]}'s keys one by one there, so that this one can replace one of them"
                    )
                kept.append((w, old))
            out = [*kept, (where, item)]
    return [item for _, item in out]


def inside(root: Path, path: Path, what: str) -> Path:
    """`path`, refused unless it resolves to a place under `root` (links followed)."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p != r and r not in p.parents:
        raise InvalidName(f"{what} {path}: resolves to {p}, outside {r}")
    return Path(path)


def check_keys(*groups: tuple[str, list[str]]) -> None:
    """Refuse a recipe key given twice in SET (`kto.beta=0.1 kto.beta=0.2`), twice in GRID, or
    in both, naming the key and both values; also a key and one inside it (`kto={beta: 0.1}` and
    `kto.beta=0.2`): which would win? `groups`: (origin, key=value items), e.g. ("SET", sets),
    ("GRID", grid). The one rule for `safealign resolve` (recipe.parse_overrides), `make sweep`
    and `make pipeline-sweep` (sweep_sets); the regression suite merges its layers by key first
    (merge_sets). Items that are not key=value are left to the caller's own check."""
    seen: list[tuple[str, tuple[str, ...], str, str]] = []  # (origin, key path, key, value)
    for origin, items in groups:
        for item in items:
            key, eq, value = item.partition("=")
            if not eq or not key:
                continue
            path = tuple(key.split("."))
            for o, p, k, v in seen:
                n = min(len(p), len(path))
                if p[:n] != path[:n]:
                    continue
                if p == path and o == origin:
                    raise ValueError(f"{origin} {key}: given twice ({v} and {value}); keep one")
                if p == path:
                    raise ValueError(f"{key}: set by both {o} and {origin} ({v} and {value}); keep it in one")
                where = origin if o == origin else f"{o} and {origin}"
                raise ValueError(
                    f"{where} {k} and {key} overlap ({k}={v} and {key}={value}): "
                    f"one is inside the other, which would win? give each key once"
                )
            seen.append((origin, path, key, value))


def grid_points(items: list[str]) -> list[list[str]]:
    """A sweep grid, `key=v1,v2 ...`, as one list of SET items per point (every combination)."""
    axes = []
    for arg in items:
        key, eq, values = arg.partition("=")
        if not eq or not key or not values:
            raise ValueError(f"GRID {arg!r}: expected key=v1,v2,... e.g. kto.beta=0.05,0.1,0.2")
        axes.append([f"{key}={v}" for v in values.split(",")])
    if not axes:
        raise ValueError("GRID is empty; e.g. GRID='kto.beta=0.05,0.1,0.2,0.4'")
    check_keys(("GRID", items))
    return [list(point) for point in itertools.product(*axes)]


def sweep_sets(sets: list[str], grid: list[str]) -> list[list[str]]:
    """Each point's SET items: the user's SET, then the point's grid values (`make sweep` and
    `make pipeline-sweep` both). A key given twice, in SET, in GRID or in both, is refused
    (check_keys): which would win?"""
    points = grid_points(grid)
    check_keys(("SET", sets), ("GRID", grid))
    return [[*sets, *point] for point in points]
