"""Which ops of an int8 model ONNX Runtime runs in integer arithmetic, which stay in float, and why.

The QDQ file says what was quantized; what runs as integers is decided by ONNX Runtime's graph
optimizer, which fuses a DequantizeLinear -> op -> QuantizeLinear group into one integer kernel
(QLinearConv, QLinearAdd, ...) only where it has such a kernel for those types. So the count is
taken on the graph ONNX Runtime actually runs: the model optimized at the extended level (where
the QDQ fusions happen; the level above only changes layouts for this CPU) and read back.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import onnx
import onnxruntime as ort
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

# Integer kernels besides the QLinear* family (ONNX Runtime's contrib ops on int8/uint8 tensors).
_INTEGER_OPS = {"QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
                "QAttention", "NhwcMaxPool", "QEmbedLayerNormalization"}
_BOUNDARY_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
# Ops that move or reshape data and compute nothing: which type they carry costs nothing either way.
_DATA_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Gather", "Slice",
             "Concat", "Split", "Expand", "Cast", "ReorderInput", "ReorderOutput", "Constant"}
_QUANTIZABLE = set(QDQRegistry) | set(QLinearOpsRegistry) | {"Add", "Mul"}


def is_integer(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in _INTEGER_OPS


def optimized_graph(path: str | Path) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``path`` (extended optimizations applied)."""
    with tempfile.TemporaryDirectory(prefix="compactify-int8-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def kernel_census(path: str | Path, kept: Sequence[str] = ()) -> dict[str, Any]:
    """report.json's ``kernels``: ops by arithmetic as ONNX Runtime runs the int8 model, and for
    every op type computing in float, why."""
    nodes = optimized_graph(path).graph.node
    integer, floating, boundary = Counter(), Counter(), Counter()
    reasons: dict[str, str] = {}
    kept = set(kept)
    for node in nodes:
        op = node.op_type
        if is_integer(op):
            integer[op] += 1
        elif op in _BOUNDARY_OPS:
            boundary[op] += 1
        elif op not in _DATA_OPS:
            floating[op] += 1
            if node.name in kept:
                reasons[f"{op} {node.name}"] = "kept in float by --int8-keep"
            elif op not in _QUANTIZABLE:
                reasons.setdefault(op, "onnxruntime.quantization has no integer form for it: it runs in float "
                                       "between DequantizeLinear and QuantizeLinear")
            else:
                reasons.setdefault(op, "quantizable, but ONNX Runtime found no Q/DQ group around it to fuse "
                                       "into an integer kernel (an input or output left in float)")
    computing = sum(integer.values()) + sum(floating.values())
    return {
        "integer_ops": dict(integer.most_common()),
        "float_ops": dict(floating.most_common()),
        "quantize_dequantize_ops": dict(boundary.most_common()),
        "integer_share": sum(integer.values()) / computing if computing else None,
        "float_reasons": reasons,
        "definition": "ops of the graph ONNX Runtime's CPU provider runs (extended optimizations), data-movement "
                      "ops (Transpose, Reshape, ...) left out",
    }


def census_line(census: dict[str, Any]) -> str:
    """One line for convert's summary."""
    n_int, n_float = sum(census["integer_ops"].values()), sum(census["float_ops"].values())
    line = f"int8 kernels: {n_int} of {n_int + n_float} computing ops run in integer arithmetic"
    if census["float_ops"]:
        line += "; in float: " + ", ".join(f"{op} x{n}" for op, n in census["float_ops"].items())
    return line
