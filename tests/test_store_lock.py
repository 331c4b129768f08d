"""Two processes on one stage (a cheap fake stage, real processes, real flock): one builds, the
other says it waits and then reuses the result; a failing or killed builder never leaves a
result that looks finished, nor removes one."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from safealign.core import fsutil

REPO = Path(__file__).resolve().parent.parent
BUILDER = """
import sys, time
from pathlib import Path
from safealign.core import fsutil
final, seconds, fail = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "fail"
with fsutil.stage_lock(final, "fake") as meanwhile:
    if meanwhile:
        print("reused", flush=True); sys.exit(0)
    with fsutil.staged_dir(final) as tmp:
        print("building", flush=True)
        (tmp / "part1").write_text("1")
        time.sleep(seconds)
        if fail:
            raise SystemExit("failed on purpose")
        (tmp / "part2").write_text("2")
print("built", flush=True)
"""


def start(final: Path, seconds: float = 2.0, fail: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(final), str(seconds), "fail" if fail else "ok"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )


def wait_for(path: Path, timeout: float = 30):
    t0 = time.time()
    while not path.exists():
        assert time.time() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_second_process_waits_then_reuses(tmp_path):
    final = tmp_path / "stage-abc"
    a = start(final)
    wait_for(final.with_name("stage-abc.tmp") / "part1")
    b = start(final)
    out_a, _ = a.communicate(timeout=60)
    out_b, err_b = b.communicate(timeout=60)
    assert a.returncode == 0 and b.returncode == 0
    assert out_a.split() == ["building", "built"] and out_b.split() == ["reused"]
    assert "fake: waiting: another process is building" in err_b
    assert fsutil.is_done(final) and {p.name for p in final.iterdir()} == {"part1", "part2", ".done"}
    assert not final.with_name("stage-abc.tmp").exists()


def test_failing_run_never_replaces_or_removes_a_finished_stage(tmp_path):
    final = tmp_path / "stage-abc"
    assert start(final, 0).wait(60) == 0
    stamp = (final / ".done").read_text()
    assert start(final, 0, fail=True).wait(60) != 0  # a rebuild that fails
    assert (final / ".done").read_text() == stamp and (final / "part2").exists()
    assert not fsutil.is_done(final.with_name("stage-abc.tmp"))


def test_killed_builder_releases_the_lock_and_leaves_nothing_done(tmp_path):
    final = tmp_path / "stage-abc"
    a = start(final, 30)
    wait_for(final.with_name("stage-abc.tmp") / "part1")
    assert fsutil.is_locked(final)
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    assert not fsutil.is_locked(final) and not fsutil.is_done(final)
    b = start(final, 0)
    out_b, _ = b.communicate(timeout=60)
    assert out_b.split() == ["building", "built"] and fsutil.is_done(final)  # started over, not "reused"
