"""Which package files a stage kind's result depends on, read from the code itself.

Make reruns a stage when one of these files changes (stages.mk: CODE_<stage>). For a kind:
its runner in safealign/stages.py (the function, the helpers it calls and the modules those
name, also inside the functions), the safealign modules its templates name (the rendered
scripts import them), and every module those import in turn. Modules that decide where and
how a result is stored but not what it holds (NOT_RESULTS) are left out: a change to them
reruns nothing, and a change to what they decide (the recipe, a kind's settings, a stage's
identity) changes the stage's folder instead.
"""

from __future__ import annotations

import ast
import functools
import re

from safealign import REPO

PKG = REPO / "safealign"
# stage kind -> its runner function in safealign/stages.py (every training kind: run_training)
RUNNERS = {
    "gen": "run_gen",
    "data": "run_data",
    "judge": "run_judge",
    "leaderboard": "run_leaderboard",
    "safety": "run_safety",
    "summary": "run_summary",
}
# kinds.py is the table of what each kind is: a kind's settings are part of its stages' identities,
# and adding a kind must not rerun the stages of the others.
NOT_RESULTS = {"__init__", "__main__", "cli", "plan", "recipe", "kinds", "fsutil", "provenance", "names", "codedeps"}
_TEMPLATE_REF = re.compile(r"\bsafealign\.(\w+)|\bfrom safealign import ([\w, ]+)")


def _safealign_modules(node: ast.AST) -> set[str]:
    """safealign modules imported anywhere under `node` (module level or inside functions)."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "safealign":
            if n.module == "safealign":
                out |= {a.name for a in n.names if (PKG / f"{a.name}.py").exists()}
            else:
                out.add(n.module.split(".")[1])
        elif isinstance(n, ast.Import):
            out |= {a.name.split(".")[1] for a in n.names if a.name.startswith("safealign.")}
    return out


@functools.cache
def _tree(module: str) -> ast.Module:
    return ast.parse((PKG / f"{module}.py").read_text(encoding="utf-8"))


@functools.cache
def closure(module: str) -> frozenset[str]:
    """`module` and every safealign module it imports, transitively (not through NOT_RESULTS)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or m in NOT_RESULTS or not (PKG / f"{m}.py").exists():
            continue
        seen.add(m)
        todo += sorted(_safealign_modules(_tree(m)))
    return frozenset(seen)


def _runner_modules(function: str) -> set[str]:
    """Modules a function of stages.py uses: the names it reads that are module-level imports,
    its own imports, and the same for the stages.py helpers it calls."""
    tree = _tree("stages")
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    aliases = {}  # name bound at module level -> safealign module
    for n in tree.body:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("safealign"):
            for a in n.names:
                mod = a.name if n.module == "safealign" else n.module.split(".")[1]
                if (PKG / f"{mod}.py").exists():
                    aliases[a.asname or a.name] = mod
    out, seen, todo = set(), set(), [function]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        out |= _safealign_modules(funcs[f])
        for n in ast.walk(funcs[f]):
            if isinstance(n, ast.Name):
                if n.id in funcs:
                    todo.append(n.id)
                elif n.id in aliases:
                    out.add(aliases[n.id])
    return out


def templates(kind: str) -> list[str]:
    """The templates (repository-relative) that render a stage of `kind`: the kinds table's."""
    from safealign import kinds

    return [f"templates/{t}" for t in kinds.KINDS[kind].templates()] if kind in kinds.KINDS else []


def _template_modules(kind: str) -> set[str]:
    out = set()
    for t in templates(kind):
        for a, b in _TEMPLATE_REF.findall((REPO / t).read_text(encoding="utf-8")):
            out |= {a} if a else {x.strip() for x in b.split(",")}
    from safealign import kinds

    k = kinds.KINDS.get(kind)
    for ref in (k.trainer, k.trl_config, k.variant) if k else ():  # classes the kind's script imports
        if ref.startswith("safealign."):
            out.add(ref.split(":")[0].split(".")[1])
    return {m for m in out if (PKG / f"{m}.py").exists()}


def files(kind: str) -> list[str]:
    """The package files (repository-relative) that a result of stage `kind` depends on."""
    from safealign import kinds

    mods = {"stages"}  # its own file, but its imports only as far as this kind's runner uses them
    runner = "run_training" if kind in kinds.KINDS else RUNNERS[kind]
    for m in _runner_modules(runner) | _template_modules(kind):
        mods |= closure(m)
    return sorted(f"safealign/{m}.py" for m in mods - NOT_RESULTS)
