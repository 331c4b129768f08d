"""The quiet terminal (safealign/core/console.py) and the evaluation queue (safealign/run/queue.py)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from safealign.core import console
from safealign.core.errors import StageError
from safealign.run import queue

REPO = Path(__file__).resolve().parent.parent
TORCHAO_LINE = (
    "Failed to load /v/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: "
    "Could not load this library: /v/lib/python3.11/site-packages/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so"
)

STAGE = textwrap.dedent(
    f"""
    import logging, subprocess, sys, warnings
    from pathlib import Path
    from safealign.core import console
    console.install_filters()
    with console.Console(Path(sys.argv[1])):
        logging.getLogger("torchao").warning({TORCHAO_LINE!r})
        logging.getLogger("torchao").warning("Failed to load a kernel nobody has seen before")
        warnings.warn("a brand-new warning", UserWarning)
        print("an info line, for the log only")
        subprocess.run([sys.executable, "-c", "print('a child process line')"])
        console.progress("work", 1, 2, "items")
        console.progress("work", 2, 2, "items")
        console.progress("work", 2, 2, "items")  # a closing call for a bar finished already: no second line
        console.say("  result: 42")
    print("after the console: the terminal again")
    """
)


def run_stage(tmp_path, **env):
    log = tmp_path / "stage.log"
    e = {k: v for k, v in os.environ.items() if k != "VERBOSE"} | env
    r = subprocess.run([sys.executable, "-c", STAGE, str(log)], capture_output=True, cwd=REPO, env=e)
    assert r.returncode == 0, r.stderr
    return (r.stdout + r.stderr).decode(), log.read_text()  # bytes: a progress bar's \r kept


def test_terminal_shows_results_bars_and_new_warnings_only(tmp_path):
    terminal, log = run_stage(tmp_path)
    assert "result: 42" in terminal and "after the console" in terminal
    assert "a brand-new warning" in terminal  # not known to be harmless: shown
    assert "a kernel nobody has seen before" in terminal  # the same logger, another message: shown
    assert "_C_mxfp8" not in terminal and "_C_mxfp8" not in log  # filtered where it is made
    assert "info line" not in terminal and "a child process line" not in terminal
    assert "\r  work [############............] 1/2 items\r  work [########################] 2/2 items\n" in terminal
    assert terminal.count("2/2 items") == 1
    for line in ("an info line, for the log only", "a child process line", "a brand-new warning", "result: 42"):
        assert line in log


def test_verbose_shows_everything_and_filters_nothing(tmp_path):
    terminal, log = run_stage(tmp_path, VERBOSE="1")
    for line in ("_C_mxfp8", "an info line", "a child process line", "a brand-new warning", "result: 42"):
        assert line in terminal
    assert "_C_mxfp8" in log


@pytest.mark.parametrize("filtered", [False, True])
def test_the_patterns_match_what_the_libraries_really_print(filtered):
    """torchao's and torch's import-time messages, as this environment's packages print them, in a
    child process that gets the filters the way training's do (sitecustomize on its PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "VERBOSE"}
    env["PYTHONPATH"] = os.pathsep.join([str(console.SITE), str(REPO)])
    if not filtered:
        env["VERBOSE"] = "1"
    r = subprocess.run([sys.executable, "-c", "import torchao"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    if filtered:
        assert out.strip() == "", out
    else:  # the messages exist here, so the filtered run above proves that the patterns match them
        assert "Failed to load" in out and "register_constant() on Enum subclasses is deprecated" in out


@pytest.mark.parametrize(
    "line,alarm",
    [
        ("[2026-12-03 18:35:18,752] [WARNING] [axolotl.x] careful", True),
        ("[2026-12-03 18:35:18,752] [INFO] [axolotl.cli.config] config:", False),
        ("W1203 18:33:46.808000 16516 torch/utils/_pytree.py:630] something", True),
        ("/x/y.py:12: FutureWarning: `foo` is deprecated", True),
        ("WARNING [torchao] a new one", True),
        ("ValueError: bad value", True),
        ("Traceback (most recent call last):", True),
        ("  warning: kto: desirable weight", True),
        ('  "eval_causal_lm_metrics": [', False),
        ("  safety: 32/90 answers", False),
        ("Running loglikelihood requests:  70%|███████   | 360/512", False),
    ],
)
def test_alarm_lines(line, alarm):
    assert console.is_alarm(line) is alarm


def test_every_harmless_message_has_a_reason_and_a_valid_place():
    for where, pattern, why in console.HARMLESS:
        assert why and len(why) > 20, pattern
        assert not where.startswith("warning:") or where.split(":", 1)[1] in console._CATEGORIES


def test_queue_reads_in_order_once_and_names_a_bad_line(tmp_path):
    q = tmp_path / "123"
    q.write_text("judge\nsafety base\nleaderboard base\nsafety base\nsafety base xstest\nsafety base xstest\n")
    assert queue.read(q) == [
        ("judge", None, None),
        ("safety", "base", None),
        ("leaderboard", "base", None),
        ("safety", "base", "xstest"),
    ]
    assert queue.read(tmp_path / "none") == []
    q.write_text("judge\nsafety\n")
    with pytest.raises(StageError, match=r"123:2: expected .*got 'safety'"):
        queue.read(q)
    q.write_text("train sft\n")
    with pytest.raises(StageError, match=r"123:1:"):
        queue.read(q)
    q.write_text("leaderboard base xstest\n")  # only a safety stage has a set
    with pytest.raises(StageError, match=r"123:1:"):
        queue.read(q)


def test_queue_files_of_gone_make_runs_are_discarded(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, alive, gone = tmp_path / str(os.getpid()), tmp_path / str(os.getppid()), tmp_path / str(dead.pid)
    for f in (mine, alive, gone):
        f.write_text("judge\n")
    assert queue.discard_stale(tmp_path, keep=mine) == [gone]
    assert mine.exists() and alive.exists() and not gone.exists()
