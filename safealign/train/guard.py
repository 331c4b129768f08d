"""Run a command so that it and every process it starts die with the stage that started it.

    python -m safealign.train.guard --parent=<stage pid> -- accelerate launch ... train_kto.py kto.yaml

`accelerate launch` (and torchrun under it) starts worker processes of its own; killed, the
launcher leaves them running, writing into the stage's `.tmp` folder. This guard sits between the
stage and the command: it is the command's parent and the reaper of every orphan below it (Linux's
child subreaper), it gets SIGTERM when the stage dies, kill -9 included (the parent-death
signal), and then kills every process below it with SIGKILL and reaps them before it exits. It
holds the stage's lock as long as it lives (the descriptor inherited: train/launcher.run_logged),
so a rerun takes the lock only once no process of the old run is left. When the command ends by
itself, anything it left behind is ended the same way. Elsewhere than Linux it runs the command
and passes its exit status on, nothing more.

The one plain training process has the same guarantee from safealign/train/preload.py.

May import: nothing of safealign.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(root: int) -> list[int]:
    """Every live process below `root`, read from /proc (parents before children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])  # the name may hold spaces and parentheses
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            out.append(pid)
            todo.append(pid)
    return out


def end_all() -> None:
    """SIGKILL every process below this one and reap them (as subreaper, orphans come here)."""
    for _ in range(50):  # a process may fork while we look: look again until none is left
        pids = descendants(os.getpid())
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
        _reap()
    _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parent", type=int, required=True, help="the stage's pid: end everything when it dies")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("no command after --")
    linux = _prctl(PR_SET_CHILD_SUBREAPER, 1)

    def stage_died(signum, frame):
        end_all()
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, lambda signum, frame: None)  # Ctrl-C reaches the command itself; its exit ends us
    if linux:
        signal.signal(signal.SIGTERM, stage_died)
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != a.parent:  # the stage died before the signal was armed
            return 1
    proc = subprocess.Popen(cmd)
    rc = proc.wait()
    if linux:
        end_all()  # whatever the command left running
    return rc if rc >= 0 else 128 - rc


if __name__ == "__main__":
    sys.exit(main())
