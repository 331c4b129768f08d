#!/usr/bin/env python3
"""Benchmark stage reuse; prints figures.

    make bench-reuse                  # or: .venv/bin/python tools/bench_reuse.py

1. `make exp NAME=sft_dpo` from an empty experiments folder (trains SFT and DPO);
2. in a second empty folder, `make exp NAME=sft_kto` then `make exp NAME=sft_dpo`, which
   reuses sft_kto's data and SFT stages and trains DPO only;
3. in that second folder, a 4-point sweep over KTO's beta, counting the SFT trainings it ran.
Prints the wall times, their ratio and the SFT count (goal: 1, or 0 when SFT was already there).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make(root: Path, *args: str) -> tuple[float, str]:
    t0 = time.time()
    r = subprocess.run(
        ["make", "--no-print-directory", *args, f"EXPERIMENTS={root}", "MODEL="],  # tiny-local
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "SAFEALIGN_QUIET": "1"},
    )
    if r.returncode != 0:
        sys.exit(f"make {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return time.time() - t0, r.stdout


def trainings(out: str, stage: str) -> int:
    return len(re.findall(rf"^\[[^\]]+\] {stage}: done in", out, re.M))


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="safealign-bench-reuse-") as tmp:
        cold, _ = make(Path(tmp) / "a", "exp", "NAME=sft_dpo")
        warm_root = Path(tmp) / "b"
        first, _ = make(warm_root, "exp", "NAME=sft_kto")
        warm, out = make(warm_root, "exp", "NAME=sft_dpo")
        assert trainings(out, "sft") == 0, "sft_dpo trained SFT again"
        sweep, out_sweep = make(warm_root, "sweep", "NAME=sft_kto", "GRID=kto.beta=0.05,0.1,0.2,0.4")
        fresh_root = Path(tmp) / "c"
        sweep_fresh, out_fresh = make(fresh_root, "sweep", "NAME=sft_kto", "GRID=kto.beta=0.05,0.1,0.2,0.4")
    print(f"make exp NAME=sft_dpo on {os.cpu_count()} CPUs:")
    print(f"  from an empty experiments folder   {cold:7.1f} s")
    print(f"  right after make exp NAME=sft_kto  {warm:7.1f} s   (sft_kto itself took {first:.1f} s)")
    print(f"  ratio warm / cold                  {warm / cold:7.2f}")
    print("4-point sweep over kto.beta (0.05, 0.1, 0.2, 0.4):")
    print(
        f"  after sft_kto: {sweep:7.1f} s, SFT trainings {trainings(out_sweep, 'sft')}, "
        f"KTO trainings {trainings(out_sweep, 'kto')} (beta 0.1 is sft_kto's own KTO, reused)"
    )
    print(
        f"  from empty:    {sweep_fresh:7.1f} s, SFT trainings {trainings(out_fresh, 'sft')}, "
        f"KTO trainings {trainings(out_fresh, 'kto')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
