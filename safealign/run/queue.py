"""Queued evaluation stages: Make decides, one process runs them all.

Make decides which evaluation stages (judge, safety-<model>, leaderboard-<model>) are out of
date, exactly as for any other stage; their rules only append `<stage> [<model>]` to this make
run's queue file, `experiments/<NAME>/.eval-queue/<make's pid>`, and the summary rule runs the
queue, in the order Make wrote it, in one process before the summary. So the libraries are
imported once (sentence-transformers, lm-eval and peft cost 10-15 s a process on 2 cores)
instead of once per stage, while each stage keeps its own identity, store folder, lock and
stamp, as when `safealign stage <stage>` runs it alone: a changed safety setting still reruns
the safety stages only.

A queue file lives as long as its make run: the summary rule removes it, and removes those of
make processes that are gone (a killed run), so that no later run takes up their entries.
"""

from __future__ import annotations

import os
from pathlib import Path

from safealign.core.errors import StageError

FOLDER = ".eval-queue"  # under the experiment folder; the Makefile's EVAL_QUEUE names the same
QUEUED = ("judge", "safety", "leaderboard")  # the stages whose rules queue instead of running
NEEDS_MODEL = ("safety", "leaderboard")


def read(path: Path) -> list[tuple[str, str | None, str | None]]:
    """The queued stages, in order, each once: [(stage, model or None, benchmark or None)]
    (`safety <model> <set>`: a benchmark's safety stage); a malformed line is an error naming the
    file and line."""
    out: list[tuple[str, str | None, str | None]] = []
    if not Path(path).exists():
        return out
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        words = line.split()
        if not words:
            continue
        stage, model, bench = (words + [None, None])[:3]
        if (
            stage not in QUEUED
            or len(words) > (3 if stage == "safety" else 2)
            or (stage in NEEDS_MODEL) != (model is not None)
        ):
            raise StageError(
                f"{path}:{n}: expected `judge`, `safety <model> [<set>]` or `leaderboard <model>`, got {line!r}"
            )
        if (stage, model, bench) not in out:
            out.append((stage, model, bench))
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard_stale(folder: Path, keep: Path | None = None) -> list[Path]:
    """Remove the queue files of make processes that no longer run (never `keep`); return them."""
    gone = []
    for f in sorted(Path(folder).glob("*")) if Path(folder).is_dir() else []:
        if keep is not None and f.resolve() == Path(keep).resolve():
            continue
        if not f.name.isdigit() or not _alive(int(f.name)):
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone
