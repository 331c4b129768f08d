"""Time `make study` from an empty stage store and print where the time goes (issue #27's budget:
<= 60 minutes on 2 CPU cores for smollm2-135m). Prints the wall time, then the seconds per stage
kind (summed over the grid's experiments, each stage counted once: the store shares SFT and the
base model's evaluation) and what the wrapper (resolving, Make, the study page) took beside them.

    make bench-study [MODEL=smollm2-135m] [METHODS=grid] [SET=...]   # a fresh store under experiments/bench-study/
    python tools/bench_study.py --log study.log     # the same figures from a `make study` log already written
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DONE = re.compile(r"^\[(?P<exp>[^\]]+)\] (?P<stage>[\w-]+): done in (?P<s>[0-9.]+)s")


def online_kinds() -> set[str]:
    """The stage kinds that sample from the model as they train (safealign/config/kinds.py)."""
    sys.path.insert(0, str(REPO))
    from safealign.config import kinds

    return {k.name for k in kinds.KINDS.values() if k.online or k.rewards}


def stage_seconds(log: str, online_only: bool = False) -> dict[str, list[float]]:
    """Stage kind -> the seconds of each stage that ran (a stage the store already held prints no
    'done in' line, so shared stages count once); `online_only`: the online kinds' stages and their
    safety stages only."""
    out = defaultdict(list)
    online = online_kinds() if online_only else set()
    for line in log.splitlines():
        m = DONE.match(line.strip())
        if m and (
            not online_only or online & set(m["stage"].split("-"))
        ):  # kto_iter, safety-kto_iter, safety-xstest-grpo
            kind = m["stage"].split("-")[0]  # safety-kto -> safety
            out[kind].append(float(m["s"]))
    return dict(out)


def report(log: str, wall: float | None) -> str:
    got = stage_seconds(log)
    total = sum(sum(v) for v in got.values())
    lines = []
    if wall is not None:
        lines.append(f"make study: {wall:.0f} s wall ({wall / 60:.1f} min)")
    lines.append(f"stages: {total:.0f} s in {sum(len(v) for v in got.values())} stages")
    for kind, secs in sorted(got.items(), key=lambda kv: -sum(kv[1])):
        each = ", ".join(f"{s:.0f}" for s in secs)
        lines.append(f"  {kind:8s} {sum(secs):7.0f} s  ({len(secs)} x: {each})")
    if wall is not None:
        lines.append(f"  {'wrapper':8s} {wall - total:7.0f} s  (resolve, Make, summaries, the study page)")
    online = sum(sum(v) for k, v in stage_seconds(log, online_only=True).items())
    if online:  # issue #27's budget was set for the seed's grid; issue #29's online methods came after
        lines.append(
            f"online methods' stages (training and their safety stages): {online:.0f} s; "
            f"the seed's grid: {total - online:.0f} s of stages"
            + (f", {(wall - online) / 60:.1f} min of the wall" if wall is not None else "")
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--experiments", default=str(REPO / "experiments" / "bench-study" / time.strftime("%Y%m%d-%H%M%S")))
    ap.add_argument("--methods", default="", help="make study's METHODS (e.g. grid: the seed's ten); all by default")
    ap.add_argument("--set", default="", help="make study's SET")
    ap.add_argument("--log", help="read this `make study` log instead of running it (no wall time)")
    a = ap.parse_args()
    if a.log:
        print(report(Path(a.log).read_text(errors="replace"), None))
        return 0
    out = Path(a.experiments)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"bench-study: make study MODEL={a.model} METHODS={a.methods or 'all'} SET={a.set or '-'} into an empty store at {out} (log: {out / 'study.log'})",
        flush=True,
    )
    t0 = time.time()
    with open(out / "study.log", "w") as f:
        rc = subprocess.run(
            ["make", "--no-print-directory", "study", f"MODEL={a.model}", f"METHODS={a.methods}", f"SET={a.set}"]
            + [f"EXPERIMENTS={out}"],
            cwd=REPO,
            stdout=f,
            stderr=subprocess.STDOUT,
            env={**os.environ, "SAFEALIGN_QUIET": "1"},
        ).returncode
    wall = time.time() - t0
    print(report((out / "study.log").read_text(errors="replace"), wall))
    if rc:
        print(f"bench-study: make study failed ({rc}); see {out / 'study.log'}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
