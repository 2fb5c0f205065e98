"""Recognise the affine ATen calls in a captured graph and turn each into an algebra step.

A node is affine when it is linear in exactly one non-constant tensor (or, for a sum, in
two) with everything else constant: conv, linear and ``x @ W`` with constant weights, eval
BatchNorm, zero padding, average pooling that counts padded zeros, dropout in eval and
other identities, scalar or per-channel scale and shift, and sums of such tensors.
Constants (weights, and anything computed from weights alone, such as ``W.t()``) are
folded in float64 first (``constants.Constants``).

A new op is one function here registered in ``FX_OPS`` under its ATen overloads; it takes
``(node, data, consts)`` (``data``: the node's non-constant inputs) and returns the Step, or
raises NotAffine.
"""

from __future__ import annotations

import functools
import operator
from typing import Callable

import torch
from torch import fx

from compactify.converter.engine import algebra as A
from compactify.converter.engine.op_semantics import (
    NotAffine,
    keeps_rows,
    need,
    permuted_axes,
    reshaped_axes,
    scale_shift,
    slice_op,
    transposed_perm,
)
from compactify.converter.engine.steps import Layout, Scalar, Step
from compactify.converter.frontends.fx.border_writes import border_fill
from compactify.converter.frontends.fx.constants import Constants
from compactify.converter.frontends.fx.nodes import (
    arg,
    describe,
    engine_dims,
    known_size,
    shape_of,
)
from compactify.errors import NotContractibleError
from compactify.registry import Registry

aten = torch.ops.aten

Handler = Callable[[fx.Node, list[fx.Node], Constants], Step]
FX_OPS: Registry[Handler] = Registry("fx op")


def classify(node: fx.Node, consts: Constants) -> Step | None:
    """The affine step this node computes, or None when it is not one we can fold."""
    if node.op != "call_function" or node in consts or shape_of(node) is None:
        return None
    handler = FX_OPS.get(node.target)
    if handler is None:
        return None
    try:
        return handler(node, [n for n in node.all_input_nodes if n not in consts], consts)
    except NotAffine:
        return None


# ---------------------------------------------------------------------------------------
# Layers


@FX_OPS.register(aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
                 aten.conv1d.padding, aten.conv2d.padding, aten.conv3d.padding, aten.convolution.default)
def _conv(node, data, consts) -> Step:
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None)
    weight = consts.held(node.args[1])  # shape and dtype only: the float64 copy is made when composed
    need(weight is not None and weight.is_floating_point())
    bias_arg = arg(node, 2, "bias", None)
    bias = None if bias_arg is None else consts.tensor(bias_arg)
    need(bias_arg is None or bias is not None)
    nd = weight.dim() - 2
    if node.target is aten.convolution.default:
        stride, padding, dilation, transposed, output_padding, groups = node.args[3:9]
        if transposed:
            return _transposed_step(node, x, weight, bias, (stride, padding, output_padding, groups, dilation), consts)
    else:
        stride = arg(node, 3, "stride", 1)
        padding = arg(node, 4, "padding", 0)
        dilation = arg(node, 5, "dilation", 1)
        groups = arg(node, 6, "groups", 1)
    stride, dilation = A._tuple(stride, nd), A._tuple(dilation, nd)
    if isinstance(padding, str):
        padding = _string_padding(padding, weight.shape[2:], dilation)
    else:
        padding = A._pads(padding, nd)
    need(len(in_shape) == nd + 2)
    op = functools.partial(_conv_operator, consts, node.args[1], bias, stride, padding, dilation, groups)
    return Step(node, "conv", (x,), op, (nd, 1), params=consts.params_of(node.args[1:3]))


def _conv_operator(consts, weight_node, bias, stride, padding, dilation, groups) -> A.AffineConv:
    return A.conv(consts.tensor(weight_node), bias, stride, padding, dilation, groups)


@FX_OPS.register(aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input)
def _conv_transpose(node, data, consts) -> Step:
    need(len(data) == 1 and node.args[0] is data[0])
    weight = consts.held(node.args[1])
    need(weight is not None and weight.is_floating_point())
    bias_arg = arg(node, 2, "bias", None)
    bias = None if bias_arg is None else consts.tensor(bias_arg)
    need(bias_arg is None or bias is not None)
    hyper = [arg(node, i, name, default) for i, name, default in
             ((3, "stride", 1), (4, "padding", 0), (5, "output_padding", 0), (6, "groups", 1), (7, "dilation", 1))]
    return _transposed_step(node, data[0], weight, bias, hyper, consts)


