"""Crash-safe, concurrency-safe file and folder writes.

A stage is built under a lock (`<dir>.lock`, flock: released by the kernel when its holder
exits or is killed), in `<dir>.tmp/`, which only the lock holder touches; its stamp (`.done`)
is written last, and only then is the folder renamed into place. So:
- a stage killed half-way leaves only a `.tmp` folder, which no later run mistakes for a
  finished stage (the next lock holder deletes it and starts over);
- a second process that wants the same stage says it is waiting, and when the first one
  finished it meanwhile, reuses the result instead of building it again;
- a failing build never touches the finished folder: a rebuild replaces it only once the
  new one is complete, and in one step where the system can (Linux's renameat2 exchange), so
  that the stage is never absent; elsewhere a crash between the two renames leaves `<dir>.old`,
  which the next build removes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


class EncodingError(ValueError):
    """A text file that is not UTF-8; the message names the file, line, column and byte offset."""


def read_utf8(path: Path) -> str:
    """A text file's content: UTF-8, a leading byte-order mark dropped (as datasets and pandas do);
    invalid bytes raise EncodingError with the file, line and byte offset instead of a bare
    UnicodeDecodeError."""
    raw = Path(path).read_bytes()
    start = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    try:
        return raw[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        pos = start + e.start
        line = raw.count(b"\n", 0, pos) + 1
        col = pos - (raw.rfind(b"\n", 0, pos) + 1) + 1
        raise EncodingError(
            f"{path}:{line}: not valid UTF-8 at byte offset {pos} (line {line}, byte {col} of the "
            f"line): {raw[pos : pos + 4]!r}; save the file as UTF-8"
        ) from None


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


def _stamp(stage_dir: Path) -> str | None:
    try:
        return (Path(stage_dir) / STAMP).read_text()
    except FileNotFoundError:
        return None


def lock_path(stage_dir: Path) -> Path:
    return Path(stage_dir).with_name(Path(stage_dir).name + ".lock")


def is_locked(stage_dir: Path) -> bool:
    """Whether a live process holds `stage_dir`'s build lock now."""
    path = lock_path(stage_dir)
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


_HELD: list[int] = []  # the descriptors of the stage locks this process holds


@contextmanager
def _holding(fd: int) -> Iterator[None]:
    _HELD.append(fd)
    try:
        yield
    finally:
        _HELD.remove(fd)


def held_locks() -> tuple[int, ...]:
    """The file descriptors of the stage locks this process holds: a child that inherits them
    (subprocess's pass_fds) keeps the lock held until it exits too, so a stage killed with its
    child still running leaves its folder locked until that child is gone."""
    return tuple(_HELD)


@contextmanager
def stage_lock(stage_dir: Path, who: str | None = None) -> Iterator[bool]:
    """Hold `stage_dir`'s build lock; yield True when another process finished the stage while
    this one waited (reuse it), False when this process should build it."""
    stage_dir = Path(stage_dir)
    before = _stamp(stage_dir)
    stage_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path(stage_dir), "a") as f, _holding(f.fileno()):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"{who or stage_dir.name}: waiting: another process is building {stage_dir} "
                f"(lock {lock_path(stage_dir)})",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(f, fcntl.LOCK_EX)
        after = _stamp(stage_dir)
        try:
            yield after is not None and after != before
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh `<final>.tmp` folder; on success stamp it and rename it to `final`.

    Call it while holding `stage_lock(final)` when other processes may build the same folder.
    On any exception the temporary folder is left for inspection (it is never taken for a
    finished stage) and `final` is untouched.
    """
    final = Path(final)
    tmp, trash = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    for leftover in (tmp, trash):  # a killed build's folder; the old one of a swap cut short
        if leftover.exists():
            shutil.rmtree(leftover)
    tmp.mkdir(parents=True)
    yield tmp
    # unique per build, so that a waiting process can tell a new stamp from the one it saw
    (tmp / STAMP).write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} pid {os.getpid()} {time.time_ns()}\n")
    if not final.exists():
        os.replace(tmp, final)
    elif exchange(tmp, final):  # final is the new build from this instant; tmp holds the old one
        shutil.rmtree(tmp)
    else:
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 with RENAME_EXCHANGE); False, with
    nothing moved, where the system or the filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # the filesystem (or kernel) has no exchange
        return False
    raise OSError(err, os.strerror(err), f"{a} <-> {b}")
