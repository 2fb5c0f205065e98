"""compact.onnx: the compact network as a float32 ONNX model, run on ONNX Runtime."""

from __future__ import annotations

import functools
from pathlib import Path

import onnx

from compactify.targets.base import Target, register_target

# Every ONNX model opens with ModelProto field 1 (ir_version) as a varint: tag byte 0x08.
_ONNX_FIRST_BYTE = b"\x08"


def read_onnx_model(path: Path) -> onnx.ModelProto | None:
    """The ONNX model stored at ``path`` (weights kept external), or None when it is not one."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    return _read_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1)  # the targets sniff one file in turn: read it once
def _read_cached(path: str, mtime_ns: int, size: int) -> onnx.ModelProto | None:
    with open(path, "rb") as fh:
        if fh.read(1) != _ONNX_FIRST_BYTE:  # cheap refusal of everything else before parsing protobuf
            return None
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # DecodeError and friends: not an ONNX model
        return None
    return model if model.ir_version > 0 and len(model.graph.output) > 0 else None


@register_target
class OnnxTarget(Target):
    name = "onnx"
    file = "compact.onnx"
    suffixes = (".onnx",)
    description = "ONNX model"
    runtime = "ort"

    def sniff(self, path: Path) -> bool:
        return read_onnx_model(path) is not None
