"""Which ops of an int8 model ONNX Runtime runs in integer arithmetic, which stay in float, and why.

The QDQ file says what was quantized; what runs as integers is decided by ONNX Runtime's graph
optimizer, which fuses a DequantizeLinear -> op -> QuantizeLinear group into one integer kernel
(QLinearConv, QLinearAdd, ...) only where it has such a kernel for those types. So the count is
taken on the graph ONNX Runtime actually runs on this CPU: the model optimized at every level
(the QDQ fusions happen at the extended level; the layout level then moves some ops to NHWC int8
kernels, a MaxPool among them) and read back.
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
    """The graph ONNX Runtime's CPU provider runs for ``path`` (every optimization level applied)."""
    with tempfile.TemporaryDirectory(prefix="compactify-int8-") as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def kernel_census(path: str | Path, kept: Sequence[str] = ()) -> dict[str, Any]:
    """report.json's ``kernels``: ops by arithmetic as ONNX Runtime runs the int8 model, and for
    every op type computing in float, why. ``kept``: the node names ``--int8-keep`` kept in float
    (named as in the QDQ file: the optimizer renames the nodes it rewrites)."""
    integer, floating, boundary = Counter(), Counter(), Counter()
    for node in optimized_graph(path).graph.node:
        op = node.op_type
        if is_integer(op):
            integer[op] += 1
        elif op in _BOUNDARY_OPS:
            boundary[op] += 1
        elif op not in _DATA_OPS:
            floating[op] += 1
    kept_by_op: dict[str, list[str]] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.name in set(kept):
            kept_by_op.setdefault(node.op_type, []).append(node.name)
    reasons = {op: _float_reason(op, n, kept_by_op.get(op, [])) for op, n in floating.items()}
    computing = sum(integer.values()) + sum(floating.values())
    return {
        "integer_ops": dict(integer.most_common()),
        "float_ops": dict(floating.most_common()),
        "quantize_dequantize_ops": dict(boundary.most_common()),
        "integer_share": sum(integer.values()) / computing if computing else None,
        "float_reasons": reasons,
        "definition": "ops of the graph ONNX Runtime's CPU provider runs here (all optimizations), data-movement "
                      "ops (Transpose, Reshape, ...) left out",
    }


def _float_reason(op: str, count: int, kept: list[str]) -> str:
    parts = [f"{len(kept)} kept in float by --int8-keep ({', '.join(kept)})"] if kept else []
    if count > len(kept):
        if op not in _QUANTIZABLE:
            parts.append("onnxruntime.quantization has no integer form for it: it runs in float between "
                         "DequantizeLinear and QuantizeLinear")
        else:
            parts.append("quantizable, but ONNX Runtime found no Q/DQ group around it to fuse into an integer "
                         "kernel (an input or output left in float)")
    return "; ".join(parts)


def census_line(census: dict[str, Any]) -> str:
    """One line for convert's summary."""
    n_int, n_float = sum(census["integer_ops"].values()), sum(census["float_ops"].values())
    line = f"int8 kernels: {n_int} of {n_int + n_float} computing ops run in integer arithmetic"
    if census["float_ops"]:
        line += "; in float: " + ", ".join(f"{op} x{n}" for op, n in census["float_ops"].items())
    return line
