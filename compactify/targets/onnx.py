"""compact.onnx: the compact network as a float32 ONNX model, run on ONNX Runtime."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import onnx

from compactify.errors import BadInputError
from compactify.targets.base import Built, CompactModel, Target, register_target
from compactify.targets.onnx_io import save_onnx
from compactify.targets.onnx_simplify import simplify_checked

# Every ONNX model opens with ModelProto field 1 (ir_version) as a varint: tag byte 0x08.
_ONNX_FIRST_BYTE = b"\x08"


@dataclass(frozen=True)
class OnnxSettings:
    simplify: bool = True  # run onnxsim, checked on the conversion's check inputs

    def __post_init__(self) -> None:
        if not isinstance(self.simplify, bool):
            raise BadInputError(f"the ONNX target's simplify must be true or false, got {self.simplify!r}")


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


def stamp_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Add ``metadata`` to the model's metadata_props; keys the model already has keep their values (an
    ONNX source's own stamps are not overwritten)."""
    existing = {p.key for p in model.metadata_props}
    for key, value in metadata.items():
        if key not in existing:
            model.metadata_props.add(key=key, value=str(value))


@register_target
class OnnxTarget(Target):
    name = "onnx"
    file = "compact.onnx"
    suffixes = (".onnx",)
    description = "ONNX model"
    runtime = "ort"
    settings_type = OnnxSettings

    def sniff(self, path: Path) -> bool:
        return read_onnx_model(path) is not None

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: OnnxSettings) -> Built:
        graph = compact.onnx()  # cached for the other targets: what is stamped and written is a copy
        entry = dict(graph.info)
        entry.setdefault("nodes_before", len(graph.model.graph.node))
        entry["simplified"] = False
        if settings.simplify:  # onnxsim works on its own copy (no third copy beside it: 47 MB at 12M parameters)
            model, diff = simplify_checked(graph.model, compact.check_feeds)
            entry.update(simplified=True, simplify_max_abs_diff=diff)
        else:
            model = onnx.ModelProto()
            model.CopyFrom(graph.model)
        entry["nodes_after"] = len(model.graph.node)
        stamp_metadata(model, compact.metadata)
        save_onnx(model, folder / self.file, force=True)
        warnings = list(entry.pop("warnings", []))
        return Built(self.file, {self.name: entry}, warnings)
