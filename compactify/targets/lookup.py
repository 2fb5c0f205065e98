"""Finding the target of a file: by its suffix, else by its content; and the kinds table of --help texts.

Only artifacts are known here. Checkpoints (.pt/.pth/.safetensors) are the converter's loader's
business; a command that also takes them adds their row to the help texts with ``also``.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from compactify.errors import BadInputError
from compactify.runtimes import Runner, object_runtime, open_runner, runtimes_help
from compactify.targets.base import TARGETS, Target


@dataclass(frozen=True)
class FileKind:
    """A row of the kinds table that is not a target (a checkpoint, which the caller rebuilds)."""

    suffixes: tuple[str, ...]
    description: str
    runtime: str


def target_for(path: str | Path) -> Target:
    """The target of the file at ``path``: by suffix (the longest one its name ends with, so that
    compact.int8.onnx is the int8 artifact), else by sniffing its content; BadInputError naming the
    known kinds when neither tells."""
    path = Path(path)
    name = path.name.lower()
    by_suffix = [(len(s), t) for t in TARGETS.values() for s in t.suffixes if name.endswith(s)]
    if by_suffix:
        return max(by_suffix, key=lambda pair: pair[0])[1]
    if path.is_file():
        found = _by_content(path)
        if found is not None:
            return found
    raise BadInputError(f"cannot tell what {path.name} is: expected one of {kinds_help()}")


def _by_content(path: Path) -> Target | None:
    """The most specific target whose sniff accepts ``path``: an fp16 ONNX file is also an ONNX file,
    and a target another one is built from gives way to it."""
    matches = [t for t in TARGETS.values() if t.sniff(path)]
    derived = [t for t in matches if not any(t.name in other.builds_from for other in matches)]
    return derived[0] if derived else None


def runtime_for(model: Any) -> str:
    """The runtime that runs ``model``: a file's target's runtime, torch for an in-memory PyTorch model."""
    if isinstance(model, (str, Path)):
        return target_for(model).runtime
    return object_runtime(model)


def open_artifact(path: str | Path, runtime: str | None = None, device: str | None = None, **opts: Any) -> Runner:
    """A loaded Runner for the artifact at ``path``: on its target's runtime, or on ``runtime``."""
    target = target_for(path)
    if runtime is None or runtime == target.runtime:
        return target.open(path, **opts) if device is None else target.open(path, device=device, **opts)
    return open_runner(path, runtime=runtime, device=device, **opts)


def mismatch(path: str | Path, runtime: str) -> str:
    """The message for a file asked to run on a runtime that cannot run it."""
    target = target_for(path)
    hints = {
        "ort": "export it to ONNX first",
        "trt": "build a TensorRT engine from its ONNX export first (`compactify engine`)",
        "torch": "the torch runtime runs a .pt2 or a checkpoint",
        "openvino": "convert with --openvino, which writes its OpenVINO IR (compact.xml)",
    }
    return (f"{Path(path).name} is a {target.description} and runs on --runtime {target.runtime}, not --runtime "
            f"{runtime}; {hints.get(runtime, '')}").rstrip("; ")


def _rows(also: Iterable[FileKind]) -> list[Any]:
    return [*TARGETS.values(), *also]


def kinds_help(also: Sequence[FileKind] = ()) -> str:
    """One line for --help texts: every suffix and the runtime that runs it."""
    return "; ".join(f"{'/'.join(k.suffixes)}: {k.description} ({k.runtime})" for k in _rows(also))


def kinds_table(indent: str = "", width: int = 76, also: Sequence[FileKind] = ()) -> str:
    """The kinds as aligned lines for --help texts (click keeps a block after a \\b line as it is)."""
    rows = [(" ".join(k.suffixes), f"{k.description}, on {k.runtime}") for k in _rows(also)]
    w0 = max(len(r[0]) for r in rows)
    lines = ["\b", "Model files (the kind from the suffix, else from the content):"]
    for suffixes, what in rows:
        wrapped = textwrap.wrap(what, max(20, width - w0 - 4))
        lines.append(f"  {suffixes:<{w0}}  {wrapped[0]}")
        lines += [f"  {'':<{w0}}  {more}" for more in wrapped[1:]]
    lines += textwrap.wrap("Runtimes: " + runtimes_help() + ".", width, subsequent_indent="  ")
    return "\n".join(indent + line for line in lines)
