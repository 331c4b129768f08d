"""Which package files a stage kind's result depends on, read from the code itself.

Make reruns a stage when one of these files changes (stages.mk: CODE_<stage>). For a kind:
its runner in safealign/run/stages.py (the function, the helpers it calls and the modules those
name, also inside the functions), the safealign modules its templates name (the rendered
scripts import them), and every module those import in turn. Modules are named by their
dotted path under the package (`train.losses`). Modules that decide where and how a result is
stored but not what it holds (NOT_RESULTS: the recipe schema in config/, the plan) are left out:
a change to them reruns nothing, and a change to what they decide (the recipe, a kind's
settings, a stage's identity) changes the stage's folder instead. Package `__init__` files hold
only their docstring (tests/test_layers.py), so no result depends on them.
"""

from __future__ import annotations

import ast
import functools
import re

from safealign import REPO

PKG = REPO / "safealign"
RUNNERS_MODULE = "run.stages"
# stage kind -> its runner function in safealign/run/stages.py (every training kind: run_training)
RUNNERS = {
    "gen": "run_gen",
    "data": "run_data",
    "judge": "run_judge",
    "leaderboard": "run_leaderboard",
    "safety": "run_safety",
    "safety_set": "run_safety_set",  # a public benchmark's safety stage (eval.safety.sets)
    "summary": "run_summary",
}
# config/ is the recipe's schema and the kinds table: a kind's settings are part of its stages'
# identities, and adding a kind must not rerun the stages of the others.
NOT_RESULT_PACKAGES = ("config",)
NOT_RESULTS = {"__main__", "cli", "plan.experiment", "plan.provenance", "plan.codedeps", "core.fsutil", "core.names"}
NOT_RESULTS |= {"core.console", "core.timing", "run.queue"}  # what the terminal shows, timings, the queue's order
_TEMPLATE_REF = re.compile(r"\bfrom safealign\.([\w.]+) import ([\w, ]+)|\bsafealign\.([\w.]+)")


def file_of(module: str):
    """The file of a dotted module name under the package, or None when it is not a module file."""
    f = PKG / (module.replace(".", "/") + ".py")
    return f if f.is_file() else None


def _resolve(base: str, names: list[str]) -> set[str]:
    """`from safealign.<base> import <names>`: the modules among the names, and `base` when it is one."""
    found = {m for m in (f"{base}.{n}" if base else n for n in names) if file_of(m)}
    return found | ({base} if base and file_of(base) else set())


def imported(node: ast.AST) -> set[str]:
    """safealign modules imported anywhere under `node` (module level or inside functions)."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "safealign":
            out |= _resolve(n.module.partition(".")[2], [a.name for a in n.names])
        elif isinstance(n, ast.Import):
            out |= {a.name.partition(".")[2] for a in n.names if a.name.startswith("safealign.")}
    return {m for m in out if file_of(m)}


def _not_result(module: str) -> bool:
    return module in NOT_RESULTS or module.split(".")[0] in NOT_RESULT_PACKAGES


@functools.cache
def tree(module: str) -> ast.Module:
    return ast.parse(file_of(module).read_text(encoding="utf-8"))


@functools.cache
def closure(module: str) -> frozenset[str]:
    """`module` and every safealign module it imports, transitively (not through NOT_RESULTS)."""
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or _not_result(m) or not file_of(m):
            continue
        seen.add(m)
        todo += sorted(imported(tree(m)))
    return frozenset(seen)


def _runner_modules(function: str) -> set[str]:
    """Modules a function of run/stages.py uses: the names it reads that are module-level imports,
    its own imports, and the same for the run/stages.py helpers it calls."""
    t = tree(RUNNERS_MODULE)
    funcs = {n.name: n for n in t.body if isinstance(n, ast.FunctionDef)}
    aliases = {}  # name bound at module level -> safealign module
    for n in t.body:
        if isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "safealign":
            base = n.module.partition(".")[2]
            for a in n.names:
                sub = f"{base}.{a.name}" if base else a.name
                mod = sub if file_of(sub) else base
                if file_of(mod):
                    aliases[a.asname or a.name] = mod
    out, seen, todo = set(), set(), [function]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        out |= imported(funcs[f])
        for n in ast.walk(funcs[f]):
            if isinstance(n, ast.Name):
                if n.id in funcs:
                    todo.append(n.id)
                elif n.id in aliases:
                    out.add(aliases[n.id])
    return out


def templates(kind: str) -> list[str]:
    """The templates (repository-relative) that render a stage of `kind`: the kinds table's."""
    from safealign.config import kinds

    return [f"templates/{t}" for t in kinds.KINDS[kind].templates()] if kind in kinds.KINDS else []


def _dotted(ref: str) -> set[str]:
    """The module a dotted reference names: `a.b.C` -> `a.b` (the longest prefix that is a module)."""
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        if file_of(".".join(parts[:i])):
            return {".".join(parts[:i])}
    return set()


def _template_modules(kind: str) -> set[str]:
    from safealign.config import kinds

    out = set()
    for t in templates(kind):
        for base, names, dotted in _TEMPLATE_REF.findall((REPO / t).read_text(encoding="utf-8")):
            out |= _resolve(base, [x.strip() for x in names.split(",")]) if base else _dotted(dotted)
    k = kinds.KINDS.get(kind)
    for ref in (k.trainer, k.trl_config, k.variant, k.rewards) if k else ():  # what the kind's script imports
        if ref.startswith("safealign."):
            out |= _dotted(ref.split(":")[0].partition(".")[2])
    return out


def files(kind: str) -> list[str]:
    """The package files (repository-relative) that a result of stage `kind` depends on."""
    from safealign.config import kinds

    mods = {RUNNERS_MODULE}  # its own file, but its imports only as far as this kind's runner uses them
    runner = kinds.KINDS[kind].runner if kind in kinds.KINDS else RUNNERS[kind]
    for m in _runner_modules(runner) | _template_modules(kind):
        mods |= closure(m)
    return sorted(str(file_of(m).relative_to(REPO)) for m in mods if not _not_result(m))
