#!/usr/bin/env python3
"""Benchmark `make exp NAME=<recipe>` from an empty experiments folder; prints figures.

    make bench                      # the README's main job: sft_kto on the default model, smollm2-135m
    make bench MODEL=               # tiny-local (the recipes' own base_model)
    .venv/bin/python tools/bench_exp.py --name sft_kto --model smollm2-135m

Prints per stage its wall time (the stage's own "done in" line) split into start-up (the
imports the stage's process paid for, and a training child's start-up: launch to its first
step; the stages' logs, `timing:` lines) and the rest (compute); then the wrapper's share (make,
resolve, the report, each Python's own start: the total less the stages) and the time of an
immediate rerun, which should do nothing. Goals on 2 CPU cores for sft_kto, after set-up and
the model's build: tiny-local <= 90 s in all (issue #25), smollm2-135m <= 12 minutes (issue #27);
rerun <= 2 s.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(name: str, root: Path, model: str) -> tuple[float, str]:
    t0 = time.time()
    r = subprocess.run(
        ["make", "--no-print-directory", "exp", f"NAME={name}", f"EXPERIMENTS={root}", f"MODEL={model}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    if r.returncode != 0:
        sys.exit(f"make exp NAME={name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.time() - t0, r.stdout


def timings(exp: Path, stage: str) -> tuple[float, float]:
    """(imports, child start-up) from the stage's log, 0 where it has none."""
    log = exp / "logs" / f"{stage}.log"
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    imports = re.search(rf"^timing: {re.escape(stage)} imports ([\d.]+) s", text, re.M)
    child = re.search(r"^timing: child start-up ([\d.]+) s", text, re.M)
    return (float(imports[1]) if imports else 0.0), (float(child[1]) if child else 0.0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="sft_kto")
    ap.add_argument(
        "--model", default="smollm2-135m", help="a model profile; empty: the recipe's base_model (tiny-local)"
    )
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from safealign.core import names

    exp = names.exp_name(a.name, [f"model={a.model}"] if a.model else [])
    goal = 720 if a.model else 90
    with tempfile.TemporaryDirectory(prefix="safealign-bench-") as tmp:
        total, out = run(a.name, Path(tmp), a.model)
        stages = re.findall(r"^\[[^\]]+\] ([\w-]+): done in ([\d.]+)s", out, re.M)
        rows = [(s, float(secs), *timings(Path(tmp) / exp, s)) for s, secs in stages]
        again, _ = run(a.name, Path(tmp), a.model)
    print(
        f"make exp NAME={a.name} MODEL={a.model} on {os.cpu_count()} CPUs, from an empty experiments folder (seconds):"
    )
    print(f"  {'stage':<18} {'wall':>7} {'imports':>8} {'child start':>12} {'compute':>8}")
    for stage, wall, imports, child in rows:
        print(f"  {stage:<18} {wall:7.1f} {imports:8.1f} {child:12.1f} {wall - imports - child:8.1f}")
    walls = sum(r[1] for r in rows)
    print(
        f"  {'stages':<18} {walls:7.1f} {sum(r[2] for r in rows):8.1f} {sum(r[3] for r in rows):12.1f} "
        f"{sum(r[1] - r[2] - r[3] for r in rows):8.1f}"
    )
    print(f"  {'wrapper':<18} {total - walls:7.1f}   (make, resolve, the report, each process's own start)")
    print(f"  {'total':<18} {total:7.1f}   (goal <= {goal} s)")
    print(f"  {'rerun':<18} {again:7.1f}   (nothing to do; goal <= 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
