"""Keeping what a native runtime prints off the terminal.

ExecuTorch's C++ side writes its own log lines straight to file descriptor 2 (``[cpuinfo_utils.cpp:87]
Failed to open midr file``, ``[threadpool.cpp:66] Resetting threadpool``), and the Python packages it
imports warn through their loggers and ``warnings``. compactify prints no foreign lines: a user gets
one line per problem. Redirecting ``sys.stderr`` cannot catch C++ output, so the descriptors themselves
are pointed at a temporary file while the block runs; what was said goes to the "compactify" logger at
debug level, which ``compactify --debug`` shows.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

_STDOUT, _STDERR = 1, 2

# A C++ log line's source position: "[method.cpp:1206] Input 0 has unexpected scalar type".
_SOURCE_PREFIX = re.compile(r"^\[[\w.]+:\d+\]\s*")


@dataclasses.dataclass
class Said:
    """What the library printed during the block (set when the block ends)."""

    text: str = ""

    def last_native_line(self) -> str:
        """The last C++ log line, without its source position ("" when none): the native side says there
        why it failed, where the Python exception gives an error code only ("error: 0x12")."""
        lines = [line.strip() for line in self.text.splitlines() if _SOURCE_PREFIX.match(line.strip())]
        return _SOURCE_PREFIX.sub("", lines[-1]) if lines else ""


@contextlib.contextmanager
def native_output_kept(what: str) -> Iterator[Said]:
    """Nothing printed while the block runs reaches the terminal, from Python or from C/C++; what was
    printed is in the yielded ``Said`` once the block ends. ``what`` names the library in the debug log
    ("ExecuTorch said: ..."). Not for a timing loop: it costs a few system calls on entry and exit."""
    said = Said()
    _flush_all()
    python_said = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        saved = (os.dup(_STDOUT), os.dup(_STDERR))
        try:
            os.dup2(sink.fileno(), _STDOUT)
            os.dup2(sink.fileno(), _STDERR)
            with contextlib.redirect_stdout(python_said), contextlib.redirect_stderr(python_said), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield said
        finally:
            _flush_all()  # C stdio buffers still hold what was printed into the file, not the terminal
            os.dup2(saved[0], _STDOUT)
            os.dup2(saved[1], _STDERR)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            said.text = (sink.read().decode(errors="replace") + python_said.getvalue()).strip()
            if said.text:  # also when the block failed: --debug shows what the library said before it did
                logging.getLogger("compactify").debug("%s said:\n%s", what, said.text)


def _flush_all() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # a closed or replaced stream has nothing of ours to flush
            stream.flush()
    with contextlib.suppress(Exception):  # fflush(NULL): every C stdio stream
        ctypes.CDLL(None).fflush(None)
