#!/usr/bin/env python3
"""`make mutation`: mutation testing of the pure core with mutmut (docs/testing.md, Mutation testing).

mutmut mutates whole files (setup.cfg's [mutmut] names them and the unit test files
that run); this script runs only the mutants of the pure functions below, in one worker, then
prints per module: mutants, killed, survived, timeout, score %, and each survivor (file:line and
its diff). Exit status 1 when a module scores under the goal.

    tools/mutation.py            fresh run (mutants/ removed first), then the table
    tools/mutation.py --report   the table of the last run only
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# the pure core: module file -> its functions that are mutated (everything else in a file is not)
CORE = {
    "safealign/train/losses.py": [
        "sequence_logps",
        "signed_reference_point",
        "kto_losses",
        "kl_estimate",
        "desirable_nll",
    ],
    "safealign/eval/leaderboard.py": ["normalise_mc", "_metric", "normalise", "table"],
    "safealign/eval/safety.py": [
        "bootstrap_ci",
        "summarise",
        "aggregate",
        "paired_difference",
        "resolvable_difference",
        "gap",
        "guard_counts",
    ],
    "safealign/eval/study.py": ["side", "better", "within", "same", "no_improvement", "volatility", "first_step_below"],
    "safealign/eval/judges.py": ["cohen_kappa", "fold_of", "route"],
    "safealign/run/regress.py": ["compare_one", "compare", "failures", "_tolerance"],
    "safealign/models/truncate.py": [
        "_n",
        "_offsets",
        "cut_left",
        "cut_right",
        "_with",
        "fit",
        "fit_rows",
        "fit_prompt",
    ],
    "safealign/plan/experiment.py": ["_hash", "data_identity", "stage_slices", "eval_slices", "plan"],
    "safealign/models/guards.py": [  # the guards' published formats and how their verdicts are read
        "llama_guard_prompt",
        "parse_llama_guard",
        "shieldgemma_prompt",
        "shieldgemma_verdict",
        "wildguard_prompt",
        "parse_wildguard",
        "_is_1b",
        "categories_for",
        "detect",
        "build",
        "parse",
    ],
    "safealign/models/rubric.py": ["messages", "score", "parse"],  # StrongREJECT's rubric, the LLM judge's
    "safealign/data/benchmarks.py": [  # the public benchmarks' published layouts read into prompts
        "_row",
        "_kept",
        "xstest",
        "orbench",
        "harmbench",
        "jbb",
        "strongreject",
        "toxigen",
        "read_lines",
        "read_csv",
        "load",
        "sample",
    ],
}
# a module passes at this share of its mutants killed
GOAL = 90.0
# mutmut's exit codes of a mutant's test run, as mutmut.stats reads them
KILLED, SURVIVED, TIMEOUT = {1, 3, 37}, {0}, {24, -24, 152, 255, 36}


def module_name(path: str) -> str:
    return path[: -len(".py")].replace("/", ".")


def patterns() -> list[str]:
    return [f"{module_name(p)}.x_{f}__mutmut_*" for p, fs in CORE.items() for f in fs]


def run() -> float:
    shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", "1", *patterns()], cwd=ROOT, check=True)
    return time.monotonic() - start


def results(path: str) -> dict[str, int | None]:
    """mutant name -> exit code, for the listed functions of one module."""
    meta = ROOT / "mutants" / (path + ".meta")
    codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}
    prefix = module_name(path) + ".x_"
    wanted = {f"{prefix}{f}__mutmut_" for f in CORE[path]}
    return {k: v for k, v in codes.items() if k.rsplit("mutmut_", 1)[0] + "mutmut_" in wanted}


def diff(name: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    return get_diff_for_mutant(name, path=find_path(name))


def find_path(name: str) -> str:
    return next(p for p in CORE if name.startswith(module_name(p) + ".x_"))


def line_of(path: str, name: str, text: str) -> int:
    """The source line a mutant changes: the first removed line of its diff, found in the function."""
    func = name[len(module_name(path)) + 3 :].rsplit("__mutmut_", 1)[0]
    src = (ROOT / path).read_text().splitlines()
    node = next(
        n
        for n in ast.walk(ast.parse("\n".join(src)))
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == func
    )
    lines = text.split("\n")
    at = next(i for i, ln in enumerate(lines) if ln.startswith("@@"))
    offset, body = int(re.match(r"@@ -(\d+)", lines[at]).group(1)), lines[at + 1 :]
    for line in body:
        if line.startswith(("-", "+")):
            break
        offset += 1
    removed = next((ln[1:].strip() for ln in body if ln.startswith("-")), None)
    guess = node.lineno + offset - 1
    matches = [i + 1 for i in range(node.lineno - 1, node.end_lineno) if removed and src[i].strip() == removed]
    return min(matches, key=lambda i: abs(i - guess)) if matches else node.lineno


def report(wall: float | None) -> int:
    os.chdir(ROOT)
    rows, survivors = [], []
    for path in CORE:
        codes = results(path)
        killed = sum(c in KILLED for c in codes.values())
        survived = [k for k, c in codes.items() if c in SURVIVED]
        timeout = sum(c in TIMEOUT for c in codes.values())
        score = 100.0 * (killed + timeout) / len(codes) if codes else 0.0
        rows.append((path, len(codes), killed, len(survived), timeout, score))
        survivors += [
            (path, k) for k in sorted(survived, key=lambda k: (k.rsplit("_", 1)[0], int(k.rsplit("_", 1)[1])))
        ]
    header = ("module", "mutants", "killed", "survived", "timeout", "score %")
    width = max(len(r[0]) for r in rows)
    print(f"{header[0]:<{width}}  " + "  ".join(f"{h:>8}" for h in header[1:]))
    for path, n, k, s, t, score in rows:
        print(f"{path:<{width}}  {n:>8}  {k:>8}  {s:>8}  {t:>8}  {score:>8.1f}")
    total = [sum(r[i] for r in rows) for i in range(1, 5)]
    print(
        f"{'total':<{width}}  "
        + "  ".join(f"{v:>8}" for v in total)
        + f"  {100.0 * (total[1] + total[3]) / max(total[0], 1):>8.1f}"
    )
    if wall is not None:
        print(f"wall time: {wall:.0f} s")
    for path, name in survivors:
        text = diff(name)
        print(f"\nsurvived: {path}:{line_of(path, name, text)}  {name}\n{text}")
    others = sum(1 for r in rows for c in results(r[0]).values() if c not in KILLED | SURVIVED | TIMEOUT)
    if others:
        print(f"\n{others} mutant(s) neither killed, survived nor timed out (mutmut results lists them)")
    return 0 if all(r[5] >= GOAL for r in rows) else 1


if __name__ == "__main__":
    sys.exit(report(None if "--report" in sys.argv[1:] else run()))
