"""compact.int8.onnx: the compact network quantized to int8 (QDQ), run on ONNX Runtime.

An int8 model is not judged with elementwise float tolerances: its error is measured per output
against the output's scale on held-out inputs (``tolerance`` returns None; the harness judges it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import onnx

from compactify.targets.base import Target, register_target
from compactify.targets.onnx import read_onnx_model

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def is_qdq(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is quantized with QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


@register_target
class Int8Target(Target):
    name = "onnx_int8"
    file = "compact.int8.onnx"
    suffixes = (".int8.onnx",)
    description = "int8 (QDQ) ONNX model"
    runtime = "ort"
    flag = "--int8"
    builds_from = ("onnx",)

    def sniff(self, path: Path) -> bool:
        model = read_onnx_model(path)
        return model is not None and is_qdq(model)

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        return None
