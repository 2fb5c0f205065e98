"""compact.fp16.onnx: an fp16 copy of compact.onnx (fp32 inputs and outputs), run on ONNX Runtime."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import onnx

from compactify.targets.base import Built, CompactModel, Target, register_target
from compactify.targets.fp16_convert import to_fp16
from compactify.targets.onnx import read_onnx_model

# Half precision keeps about 3 decimal digits: an fp16 artifact is judged with these, not the fp32 ones.
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2


@dataclass(frozen=True)
class Fp16Settings:
    """The fp16 copy keeps fp32 inputs and outputs and is checked against compact.onnx: nothing to choose."""


def has_fp16_weights(model: onnx.ModelProto) -> bool:
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)


@register_target
class Fp16Target(Target):
    name = "onnx_fp16"
    file = "compact.fp16.onnx"
    suffixes = (".fp16.onnx",)
    description = "fp16 ONNX model"
    runtime = "ort"
    flag = "--fp16"
    builds_from = ("onnx",)
    settings_type = Fp16Settings
    precision = "fp16"

    def sniff(self, path: Path) -> bool:
        model = read_onnx_model(path)
        return model is not None and has_fp16_weights(model)

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: Fp16Settings) -> Built:
        half = to_fp16(built["onnx"], folder / self.file)
        return Built(self.file, {self.name: {
            "max_abs_diff_vs_fp32": half.max_abs_diff, "max_rel_diff_vs_fp32": half.max_rel_diff,
            "clamped_values": half.clamped_values, "flushed_values": half.flushed_values}})

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        return FP16_ATOL, FP16_RTOL
