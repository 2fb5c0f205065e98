"""Recognise the affine ONNX nodes and turn each into an engine step.

A node is affine when it is linear in its one non-constant input (or, for a sum, in each of
several) with every other input constant: Conv, Gemm, MatMul by a constant, BatchNormalization,
Add/Sub/Mul/Div by a constant (a bias, a BatchNorm written as Mul+Add), Pad in constant mode,
AveragePool that counts padded zeros (or pads nothing), Identity, Dropout at inference,
Flatten/Reshape that keep the last axis, Slice, Concat and Sum/Add/Sub of tensors.

A new op is one function here registered in ``ONNX_OPS`` under its op_type; it takes
``(node, data, ctx)`` (``data``: the names of the node's non-constant inputs) and returns the
Step, or raises NotAffine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper

from compactify.converter.engine import algebra as A
from compactify.converter.engine.graph import Dim, static
from compactify.converter.engine.op_semantics import (
    INT_MAX,
    NotAffine,
    keeps_rows,
    need,
    permuted_axes,
    reshaped_axes,
    scale_shift,
    slice_op,
)
from compactify.converter.engine.steps import Layout, Scalar, Step
from compactify.converter.frontends.onnx.constants import OnnxConstants
from compactify.errors import NotContractibleError
from compactify.registry import Registry

ONNX_OPS = Registry("ONNX op")


@dataclass
class Context:
    consts: OnnxConstants
    shapes: dict[str, tuple[Dim, ...]]  # symbolic
    opset: int

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        return self.shapes.get(name)

    def tensor(self, name: str) -> torch.Tensor | None:
        value = self.consts.get(name)
        if value is None or value.dtype.kind not in "fiu":
            return None
        return torch.from_numpy(np.asarray(value, dtype=np.float64).copy())

    def params(self, names) -> frozenset[str]:
        return frozenset(n for n in names if n in self.consts.params)


def label(node: onnx.NodeProto) -> str:
    """The node as the exporter named it (``/features/features.3/Conv``), else its output."""
    return node.name or node.output[0]


def classify(node: onnx.NodeProto, ctx: Context) -> Step | None:
    """The affine step this node computes, or None when it is not one we can fold."""
    if node.domain not in ("", "ai.onnx") or not node.output or node.output[0] in ctx.consts:
        return None
    handler = ONNX_OPS.get(node.op_type)
    if handler is None:
        return None
    data = [n for n in node.input if n and n not in ctx.consts]
    try:
        return handler(node, data, ctx)
    except NotAffine:
        return None


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _decoded(value):
    return value.decode() if isinstance(value, bytes) else value


def _one_data(node, data, index: int = 0) -> str:
    need(len(data) == 1 and node.input[index] == data[0])
    return data[0]


def _ints(ctx: Context, name: str) -> list[int] | None:
    value = ctx.consts.get(name)
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


# ---------------------------------------------------------------------------------------
# Layers


@ONNX_OPS.register("Conv")
def _conv(node, data, ctx) -> Step:
    x, weight, bias, a, shape = _weighted_layer(node, data, ctx)
    nd = weight.dim() - 2
    strides = list(a.get("strides", [1] * nd))
    dilations = list(a.get("dilations", [1] * nd))
    kernel = list(a.get("kernel_shape", weight.shape[2:]))
    padding, note = _pads(a, shape[2:], kernel, strides, dilations, label(node))
    op = A.conv(weight, bias, strides, padding, dilations, int(a.get("group", 1)))
    need(op.in_channels == static(shape[1]))
    return Step(node.output[0], "conv", (x,), op, (nd, 1), params=ctx.params(node.input[1:]), size_specific=note)


@ONNX_OPS.register("ConvTranspose")
def _conv_transpose(node, data, ctx) -> Step:
    x, weight, bias, a, shape = _weighted_layer(node, data, ctx)
    nd = weight.dim() - 2
    mode = _decoded(a.get("auto_pad", "NOTSET"))
    # output_shape and auto_pad SAME_* choose the crop from the input size: left as they are.
    need("output_shape" not in a and mode in ("NOTSET", "", "VALID"))
    pads = list(a.get("pads", [0] * (2 * nd))) if mode != "VALID" else [0] * (2 * nd)
    need(len(pads) == 2 * nd and all(p >= 0 for p in pads))
    try:
        op = A.conv_transpose(weight, bias, list(a.get("strides", [1] * nd)), [(pads[i], pads[i + nd]) for i in range(nd)],
                              list(a.get("output_padding", [0] * nd)), list(a.get("dilations", [1] * nd)),
                              int(a.get("group", 1)))
    except NotContractibleError:
        raise NotAffine from None  # a crop the algebra does not write: the node stays as it is
    need(op.in_channels == static(shape[1]))
    return Step(node.output[0], "conv_transpose", (x,), op, (nd, 1), params=ctx.params(node.input[1:]))


def _weighted_layer(node, data, ctx):
    """A Conv or ConvTranspose node's input, constant weight and bias, attributes and input shape."""
    x = _one_data(node, data)
    weight = ctx.tensor(node.input[1])
    need(weight is not None and weight.dim() >= 3)
    bias = ctx.tensor(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    need(len(node.input) <= 2 or not node.input[2] or bias is not None)
    a = _attrs(node)
    shape = ctx.shape(x)
    need(shape is not None and len(shape) == weight.dim())
    need(list(a.get("kernel_shape", weight.shape[2:])) == list(weight.shape[2:]))
    return x, weight, bias, a, shape


def _pads(a: dict, spatial, kernel, strides, dilations, where: str) -> tuple[list[tuple[int, int]], str | None]:
    """Explicit pads, or the ones auto_pad computes from the input size."""
    nd = len(kernel)
    mode = _decoded(a.get("auto_pad", "NOTSET"))
    if mode in ("NOTSET", ""):
        pads = list(a.get("pads", [0] * (2 * nd)))
        need(len(pads) == 2 * nd and all(p >= 0 for p in pads))
        return [(pads[i], pads[i + nd]) for i in range(nd)], None
    if mode == "VALID":
        return [(0, 0)] * nd, None
    need(mode in ("SAME_UPPER", "SAME_LOWER"))
    sizes = [static(d) for d in spatial]
    need(None not in sizes)
    out = []
    for n, k, s, d in zip(sizes, kernel, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if mode == "SAME_UPPER" else (big, small))
    uniform = all(s == 1 for s in strides)  # with stride 1, SAME pads the same at every size
    return out, None if uniform else f"{where}: auto_pad {mode} with stride > 1 pads by the input size"


@ONNX_OPS.register("Gemm")
def _gemm(node, data, ctx) -> Step:
    x = _one_data(node, data)
    a = _attrs(node)
    need(not a.get("transA", 0))
    b = ctx.tensor(node.input[1])
    need(b is not None and b.dim() == 2)
    weight = b if a.get("transB", 0) else b.t()
    weight = weight * float(a.get("alpha", 1.0))
    bias = None
    if len(node.input) > 2 and node.input[2]:
        c = ctx.tensor(node.input[2])
        need(c is not None and c.dim() <= 2 and c.numel() in (1, weight.shape[0]))
        need(c.dim() < 2 or c.shape[0] == 1)
        bias = (c.reshape(-1).expand(weight.shape[0]) * float(a.get("beta", 1.0))).clone()
    shape = ctx.shape(x)
    need(shape is not None and len(shape) == 2 and static(shape[1]) == weight.shape[1])
    return Step(node.output[0], "linear", (x,), A.linear(weight, bias), (0, 1), params=ctx.params(node.input[1:]))


@ONNX_OPS.register("MatMul")
def _matmul(node, data, ctx) -> Step:
    x = _one_data(node, data)
    w = ctx.tensor(node.input[1])
    need(w is not None and w.dim() == 2)
    shape = ctx.shape(x)
    need(shape is not None and len(shape) >= 2 and static(shape[-1]) == w.shape[0])
    return Step(node.output[0], "linear", (x,), A.linear(w.t()), (0, len(shape) - 1), params=ctx.params(node.input[1:]))


@ONNX_OPS.register("BatchNormalization")
def _batchnorm(node, data, ctx) -> Step:
    x = _one_data(node, data)
    a = _attrs(node)
    need(not a.get("training_mode", 0))
    need(all(not out for out in node.output[1:]) or len(node.output) == 1)
    scale, bias, mean, var = (ctx.tensor(n) for n in node.input[1:5])
    need(None not in (scale, bias, mean, var))
    shape = ctx.shape(x)
    need(shape is not None and len(shape) >= 2)
    nd = len(shape) - 2
    op = A.batchnorm(mean, var, scale, bias, float(a.get("epsilon", 1e-5)), nd)
    return Step(node.output[0], "batchnorm", (x,), op, (nd, 1), params=ctx.params(node.input[1:]))


# ---------------------------------------------------------------------------------------
# Padding, pooling, layout


@ONNX_OPS.register("Pad")
def _pad(node, data, ctx) -> Step:
    x = _one_data(node, data)
    a = _attrs(node)
    need(_decoded(a.get("mode", "constant")) == "constant")
    shape = ctx.shape(x)
    need(shape is not None and len(shape) >= 3)
    rank = len(shape)
    if ctx.opset >= 11:
        pads = _ints(ctx, node.input[1]) if len(node.input) > 1 and node.input[1] else None
        need(pads is not None)
        value = 0.0
        if len(node.input) > 2 and node.input[2]:
            v = ctx.consts.get(node.input[2])
            need(v is not None and np.asarray(v).size == 1)
            value = float(np.asarray(v).reshape(()))
        axes = _ints(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else list(range(rank))
        need(axes is not None)
    else:
        pads, value, axes = list(a.get("pads", [])), float(a.get("value", 0.0)), list(range(rank))
    axes = [ax % rank for ax in axes]
    need(len(pads) == 2 * len(axes) and all(p >= 0 for p in pads))
    per_axis = {ax: (pads[i], pads[i + len(axes)]) for i, ax in enumerate(axes)}
    need(all(per_axis.get(ax, (0, 0)) == (0, 0) for ax in (0, 1)))
    pairs = tuple(per_axis.get(ax, (0, 0)) for ax in range(2, rank))
    channels = static(shape[1])
    need(channels is not None)
    return Step(node.output[0], "pad", (x,), A.pad(channels, pairs, value), (rank - 2, 1))


@ONNX_OPS.register("AveragePool")
def _avg_pool(node, data, ctx) -> Step:
    x = _one_data(node, data)
    a = _attrs(node)
    shape = ctx.shape(x)
    need(shape is not None and len(shape) >= 3)
    nd = len(shape) - 2
    kernel = list(a["kernel_shape"])
    strides = list(a.get("strides", [1] * nd))
    need(list(a.get("dilations", [1] * nd)) == [1] * nd)
    padding, note = _pads(a, shape[2:], kernel, strides, [1] * nd, label(node))
    need(all(b == e for b, e in padding))  # the pool layer pads symmetrically
    pads = [b for b, _ in padding]
    need(a.get("count_include_pad", 0) or not any(pads))
    channels = static(shape[1])
    need(channels is not None)
    op = A.avg_pool(channels, kernel, strides, pads)
    if a.get("ceil_mode", 0):  # harmless only where it adds no partial window
        sizes = [static(d) for d in shape[2:]]
        need(None not in sizes)
        need(all((n + 2 * p - k) % s == 0 for n, p, k, s in zip(sizes, pads, kernel, strides)))
    return Step(node.output[0], "avgpool", (x,), op, (nd, 1), size_specific=note)


@ONNX_OPS.register("Identity", "Dropout")
def _identity(node, data, ctx) -> Step:
    x = _one_data(node, data)
    if node.op_type == "Dropout":
        need(len(node.output) == 1 or not node.output[1])  # the mask is read: keep the op
        if len(node.input) > 2 and node.input[2]:
            mode = ctx.consts.get(node.input[2])
            need(mode is not None and not bool(np.asarray(mode).reshape(())))
    return Step(node.output[0], "identity", (x,), Scalar())


@ONNX_OPS.register("Flatten", "Reshape", "Squeeze", "Unsqueeze")
def _reshape(node, data, ctx) -> Step:
    x = _one_data(node, data)
    family = keeps_rows(ctx.shape(x), ctx.shape(node.output[0]))
    return Step(node.output[0], "reshape", (x,), Scalar(), family)


def layout_of(node: onnx.NodeProto, ctx: Context) -> Layout | None:
    """Where a node that only moves data (Transpose, Reshape, Flatten, Squeeze, Unsqueeze,
    Identity) puts each axis of its one tensor input (engine.fold carries a per-channel affine
    past it)."""
    if node.domain not in ("", "ai.onnx") or not node.input or not node.output:
        return None
    x = node.input[0]
    in_shape, out_shape = ctx.shape(x), ctx.shape(node.output[0])
    if x in ctx.consts or in_shape is None or out_shape is None:
        return None
    try:
        if node.op_type == "Identity":
            axes = tuple(range(len(in_shape)))
        elif node.op_type == "Transpose":
            perm = _attrs(node).get("perm") or list(range(len(in_shape)))[::-1]
            axes = permuted_axes(list(perm))
        elif node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            axes = reshaped_axes(in_shape, out_shape)
        else:
            return None
    except NotAffine:
        return None
    return Layout(x, axes)


@ONNX_OPS.register("Slice")
def _slice(node, data, ctx) -> Step:
    x = _one_data(node, data)
    shape = ctx.shape(x)
    need(shape is not None)
    if ctx.opset >= 10:
        starts, ends = _ints(ctx, node.input[1]), _ints(ctx, node.input[2])
        axes = _ints(ctx, node.input[3]) if len(node.input) > 3 and node.input[3] else None
        steps = _ints(ctx, node.input[4]) if len(node.input) > 4 and node.input[4] else None
    else:
        a = _attrs(node)
        starts, ends, axes, steps = list(a["starts"]), list(a["ends"]), a.get("axes"), None
    need(starts is not None and ends is not None and len(starts) == len(ends) >= 1)
    axes = list(axes) if axes is not None else list(range(len(starts)))
    steps = list(steps) if steps is not None else [1] * len(starts)
    need(len(axes) == len(starts) == len(steps) and len({a % len(shape) for a in axes}) == len(axes))
    parts = [slice_op(shape, a, b, e if e < INT_MAX else None, st, label(node))
             for a, b, e, st in zip(axes, starts, ends, steps)]
    cuts = [p for p in parts if p[0] != "identity"]
    if not cuts:
        return Step(node.output[0], "identity", (x,), Scalar())
    kind, op, family, _ = cuts[0]
    notes = [p[3] for p in cuts if p[3]]
    sizes = [static(d) for d in shape[2:]]
    for later in cuts[1:]:  # a crop of H and W (and a channel selection) at once: one operator
        need(later[2] == family)
        composed = A.compose(op, later[1], sizes if None not in sizes else None)
        need(composed.exact)
        op, kind = composed.op, "crop" if "crop" in (kind, later[0]) else kind
        if op.ndim:
            sizes = list(op.output_size(sizes)) if None not in sizes else sizes
    return Step(node.output[0], kind, (x,), op, family, size_specific="; ".join(notes) or None)


# ---------------------------------------------------------------------------------------
# Elementwise, sums, concatenation


@ONNX_OPS.register("Add", "Sub", "Mul", "Div")
def _elementwise(node, data, ctx) -> Step:
    op_type = node.op_type
    out = node.output[0]
    need(len(node.input) == 2)
    left, right = node.input
    if left == right and left in data and op_type in ("Add",):
        return Step(out, "scale", (left,), Scalar(2.0, 0.0))
    if len(data) == 2 and op_type in ("Add", "Sub"):
        need(ctx.shape(left) is not None and ctx.shape(left) == ctx.shape(right) == ctx.shape(out))
        return Step(out, "sum", (left, right), None, None, coeffs=(1.0, -1.0 if op_type == "Sub" else 1.0))
    need(len(data) == 1)
    x = data[0]
    x_first = left == x
    value = ctx.tensor(right if x_first else left)
    need(value is not None)
    need(ctx.shape(out) is not None and ctx.shape(out) == ctx.shape(x))  # the constant must not broadcast x
    if op_type == "Mul":
        scale, shift = value, None
    elif op_type == "Div":
        need(x_first and bool(torch.all(value != 0)))
        scale, shift = 1.0 / value, None
    elif op_type == "Add":
        scale, shift = None, value
    else:  # Sub
        scale, shift = (None, -value) if x_first else (torch.tensor(-1.0, dtype=torch.float64), value)
    op, family = scale_shift(scale, shift, ctx.shape(x))
    return Step(out, "scale", (x,), op, family, params=ctx.params(node.input))


@ONNX_OPS.register("Sum")
def _sum(node, data, ctx) -> Step:
    need(len(data) == len(node.input) >= 1 and len(set(data)) == len(data))
    shapes = [ctx.shape(d) for d in data]
    need(shapes[0] is not None and all(s == shapes[0] for s in shapes) and ctx.shape(node.output[0]) == shapes[0])
    if len(data) == 1:
        return Step(node.output[0], "identity", (data[0],), Scalar())
    return Step(node.output[0], "sum", tuple(data), None, None, coeffs=(1.0,) * len(data))


@ONNX_OPS.register("Concat")
def _concat(node, data, ctx) -> Step:
    need(len(data) == len(node.input) >= 2)
    shape = ctx.shape(node.output[0])
    need(shape is not None and len(shape) >= 2)
    axis = int(_attrs(node)["axis"]) % len(shape)
    need(axis == 1 or (len(shape) == 2 and axis == 1))
    family = (len(shape) - 2, 1) if len(shape) > 2 else (0, 1)
    return Step(node.output[0], "concat", tuple(data), None, family)

