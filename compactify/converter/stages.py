"""Time the stages of a conversion and, for a conversion that is taking a while, say each one on stderr.

A fast conversion stays silent; once ``quiet_for`` seconds have passed since the start, every
finished stage gets one line (those that finished before that point are printed together when it
is reached), so a long conversion shows where it is without flooding a short one. The times go
into report.json as ``stages`` ({name: seconds}, in the order they ran).

    stages = Stages(progress=True)
    with stages("capture"):
        ...
    stages.seconds  # {"capture": 1.23}
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator, TextIO

QUIET_FOR_S = 3.0


class Stages:
    """Wall-clock seconds per named stage; a stage entered twice adds up in ``seconds`` and gets a
    line each time it finishes."""

    def __init__(self, progress: bool = False, quiet_for: float = QUIET_FOR_S, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.progress = progress
        self.quiet_for = quiet_for
        self.stream = stream
        self.clock = clock
        self.start = clock()
        self.seconds: dict[str, float] = {}
        self._unprinted: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = self.clock()
        try:
            yield
        finally:
            took = self.clock() - t
            self.seconds[name] = self.seconds.get(name, 0.0) + took
        # Only a stage that finished is announced: a failure's one-line error stays the only line.
        self._unprinted.append((name, took))
        self._report()

    @property
    def total(self) -> float:
        return self.clock() - self.start

    def rounded(self, digits: int = 3) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}

    def _report(self) -> None:
        if not self.progress or self.total < self.quiet_for:
            return
        stream = self.stream or sys.stderr
        for name, took in self._unprinted:
            stream.write(f"{name:<10} {took:7.2f} s\n")
        stream.flush()
        self._unprinted = []


def silent() -> Stages:
    """A timer that never prints (the Python API's default)."""
    return Stages(progress=False)
