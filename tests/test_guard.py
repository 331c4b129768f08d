"""A launched command and every process it starts die with their stage (safealign/train/guard.py):
`accelerate launch` starts worker processes of its own, which a kill -9 of the stage used to
leave writing into `<stage>.tmp`. Here a launcher that starts a worker and a grand-worker stands
in for accelerate and torchrun (the real ones need the same process tree, and take a minute)."""

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from safealign.core import fsutil
from safealign.train import launcher

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(launcher.REPO), os.environ.get("PYTHONPATH", "")])}

# the launcher starts a worker, which starts one more (torchrun's shape); each writes its pid and keeps writing
LAUNCH = """import os, subprocess, sys, time
depth, mode = int(sys.argv[1]), sys.argv[2]
open(f"pid{depth}", "w").write(str(os.getpid()))
if depth < 2:
    subprocess.Popen([sys.executable, __file__, str(depth + 1), "run"])
if mode == "exit":  # the launcher fails while its workers still run
    time.sleep(1)
    sys.exit(3)
while True:
    open(f"writes{depth}", "a").write("x")
    time.sleep(0.05)
"""

STAGE = """import sys
from pathlib import Path
from safealign.core import fsutil
from safealign.train.launcher import child_env, run_logged
final = Path(sys.argv[1])
with fsutil.stage_lock(final), fsutil.staged_dir(final) as tmp:
    (tmp / "launch_x.py").write_text(sys.argv[2])
    run_logged([sys.executable, "launch_x.py", *sys.argv[3:]], tmp, tmp / "train.log", env=child_env(tmp), quiet=True)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(paths: list[Path], seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while not all(p.exists() and p.read_text() for p in paths):
        assert time.time() < deadline, f"not written: {[str(p) for p in paths if not p.exists()]}"
        time.sleep(0.05)


def take(f, seconds: float = 30) -> None:
    """The lock, as a rerun takes it; a lock still held after `seconds` fails the test (no hang)."""
    deadline = time.time() + seconds
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.time() > deadline:
                pytest.fail("the stage's lock is still held by a process of the killed stage")
            time.sleep(0.05)


def start(tmp_path, *args):
    final = tmp_path / "store" / "kto-1"
    (tmp_path / "stage.py").write_text(STAGE)
    stage = subprocess.Popen([sys.executable, str(tmp_path / "stage.py"), str(final), LAUNCH, *args], env=ENV)
    return stage, final, final.with_name("kto-1.tmp")


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal and the subreaper are Linux's"
)
def test_kill_9_of_the_stage_ends_the_launcher_and_its_workers_before_the_lock_is_free(tmp_path):
    stage, final, tmp = start(tmp_path, "0", "run")
    wait_for([tmp / f"pid{d}" for d in range(3)])
    time.sleep(0.2)
    pids = [int((tmp / f"pid{d}").read_text()) for d in range(3)]
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    # what a rerun does first: take the lock; by then no process of the old run may be left
    with open(fsutil.lock_path(final), "a") as f:
        take(f)
        left = [p for p in pids if alive(p)]
        sizes = [(tmp / f"writes{d}").stat().st_size for d in range(3)]
        time.sleep(0.3)
        assert [(tmp / f"writes{d}").stat().st_size for d in range(3)] == sizes, "still written after the lock"
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert left == [], "processes of the killed stage outlived its lock"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the subreaper is Linux's")
def test_a_launcher_that_exits_leaves_no_worker_and_its_exit_code_fails_the_stage(tmp_path):
    stage, final, tmp = start(tmp_path, "0", "exit")
    try:
        rc = stage.wait(timeout=30)
    except subprocess.TimeoutExpired:
        stage.kill()
        pytest.fail("the stage never ended: the workers its launcher left hold its output open")
    assert rc != 0
    pids = [int(p.read_text()) for p in sorted(tmp.glob("pid*"))] or [
        int(p.read_text()) for p in sorted(final.parent.glob("*/pid*"))
    ]
    assert len(pids) == 3 and not [p for p in pids if alive(p)]
    assert not final.exists()  # a failed stage is never finished


def test_the_guard_passes_the_exit_code_on(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "safealign.train.guard",
            f"--parent={os.getpid()}",
            "--",
            sys.executable,
            "-c",
            "raise SystemExit(7)",
        ],
        env=ENV,
    )
    assert r.returncode == 7
