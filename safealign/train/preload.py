"""Start a training child before its inputs exist, so that its imports overlap the stage's own work.

    python -m safealign.train.preload --import axolotl.cli.config --import axolotl.train

imports the named modules, then waits for one line on stdin: the JSON list of the command's
program and arguments (`["-m", "axolotl.cli.train", "axolotl.yaml"]` or `["train_kto.py",
"kto.yaml"]`, the rendered command less the interpreter) and runs it as `python <program ...>`
would (runpy: `__main__`, sys.argv, sys.path[0] as they would be). End of input without a line
exits 0 and runs nothing: the stage failed before the command was rendered.

It dies with the stage that started it, however the stage ends (kill -9 included: Linux's
parent-death signal), and holds the stage's lock as long as it lives (the descriptor inherited,
launcher.preloaded), so a rerun never builds in a folder this process still writes to.

On 2 cores the stage's process spends ~5 s importing transformers and fitting its rows while one
core idles; the child spends ~7 s importing torch, transformers and its tool before its first
line of work. Started first, the child's imports run beside the stage's (issue #25). Only for one
plain process: `accelerate launch` starts its own processes (safealign/train/launcher.py).

May import: nothing of safealign (the child imports only what its command imports).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import runpy
import signal
import sys
from pathlib import Path


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when `parent` (the stage) dies (prctl PR_SET_PDEATHSIG, Linux); exit
    now if it is gone already. Elsewhere nothing: the inherited lock still keeps a rerun out."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return
    pr_set_pdeathsig = 1
    prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # it died before the signal was armed
        os._exit(1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", type=int, default=0, help="the stage's pid: die with it")
    ap.add_argument(
        "--import", dest="names", action="append", default=[], help="module or module:attribute to import first"
    )
    a = ap.parse_args()
    if a.parent:
        die_with_parent(a.parent)
    for name in a.names:
        module, _, attr = name.partition(":")
        m = importlib.import_module(module)
        if attr:  # trl's lazy attributes (trl:KTOTrainer) import their module on first access
            getattr(m, attr)
    line = sys.stdin.readline()
    if not line.strip():
        return 0
    program = json.loads(line)
    # from here on as `python <program>` started from the stage with nothing on its stdin
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdin = open(0, closefd=False)
    if program[0] == "-m":
        sys.argv = [program[1], *program[2:]]
        runpy.run_module(program[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(program)
        sys.path[0] = str(Path(program[0]).resolve().parent)
        runpy.run_path(program[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
