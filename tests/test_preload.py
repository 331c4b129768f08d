"""A training child started before its command (safealign/train/preload.py, launcher.preloaded):
it runs the command as `python <args>` would, its failures surface as before, and a stage that
fails before handing it the command leaves no process behind."""

import json
import os
import sys

import pytest

from safealign.config.launch import LaunchCfg
from safealign.core.errors import StageError
from safealign.train import launcher, preload
from safealign.train.launcher import preloaded, run_logged

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(launcher.REPO), os.environ.get("PYTHONPATH", "")])}
SCRIPT = """import json, os, sys
json.dump({"argv": sys.argv, "cwd": os.getcwd(), "name": __name__, "path0": sys.path[0],
           "stdin": sys.stdin.read(), "preloaded": "colorsys" in sys.modules}, open("out.json", "w"))
sys.exit(int(sys.argv[-1]))
"""


def run(tmp_path, program: list[str], names=("colorsys",)):
    with preloaded(list(names), LaunchCfg(), tmp_path, ENV) as child:
        assert child is not None
        run_logged([sys.executable, *program], tmp_path, tmp_path / "train.log", env=ENV, quiet=True, child=child)
    return json.loads((tmp_path / "out.json").read_text())


def test_a_script_runs_as_python_would_run_it(tmp_path):
    (tmp_path / "train_x.py").write_text(SCRIPT)
    out = run(tmp_path, ["train_x.py", "x.yaml", "0"])
    assert out == {
        "argv": ["train_x.py", "x.yaml", "0"],
        "cwd": str(tmp_path),
        "name": "__main__",
        "path0": str(tmp_path),
        "stdin": "",  # nothing: the command line came on stdin, which is then /dev/null
        "preloaded": True,
    }


def test_a_module_runs_as_python_m_would_run_it(tmp_path):
    pkg = tmp_path / "tool"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(SCRIPT)
    out = run(tmp_path, ["-m", "tool.train", "cfg.yaml", "0"])
    assert out["argv"] == [str(pkg / "train.py"), "cfg.yaml", "0"] and out["name"] == "__main__"


def test_a_failing_command_fails_the_stage_with_its_output(tmp_path):
    (tmp_path / "train_x.py").write_text(SCRIPT.replace("sys.exit", "print('boom from the trainer'); sys.exit"))
    with pytest.raises(StageError, match=r"(?s)exited with 3.*boom from the trainer"):
        run(tmp_path, ["train_x.py", "3"])


def test_a_child_that_dies_importing_fails_the_stage(tmp_path):
    (tmp_path / "train_x.py").write_text(SCRIPT)
    with pytest.raises(StageError, match=r"(?s)exited with 1.*No module named 'no_such_module_here'"):
        run(tmp_path, ["train_x.py", "0"], names=["no_such_module_here"])
    assert not (tmp_path / "out.json").exists()


def test_a_stage_that_fails_first_leaves_no_child(tmp_path):
    with pytest.raises(RuntimeError, match="the rows did not fit"):
        with preloaded(["colorsys"], LaunchCfg(), tmp_path, ENV) as child:
            pid = child.pid
            raise RuntimeError("the rows did not fit")
    assert child.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_accelerate_launches_are_not_preloaded(tmp_path):
    with preloaded(["colorsys"], LaunchCfg(processes=2), tmp_path, ENV) as child:
        assert child is None


def test_every_kind_names_modules_that_import():
    import importlib

    from safealign.config import kinds

    for kind in kinds.KINDS.values():
        for name in launcher.preload_names(kind):
            module, _, attr = name.partition(":")
            m = importlib.import_module(module)
            assert not attr or hasattr(m, attr), name
    assert preload.__doc__


STAGE = """import sys, time
from pathlib import Path
from safealign.config.launch import LaunchCfg
from safealign.core import fsutil
from safealign.train.launcher import child_env, preloaded, run_logged
final = Path(sys.argv[1])
with fsutil.stage_lock(final), fsutil.staged_dir(final) as tmp:
    (tmp / "train_x.py").write_text(
        "import os, time\\nopen('pid', 'w').write(str(os.getpid()))\\n"
        "while True:\\n    open('writes', 'a').write('x')\\n    time.sleep(0.05)\\n"
    )
    env = child_env(tmp)
    with preloaded(["colorsys"], LaunchCfg(), tmp, env) as child:
        run_logged([sys.executable, "train_x.py"], tmp, tmp / "train.log", env=env, quiet=True, child=child)
"""


def test_kill_9_of_the_stage_ends_its_trainer_and_keeps_the_folder_locked_until_then(tmp_path):
    """A stage killed with kill -9 used to leave its trainer writing into `<stage>.tmp` while a
    rerun, the lock free, started over in the same folder."""
    import fcntl
    import signal
    import subprocess
    import time

    from safealign.core import fsutil

    final = tmp_path / "store" / "sft-1"
    (tmp_path / "stage.py").write_text(STAGE)
    stage = subprocess.Popen([sys.executable, str(tmp_path / "stage.py"), str(final)], env=ENV)
    pid_file = final.with_name("sft-1.tmp") / "pid"
    deadline = time.time() + 60
    while not pid_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    trainer = int(pid_file.read_text())
    os.kill(stage.pid, signal.SIGKILL)
    stage.wait()
    # what a rerun does first: take the lock; by the time it has it, the trainer must be gone
    with open(fsutil.lock_path(final), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        time.sleep(0.1)  # a zombie is reaped by init; a live writer would still be writing
        writes = (pid_file.parent / "writes").stat().st_size
        time.sleep(0.3)
        assert (pid_file.parent / "writes").stat().st_size == writes, "the trainer still writes into the folder"
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.kill(trainer, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(trainer, signal.SIGKILL)
        pytest.fail("the trainer outlived its stage")
