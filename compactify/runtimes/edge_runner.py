"""What the edge runtimes' runners share (ExecuTorch's .pte, LiteRT's .tflite): one flatbuffer file,
run on the cpu, with a thread count of their own."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

from compactify.errors import BadInputError
from compactify.runtimes.base import Runner


def flatbuffer_identifier(path: str | Path) -> bytes:
    """The four-byte file identifier of a flatbuffer file (bytes 4 to 8: ET12 for ExecuTorch, TFL3 for
    LiteRT), or b"" when the file cannot be read or is shorter."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return b""
    return head[4:8] if len(head) == 8 else b""


class EdgeRunner(Runner):
    """A runner of one flatbuffer file on the cpu; ``threads`` (None: the runtime's own count) is its
    intra-op thread count. Subclasses say what their file is and how to recognise it."""

    threads_option = "threads"
    file_kind: ClassVar[str]  # "an ExecuTorch program"
    suffix: ClassVar[str]  # ".pte"
    flag: ClassVar[str]  # the convert option that writes one: "--executorch"

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        if device != "cpu":
            raise BadInputError(f"the {self.name} runner runs on the cpu only, not {device!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BadInputError(f"{self.name} threads must be a positive int, got {threads!r}")
        self.path = Path(path)
        self.device = "cpu"
        self.threads = threads

    @classmethod
    @abc.abstractmethod
    def recognises(cls, identifier: bytes) -> bool:
        """Whether a flatbuffer's file identifier is this runtime's."""

    @classmethod
    def holds_its_file(cls, path: str | Path) -> bool:
        return cls.recognises(flatbuffer_identifier(path))

    def _check_file(self) -> None:
        """BadInputError before the runtime is imported: no file, or a file of another kind."""
        if not self.path.is_file():
            raise BadInputError(f"{self.suffix} file {self.path} does not exist")
        if not self.holds_its_file(self.path):
            raise BadInputError(f"{self.path} is not {self.file_kind} (no flatbuffer header of its kind); convert "
                                f"with {self.flag} to write one")
