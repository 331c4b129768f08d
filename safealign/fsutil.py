"""Crash-safe file and folder writes.

A stage writes everything into `<dir>.tmp/`, writes its stamp (`.done`) last, and only then
renames the folder into place. A stage killed half-way leaves only a `.tmp` folder, which
no later run mistakes for a finished stage (the next run deletes it and starts over).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STAMP = ".done"


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content differs, so that make sees an unchanged mtime otherwise."""
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_done(stage_dir: Path) -> bool:
    return (Path(stage_dir) / STAMP).exists()


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh `<final>.tmp` folder; on success stamp it and rename it to `final`.

    On any exception the temporary folder is left for inspection (it is never taken for a
    finished stage) and `final` is untouched.
    """
    final = Path(final)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    yield tmp
    (tmp / STAMP).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")
    if final.exists():
        trash = final.with_name(final.name + ".old")
        if trash.exists():
            shutil.rmtree(trash)
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
