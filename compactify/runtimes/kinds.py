"""The one table of model file kinds and the runtimes that run them.

``bench``, ``verify``, ``open_runner`` and the CLI help all read this table, so a suffix means
the same everywhere. A file whose suffix is not in the table is recognised by its content where
possible (a .pt2 or ONNX file under another name, a checkpoint under any name).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from compactify.errors import BadInputError


@dataclasses.dataclass(frozen=True)
class FileKind:
    name: str  # "pt2", "onnx", "engine", "checkpoint"
    suffixes: tuple[str, ...]
    runtime: str  # the runtime that runs it: "torch", "ort" or "trt"
    description: str


FILE_KINDS: tuple[FileKind, ...] = (
    FileKind("pt2", (".pt2",), "torch", "torch.export program"),
    FileKind("onnx", (".onnx",), "ort", "ONNX model"),
    FileKind("engine", (".engine", ".plan", ".trt"), "trt", "TensorRT engine"),
    FileKind("checkpoint", (".pt", ".pth", ".bin", ".ckpt", ".safetensors"), "torch",
             "checkpoint (rebuilt from its metadata)"),
)
RUNTIMES: dict[str, str] = {
    "torch": "PyTorch, cpu or cuda",
    "ort": "ONNX Runtime, cpu or cuda",
    "trt": "TensorRT, cuda",
}
KINDS = {k.name: k for k in FILE_KINDS}
SUFFIXES = {s: k for k in FILE_KINDS for s in k.suffixes}
CHECKPOINT_SUFFIXES = KINDS["checkpoint"].suffixes
ENGINE_SUFFIXES = KINDS["engine"].suffixes


def kinds_help() -> str:
    """One line for --help texts: every suffix and the runtime that runs it."""
    return "; ".join(f"{'/'.join(k.suffixes)}: {k.description} ({k.runtime})" for k in FILE_KINDS)


def kinds_table(indent: str = "", width: int = 76) -> str:
    """The table as aligned lines for --help texts (click keeps a block after a \\b line as it is)."""
    import textwrap

    rows = [(" ".join(k.suffixes), f"{k.description}, on {k.runtime}") for k in FILE_KINDS]
    w0 = max(len(r[0]) for r in rows)
    lines = ["\b", "Model files (the kind from the suffix, else from the content):"]
    for suffixes, what in rows:
        wrapped = textwrap.wrap(what, max(20, width - w0 - 4))
        lines.append(f"  {suffixes:<{w0}}  {wrapped[0]}")
        lines += [f"  {'':<{w0}}  {more}" for more in wrapped[1:]]
    lines += textwrap.wrap("Runtimes: " + runtimes_help() + ".", width, subsequent_indent="  ")
    return "\n".join(indent + line for line in lines)


def runtimes_help() -> str:
    return ", ".join(f"{name} ({what})" for name, what in RUNTIMES.items())


def kind_of(path: str | Path) -> FileKind:
    """The kind of a model file: from its suffix, else from its content; BadInputError if neither tells."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is not None:
        return kind
    if path.is_file():
        from compactify.converter.load.sniff import detect

        content = detect(path)
        if content.kind in ("pt2", "onnx"):
            return KINDS[content.kind]
        if content.kind in ("torch", "safetensors"):
            return KINDS["checkpoint"]
    raise BadInputError(f"cannot tell what {path.name} is: expected one of {kinds_help()}")


def runtime_of(path: str | Path) -> str:
    return kind_of(path).runtime


def mismatch(path: str | Path, runtime: str) -> str:
    """The message for a file asked to run on a runtime that cannot run it."""
    kind = kind_of(path)
    hints = {
        "ort": "export it to ONNX first",
        "trt": "build a TensorRT engine from its ONNX export first (`compactify engine`)",
        "torch": "the torch runtime runs a .pt2 or a checkpoint",
    }
    return (f"{Path(path).name} is a {kind.description} and runs on --runtime {kind.runtime}, not --runtime {runtime}; "
            f"{hints.get(runtime, '')}").rstrip("; ")
