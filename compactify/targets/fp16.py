"""compact.fp16.onnx: an fp16 copy of compact.onnx (fp32 inputs and outputs), run on ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import onnx

from compactify.targets.base import Target, register_target
from compactify.targets.onnx import read_onnx_model

# Half precision keeps about 3 decimal digits: an fp16 artifact is judged with these, not the fp32 ones.
FP16_ATOL = 1e-2
FP16_RTOL = 1e-2


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

    def sniff(self, path: Path) -> bool:
        model = read_onnx_model(path)
        return model is not None and has_fp16_weights(model)

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        return FP16_ATOL, FP16_RTOL