def _transposed_step(node, x, weight, bias, hyper, consts) -> Step:
    """``hyper``: stride, padding, output_padding, groups, dilation, as the op lists them."""
    stride, padding, output_padding, groups, dilation = hyper
    nd = weight.dim() - 2
    in_shape = shape_of(x)
    need(in_shape is not None and len(in_shape) == nd + 2)
    need(all(isinstance(v, int) for v in A._tuple(padding, nd) + A._tuple(output_padding, nd)))
    try:  # built now, not when composed like a conv's: whether the algebra writes it decides the step
        op = A.conv_transpose(weight, bias, stride, padding, output_padding, dilation, groups)
    except NotContractibleError:
        raise NotAffine from None  # a crop the algebra does not write: the op stays as it is
    return Step(node, "conv_transpose", (x,), op, (nd, 1), params=consts.params_of(node.args[1:3]))


def _string_padding(mode: str, kernel, dilation) -> A.Pads:
    if mode == "valid":
        return tuple((0, 0) for _ in kernel)
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return tuple((t // 2, t - t // 2) for t in total)


@FX_OPS.register(aten.linear.default, aten.matmul.default, aten.mm.default, aten.addmm.default)
def _linear(node, data, consts) -> Step:
    target = node.target
    need(len(data) == 1)
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None and len(in_shape) >= 2)
    # Shapes and dtypes from the weights as held; their float64 copies are made when composed.
    if target is aten.linear.default:
        need(node.args[0] is x)
        weight_node, transposed = node.args[1], False
        weight = consts.held(weight_node)
        bias_arg = arg(node, 2, "bias", None)
        bias = None if bias_arg is None else consts.tensor(bias_arg)
        need(weight is not None and (bias_arg is None or bias is not None))
        params = consts.params_of(node.args[1:3])
    elif target is aten.addmm.default:
        need(node.args[1] is x and len(node.args) == 3 and not node.kwargs)
        weight_node, transposed = node.args[2], True
        right = consts.held(weight_node)
        bias = consts.tensor(node.args[0])
        need(right is not None and bias is not None and right.dim() == 2)
        weight = right.t()
        need(bias.numel() in (1, weight.shape[0]))
        bias = bias.reshape(-1).expand(weight.shape[0])
        params = consts.params_of(node.args)
    else:  # x @ W with a constant right-hand side
        need(node.args[0] is x)
        weight_node, transposed = node.args[1], True
        right = consts.held(weight_node)
        need(right is not None and right.dim() == 2)
        weight, bias = right.t(), None
        params = consts.params_of(node.args[1:2])
    need(weight.dim() == 2 and weight.is_floating_point())
    rank = len(in_shape)
    op = functools.partial(_linear_operator, consts, weight_node, transposed, bias)
    return Step(node, "linear", (x,), op, (0, rank - 1), params=params)


def _linear_operator(consts, weight_node, transposed: bool, bias) -> A.AffineConv:
    weight = consts.tensor(weight_node)
    return A.linear(weight.t() if transposed else weight, bias)


@FX_OPS.register(aten.batch_norm.default)
def _batchnorm(node, data, consts) -> Step:
    x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
    need(not training and len(data) == 1 and x is data[0])
    return _bn_step(node, x, (weight, bias, mean, var), eps, consts)


@FX_OPS.register(operator.getitem)
def _decomposed_batchnorm(node, data, consts) -> Step:
    """``getitem(_native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps), 0)``,
    the form BatchNorm takes in programs exported with core-ATen decompositions."""
    src = node.args[0]
    need(isinstance(src, fx.Node) and src.target is aten._native_batch_norm_legit_no_training.default
         and node.args[1] == 0)
    x, weight, bias, mean, var, _momentum, eps = src.args[:7]
    need(isinstance(x, fx.Node) and x not in consts)
    return _bn_step(node, x, (weight, bias, mean, var), eps, consts)


def _bn_step(node, x, args, eps, consts) -> Step:
    in_shape = shape_of(x)
    need(in_shape is not None and len(in_shape) >= 2)
    tensors = [None if a is None else consts.tensor(a) for a in args]
    need(all(t is not None for t, a in zip(tensors, args) if a is not None))
    weight, bias, mean, var = tensors
    need(mean is not None and var is not None)
    nd = len(in_shape) - 2
    op = A.batchnorm(mean, var, weight, bias, float(eps), nd)
    return Step(node, "batchnorm", (x,), op, (nd, 1), params=consts.params_of(args[:2]))


# ---------------------------------------------------------------------------------------
# Padding, pooling, layout


@FX_OPS.register(aten.pad.default, aten.constant_pad_nd.default)
def _pad(node, data, consts) -> Step:
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None)
    pads = list(node.args[1])
    if node.target is aten.pad.default:
        mode = arg(node, 2, "mode", "constant")
        value = arg(node, 3, "value", None)
        need(mode == "constant")
    else:
        value = arg(node, 2, "value", 0)
    value = 0.0 if value is None else value
    need(isinstance(value, (int, float)) and not isinstance(value, bool))
    need(all(isinstance(p, int) and p >= 0 for p in pads) and len(pads) % 2 == 0)
    nd = len(in_shape) - 2
    need(0 < len(pads) // 2 <= nd)
    pairs = [(pads[2 * i], pads[2 * i + 1]) for i in range(len(pads) // 2)][::-1]
    pairs = [(0, 0)] * (nd - len(pairs)) + pairs  # F.pad lists the last dimension first
    channels = known_size(in_shape[1])
    need(channels is not None)
    fill = border_fill(node, x, tuple(pairs), channels, consts)
    if fill is None:
        return Step(node, "pad", (x,), A.pad(channels, tuple(pairs), value), (nd, 1))
    return Step(node, "pad", (x,), A.pad(channels, tuple(pairs), fill.values), (nd, 1), absorbs=fill.absorbs,
                size_specific=fill.size_specific)


_AVG_POOL_DIMS = {aten.avg_pool1d.default: 1, aten.avg_pool2d.default: 2, aten.avg_pool3d.default: 3}


@FX_OPS.register(*_AVG_POOL_DIMS)
def _avg_pool(node, data, consts) -> Step:
    nd = _AVG_POOL_DIMS[node.target]
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None and len(in_shape) == nd + 2)
    kernel = A._tuple(node.args[1], nd)
    stride = arg(node, 2, "stride", None) or kernel
    padding = A._tuple(arg(node, 3, "padding", 0), nd)
    ceil_mode = arg(node, 4, "ceil_mode", False)
    include_pad = arg(node, 5, "count_include_pad", True)
    divisor = arg(node, 6, "divisor_override", None) if nd > 1 else None
    need(divisor is None and (include_pad or not any(padding)))
    channels = known_size(in_shape[1])
    need(channels is not None)
    op = A.avg_pool(channels, kernel, A._tuple(stride, nd), padding)
    if ceil_mode:  # harmless only where it adds no partial window
        out = shape_of(node)
        need(op.output_size([known_size(d) for d in in_shape[2:]]) == tuple(known_size(d) for d in out[2:]))
    return Step(node, "avgpool", (x,), op, (nd, 1))


@FX_OPS.register(aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default)
def _identity(node, data, consts) -> Step:
    need(len(data) == 1 and node.args[0] is data[0])
    return Step(node, "identity", (data[0],), Scalar())


@FX_OPS.register(aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default)
def _dropout(node, data, consts) -> Step:
    need(not arg(node, 2, "train", True))
    return _identity(node, data, consts)


# Copies that may change the memory layout, which a later view depends on (ShuffleNet's
# channel shuffle: transpose, contiguous, view).
@FX_OPS.register(aten.clone.default, aten.contiguous.default)
def _layout_copy(node, data, consts) -> Step:
    """``contiguous``/``clone`` is an identity only where it copies a contiguous tensor: after a
    transpose it makes the layout a later ``view`` relies on, and removing it would break that."""
    need(len(data) == 1 and node.args[0] is data[0])
    val = data[0].meta.get("val")
    need(isinstance(val, torch.Tensor))
    fmt = node.kwargs.get("memory_format", None if node.target is aten.clone.default else torch.contiguous_format)
    need(fmt in (None, torch.preserve_format, torch.contiguous_format))
    need(fmt is None or fmt is torch.preserve_format or val.is_contiguous())
    return Step(node, "identity", (data[0],), Scalar())


# Reshapes that keep the last axis are the same affine map on the linear layout (LeViT's
# Linear -> flatten -> BatchNorm1d -> reshape back).
@FX_OPS.register(aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
                 aten.unflatten.int, aten.reshape_as.default, aten.view_as.default)
def _reshape(node, data, consts) -> Step:
    """A reshape that keeps the last axis: on the linear layout (features last) it regroups
    rows and leaves every row as it is, so it sits inside a linear region."""
    x = node.args[0]
    need(isinstance(x, fx.Node) and x in data)
    others = [d for d in data if d is not x]
    need(node.target in (aten.reshape_as.default, aten.view_as.default) or not others)
    in_shape, out_shape = shape_of(x), shape_of(node)
    family = keeps_rows(None if in_shape is None else engine_dims(in_shape), None if out_shape is None else engine_dims(out_shape))
    return Step(node, "reshape", (x,), Scalar(), family)


# ---------------------------------------------------------------------------------------
# Nodes that only move data: where each input axis goes (engine.fold carries a per-channel
# affine past them). Views and copies alike: the values, not the memory layout, are what count.

_RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.unflatten.int, aten.reshape_as.default, aten.view_as.default, aten.squeeze.default,
             aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default)
_COPIES = (aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default)


def layout_of(node: fx.Node, consts: Constants) -> Layout | None:
    """Where this node puts each axis of its one tensor input, if it only moves data."""
    if node.op != "call_function" or node in consts or not node.args or not isinstance(node.args[0], fx.Node):
        return None
    x = node.args[0]
    in_shape, out_shape = shape_of(x), shape_of(node)
    if x in consts or in_shape is None or out_shape is None:
        return None
    target, rank = node.target, len(in_shape)
    try:
        if target in _COPIES:
            axes = tuple(range(rank))
        elif target is aten.transpose.int:
            axes = permuted_axes(transposed_perm(rank, arg(node, 1, "dim0", 0), arg(node, 2, "dim1", 1)))
        elif target is aten.permute.default:
            axes = permuted_axes(list(arg(node, 1, "dims", ())))
        elif target is aten.t.default and rank == 2:
            axes = (1, 0)
        elif target in _RESHAPES:
            axes = reshaped_axes(engine_dims(in_shape), engine_dims(out_shape))
        else:
            return None
    except NotAffine:
        return None
    return Layout(x, axes)


@FX_OPS.register(aten.slice.Tensor)
def _slice(node, data, consts) -> Step:
    """``x[..., a:b:s]``: see ``op_semantics.slice_op``."""
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    shape = shape_of(x)
    need(shape is not None)
    dim = arg(node, 1, "dim", 0)
    start, end, step = arg(node, 2, "start", None), arg(node, 3, "end", None), arg(node, 4, "step", 1)
    kind, op, family, size_specific = slice_op(engine_dims(shape), dim, start, end, step, describe(node))
    return Step(node, kind, (x,), op, family, size_specific=size_specific)


# ---------------------------------------------------------------------------------------
# Sums, concatenation, elementwise


@FX_OPS.register(aten.sum.dim_IntList, aten.mean.dim)
def _stacked_sum(node, data, consts) -> Step:
    """``torch.stack([...]).sum(0)`` (or ``.mean(0)``): a sum of all the stacked tensors."""
    stack = node.args[0]
    need(isinstance(stack, fx.Node) and stack.target is aten.stack.default and len(stack.users) == 1)
    tensors = list(stack.args[0])
    dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    dims = arg(node, 1, "dim", None)
    keepdim = arg(node, 2, "keepdim", False)
    need(not keepdim and not node.kwargs.get("dtype") and isinstance(dims, (list, tuple)) and len(dims) == 1)
    out_rank = len(shape_of(stack))
    need(dims[0] % out_rank == dim % out_rank)
    need(all(isinstance(t, fx.Node) and t not in consts and shape_of(t) == shape_of(node) for t in tensors))
    coeff = 1.0 if node.target is aten.sum.dim_IntList else 1.0 / len(tensors)
    return Step(node, "sum", tuple(tensors), None, None, coeffs=(coeff,) * len(tensors), absorbs=(stack,))


@FX_OPS.register(aten.cat.default)
def _concat(node, data, consts) -> Step:
    """Channel concatenation of tensors that a region computes from one input."""
    tensors = list(node.args[0])
    dim = arg(node, 1, "dim", 0)
    shape = shape_of(node)
    rank = len(shape)
    dim %= rank
    need(len(tensors) >= 2 and all(isinstance(t, fx.Node) and t not in consts for t in tensors))
    need((rank > 2 and dim == 1) or (rank == 2 and dim == 1))
    family = (rank - 2, 1) if rank > 2 else (0, 1)
    return Step(node, "concat", tuple(tensors), None, family)


@FX_OPS.register(aten.neg.default, operator.neg)
def _neg(node, data, consts) -> Step:
    need(len(data) == 1)
    return Step(node, "scale", (data[0],), Scalar(-1.0, 0.0))


@FX_OPS.register(aten.add.Tensor, aten.add.Scalar, operator.add)
def _add(node, data, consts) -> Step:
    alpha = _alpha(node)
    step = _of_tensors_only(node, data, float(alpha))
    if step is not None:
        return step
    x, x_pos, value = _tensor_and_constant(node, data, consts)
    need(x_pos == 0 or alpha == 1)
    return _scale_shift_step(node, x, None, value * float(alpha) if x_pos == 0 else value, consts)


@FX_OPS.register(aten.sub.Tensor, aten.sub.Scalar, operator.sub)
def _sub(node, data, consts) -> Step:
    alpha = _alpha(node)
    step = _of_tensors_only(node, data, -float(alpha))
    if step is not None:
        return step
    x, x_pos, value = _tensor_and_constant(node, data, consts)
    if x_pos == 0:
        return _scale_shift_step(node, x, None, -value * float(alpha), consts)
    return _scale_shift_step(node, x, torch.tensor(-float(alpha), dtype=torch.float64), value, consts)


@FX_OPS.register(aten.mul.Tensor, aten.mul.Scalar, operator.mul)
def _mul(node, data, consts) -> Step:
    x, _, value = _tensor_and_constant(node, data, consts)
    return _scale_shift_step(node, x, value, None, consts)


@FX_OPS.register(aten.div.Tensor, aten.div.Scalar, operator.truediv)
def _div(node, data, consts) -> Step:
    need(not node.kwargs.get("rounding_mode"))
    x, x_pos, value = _tensor_and_constant(node, data, consts)
    need(x_pos == 0 and bool(torch.all(value != 0)))
    return _scale_shift_step(node, x, 1.0 / value, None, consts)


def _alpha(node: fx.Node):
    need(len(node.args) >= 2)
    alpha = node.kwargs.get("alpha", 1)
    need(isinstance(alpha, (int, float)))
    return alpha


def _of_tensors_only(node: fx.Node, data: list[fx.Node], coeff: float) -> Step | None:
    """``a + coeff * b`` where neither operand is a constant: ``x + x`` is a scale, two tensors
    a sum; None when one operand is a constant."""
    a, b = node.args[:2]
    if len(data) == 1 and a is b is data[0]:
        return Step(node, "scale", (data[0],), Scalar(1.0 + coeff, 0.0))
    if len(data) == 2:
        need(isinstance(a, fx.Node) and isinstance(b, fx.Node))
        need(shape_of(a) == shape_of(b) == shape_of(node))
        return Step(node, "sum", (a, b), None, None, coeffs=(1.0, coeff))
    return None


def _tensor_and_constant(node: fx.Node, data: list[fx.Node], consts: Constants) -> tuple[fx.Node, int, torch.Tensor]:
    """The one tensor operand, its position (0 or 1), and the other operand as a float64 constant."""
    args = node.args
    need(len(args) >= 2 and len(data) == 1)
    x = data[0]
    x_pos = 0 if args[0] is x else 1
    need(args[x_pos] is x)
    other = args[1 - x_pos]
    if isinstance(other, fx.Node):
        value = consts.tensor(other)
        need(value is not None)
    else:
        need(isinstance(other, (int, float)) and not isinstance(other, bool))
        value = torch.tensor(float(other), dtype=torch.float64)
    need(value.is_floating_point() or value.dtype in (torch.int64, torch.int32))
    need(shape_of(node) == shape_of(x))  # the constant must not broadcast x
    return x, x_pos, value.to(torch.float64)


def _scale_shift_step(node, x, scale, shift, consts) -> Step:
    op, family = scale_shift(scale, shift, engine_dims(shape_of(x)))
    return Step(node, "scale", (x,), op, family, params=consts.params_of(node.args))
