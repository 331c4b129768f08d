"""Where a stage's seconds go: its imports, for `make bench` (tools/bench_exp.py).

`ImportClock` times every module import of this process (the outermost one of a nested chain
only, so nothing is counted twice); a stage's log gets the imports of its own run (a process that
runs several stages, safealign/run/queue.py, pays each import once, to the first stage that needs
it). Training's child process is timed by its stage: launch to the trainer's first step.

May import: nothing of safealign (the lowest layer).
"""

from __future__ import annotations

import importlib.abc
import sys
import time


class _Timed(importlib.abc.Loader):
    def __init__(self, loader, clock):
        self.loader, self.clock = loader, clock

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        clock = self.clock
        clock.depth += 1
        t0 = time.perf_counter()
        try:
            self.loader.exec_module(module)
        finally:
            clock.depth -= 1
            if clock.depth == 0:
                clock.seconds += time.perf_counter() - t0

    def __getattr__(self, name):  # get_resource_reader, is_package, ... as the real loader has them
        return getattr(self.loader, name)


class ImportClock(importlib.abc.MetaPathFinder):
    """Installed first on sys.meta_path; asks the other finders and times the loaders they return."""

    def __init__(self):
        self.seconds, self.depth = 0.0, 0

    def find_spec(self, name, path=None, target=None):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Timed(spec.loader, self)
                return spec
        return None


_clock: ImportClock | None = None


def start() -> ImportClock:
    """Start timing this process's imports (once)."""
    global _clock
    if _clock is None:
        _clock = ImportClock()
        sys.meta_path.insert(0, _clock)
    return _clock


def import_seconds() -> float:
    return _clock.seconds if _clock is not None else 0.0
