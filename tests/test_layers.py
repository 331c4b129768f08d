"""The package's layering, read from its own imports (module level and inside functions).

Each subpackage's docstring ends with a line `May import: <packages>` (or `May import: nothing`):
the only place that says which subpackage may import which. This test fails, naming file:line,
on an import that line does not allow, on an import circle between modules, on a package whose
allowed imports are not a strict order (two packages allowed to import each other, directly or
through others), and on a package `__init__` that holds more than its docstring (safealign/plan/
codedeps.py relies on that: no stage's result depends on an `__init__`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import REPO

PKG = REPO / "safealign"
TOP = {"__main__", "cli"}  # the command line: above every subpackage
_MAY = re.compile(r"^May import: (.+?)\.?\s*$", re.M)


def module_name(f: Path, root: Path = PKG) -> str:
    parts = list(f.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PKG) -> dict[str, Path]:
    return {module_name(f, root): f for f in sorted(root.rglob("*.py"))}


def imports(mods: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of a package module, wherever it stands."""
    out = []
    for m, f in mods.items():
        for n in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "safealign":
                base = n.module.partition(".")[2]
                subs = [f"{base}.{a.name}" if base else a.name for a in n.names]
                targets = [s for s in subs if s in mods] or ([base] if base in mods else [])
            elif isinstance(n, ast.Import):
                targets = [a.name.partition(".")[2] for a in n.names if a.name.startswith("safealign.")]
            out += [(m, t, n.lineno) for t in targets if t]
    return out


def allowed(mods: dict[str, Path], repo: Path) -> dict[str, set[str]]:
    """Subpackage -> the subpackages its docstring's `May import:` line names."""
    out = {}
    for m, f in mods.items():
        if f.name == "__init__.py" and m:
            doc = ast.get_docstring(ast.parse(f.read_text(encoding="utf-8"))) or ""
            found = _MAY.search(doc)
            assert found, f"{f.relative_to(repo)}: the docstring has no 'May import: ...' line"
            names = {x.strip() for x in found.group(1).split(",")} - {"nothing"}
            out[m] = names
    return out


def layering_problems(root: Path = PKG) -> list[str]:
    mods, repo = modules(root), root.parent
    may = allowed(mods, repo)
    problems = []
    for pkg, names in may.items():
        unknown = names - set(may)
        if unknown:
            problems.append(f"safealign/{pkg}/__init__.py: 'May import' names no such subpackage: {sorted(unknown)}")
    # the allowed imports must be a strict order: nothing may reach itself through them
    for start in may:
        seen, todo = set(), list(may[start])
        while todo:
            p = todo.pop()
            if p == start:
                problems.append(f"safealign/{start}/__init__.py: may import itself through {sorted(seen)}")
                break
            if p not in seen and p in may:
                seen.add(p)
                todo += may[p]
    edges: dict[str, set[str]] = {}
    for src, dst, line in imports(mods):
        edges.setdefault(src, set()).add(dst)
        a, b = src.split(".")[0], dst.split(".")[0]
        where = f"{mods[src].relative_to(repo)}:{line}"
        if src in TOP or a == b:
            continue
        if a not in may:
            problems.append(f"{where}: module {src} lives outside the subpackages (only {sorted(TOP)} may)")
        elif b not in may:
            problems.append(f"{where}: {src} imports {dst}, which is no subpackage's (the command line's)")
        elif b not in may[a]:
            problems.append(
                f"{where}: {src} imports {dst}, but safealign/{a}/ may import only {sorted(may[a]) or 'nothing'}"
            )
    # circles between modules (a subpackage's own modules included)
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                circle = path[path.index(d) :] + [d] if d in path else [m, d]
                problems.append("import circle: " + " -> ".join(circle))
            elif d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    for m, f in mods.items():
        if f.name == "__init__.py" and m:
            body = ast.parse(f.read_text(encoding="utf-8")).body
            if len(body) != 1 or not isinstance(body[0], ast.Expr):
                problems.append(f"{f.relative_to(repo)}: holds more than its docstring")
    return problems


def test_the_package_is_layered_as_its_docstrings_say():
    assert layering_problems() == []


def test_every_module_lives_in_a_subpackage():
    loose = {m for m, f in modules().items() if "." not in m and m and m not in TOP and f.name != "__init__.py"}
    assert loose == set(), loose


def test_the_check_finds_an_upward_import_a_circle_and_a_loose_module(tmp_path):
    """The checker itself can fail: a copy of the package with three faults planted."""
    import shutil

    root = tmp_path / "safealign"
    shutil.copytree(PKG, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "core" / "names.py").write_text(
        (root / "core" / "names.py").read_text() + "\n\ndef _up():\n    from safealign.run import stages\n"
    )
    (root / "eval" / "refusal.py").write_text(
        (root / "eval" / "refusal.py").read_text() + "\nfrom safealign.eval import safety  # noqa\n"
    )
    (root / "loose.py").write_text("from safealign.core import fsutil\n")
    found = "\n".join(layering_problems(root))
    assert re.search(
        r"safealign/core/names\.py:\d+: core\.names imports run\.stages, but safealign/core/ may import only nothing",
        found,
    )
    assert "import circle:" in found and "eval.refusal" in found and "eval.safety" in found
    assert "module loose lives outside the subpackages" in found
