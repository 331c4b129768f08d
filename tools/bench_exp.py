#!/usr/bin/env python3
"""Benchmark `make exp NAME=<recipe>` from an empty experiments folder; prints figures.

    make bench                      # or: .venv/bin/python tools/bench_exp.py --name sft_kto

Prints wall time per stage (from the stages' own "done in" lines) and in total, then the
time of an immediate rerun, which should do nothing. Goal on 2 CPU cores for sft_kto, after
set-up and the tiny-local build: training <= 3 minutes, evaluation of the three models
<= 4 minutes; rerun <= 2 s.
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


def run(name: str, root: Path) -> tuple[float, str]:
    t0 = time.time()
    r = subprocess.run(
        ["make", "--no-print-directory", "exp", f"NAME={name}", f"EXPERIMENTS={root}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    if r.returncode != 0:
        sys.exit(f"make exp NAME={name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.time() - t0, r.stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="sft_kto")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="safealign-bench-") as tmp:
        total, out = run(a.name, Path(tmp))
        stages = re.findall(r"^\[[^\]]+\] ([\w-]+): done in ([\d.]+)s", out, re.M)
        again, _ = run(a.name, Path(tmp))
    print(f"make exp NAME={a.name} on {os.cpu_count()} CPUs, from an empty experiments folder:")
    for stage, secs in stages:
        print(f"  {stage:<18} {float(secs):7.1f} s")
    print(f"  {'total':<18} {total:7.1f} s   (includes make, resolve, the report and process start-up)")
    print(f"  {'rerun':<18} {again:7.1f} s   (nothing to do; goal <= 2 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
