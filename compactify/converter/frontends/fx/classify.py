"""Recognise the affine ATen calls in a captured graph and turn each into an algebra step.

A node is affine when it is linear in exactly one non-constant tensor (or, for a sum, in
two) with everything else constant: conv, linear and ``x @ W`` with constant weights, eval
BatchNorm, zero padding, average pooling that counts padded zeros, dropout in eval and
other identities, scalar or per-channel scale and shift, and sums of such tensors.
Constants (weights, and anything computed from weights alone, such as ``W.t()``) are
folded in float64 first.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from compactify.converter.engine import algebra as A
from compactify.converter.engine.op_semantics import INT_MAX, NotAffine, keeps_rows, need, scale_shift, slice_op
from compactify.converter.engine.steps import Scalar, Step

aten = torch.ops.aten


class Constants:
    """Values of the nodes that do not depend on the graph's inputs, in float64."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.values: dict[fx.Node, object] = {}
        self.sources: dict[fx.Node, frozenset[str]] = {}
        self.param_names = {name for name, _ in gm.named_parameters()}
        for node in gm.graph.nodes:
            self._visit(node)

    def _visit(self, node: fx.Node) -> None:
        if node.op == "get_attr":
            value = _fetch_attr(self.gm, node.target)
            if isinstance(value, torch.Tensor):
                self.values[node] = value.detach().to(torch.float64) if value.is_floating_point() else value.detach()
                self.sources[node] = frozenset({node.target}) & self.param_names
            return
        if node.op != "call_function" or _is_random(node):
            return
        deps = node.all_input_nodes
        if any(d not in self.values for d in deps):
            return
        if not deps and node.target not in _CONSTRUCTORS:
            return
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self.values[n])
        try:
            value = node.target(*args, **kwargs)
        except Exception:  # a constant we cannot evaluate simply stays a graph node
            return
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.to(torch.float64)
        self.values[node] = value
        self.sources[node] = frozenset().union(*(self.sources.get(d, frozenset()) for d in deps))

    def __contains__(self, node) -> bool:
        return isinstance(node, fx.Node) and node in self.values

    def tensor(self, arg) -> torch.Tensor | None:
        if isinstance(arg, fx.Node):
            value = self.values.get(arg)
            return value if isinstance(value, torch.Tensor) else None
        return None

    def params_of(self, args) -> frozenset[str]:
        names: set[str] = set()
        for a in args:
            if isinstance(a, fx.Node):
                names |= self.sources.get(a, frozenset())
        return frozenset(names)


_CONSTRUCTORS = {aten.ones.default, aten.zeros.default, aten.full.default, aten.scalar_tensor.default, aten.tensor.default}


def _is_random(node: fx.Node) -> bool:
    name = str(node.target)
    return any(word in name for word in ("rand", "normal", "bernoulli", "dropout", "uniform"))


def _fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def shape_of(node: fx.Node) -> tuple | None:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def static(dim) -> int | None:
    """The dimension as an int, or None when it is symbolic (``int()`` of a SymInt would give
    the example's value, the batch of 2 the graph was traced with)."""
    if isinstance(dim, torch.SymInt):
        return dim.node.maybe_as_int()
    try:
        return int(dim)
    except (TypeError, ValueError):
        return None


def _data(node: fx.Node, consts: Constants) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if n not in consts]


_CONV = {aten.conv1d.default: 1, aten.conv2d.default: 2, aten.conv3d.default: 3}
_CONV_PAD = {aten.conv1d.padding: 1, aten.conv2d.padding: 2, aten.conv3d.padding: 3}
_AVG = {aten.avg_pool1d.default: 1, aten.avg_pool2d.default: 2, aten.avg_pool3d.default: 3}
_IDENTITY = {aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default, aten.dropout.default,
             aten.feature_dropout.default, aten.alpha_dropout.default}
# Copies that may change the memory layout, which a later view depends on (ShuffleNet's
# channel shuffle: transpose, contiguous, view).
_LAYOUT_COPIES = {aten.clone.default, aten.contiguous.default}
# Reshapes that keep the last axis are the same affine map on the linear layout (LeViT's
# Linear -> flatten -> BatchNorm1d -> reshape back).
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.unflatten.int, aten.reshape_as.default, aten.view_as.default}
def classify(node: fx.Node, consts: Constants) -> Step | None:
    """The affine step this node computes, or None when it is not one we can fold."""
    if node.op != "call_function" or node in consts:
        return None
    data = _data(node, consts)
    shape = shape_of(node)
    if shape is None:
        return None
    target = node.target
    try:
        if target in _CONV or target in _CONV_PAD or target is aten.convolution.default:
            return _conv(node, data, consts)
        if target in (aten.linear.default, aten.matmul.default, aten.mm.default, aten.addmm.default):
            return _linear(node, data, consts)
        if target is aten.batch_norm.default:
            return _batchnorm(node, data, consts)
        if target is operator.getitem and _is_decomposed_batchnorm(node):
            return _decomposed_batchnorm(node, consts)
        if target in (aten.pad.default, aten.constant_pad_nd.default):
            return _pad(node, data, consts)
        if target in _AVG:
            return _avg_pool(node, data)
        if target in _IDENTITY:
            return _identity(node, data)
        if target in _LAYOUT_COPIES:
            return _layout_copy(node, data)
        if target in _RESHAPES:
            return _reshape(node, data)
        if target is aten.slice.Tensor:
            return _slice(node, data)
        if target in (aten.sum.dim_IntList, aten.mean.dim):
            return _stacked_sum(node, consts)
        if target is aten.cat.default:
            return _concat(node, consts)
        if target in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar,
                      aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.neg.default,
                      operator.mul, operator.add, operator.sub, operator.truediv, operator.neg):
            return _elementwise(node, data, consts)
    except NotAffine:
        return None
    return None


def _arg(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _conv(node, data, consts) -> Step:
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None)
    weight = consts.tensor(node.args[1])
    need(weight is not None and weight.is_floating_point())
    bias_arg = _arg(node, 2, "bias", None)
    bias = None if bias_arg is None else consts.tensor(bias_arg)
    need(bias_arg is None or bias is not None)
    nd = weight.dim() - 2
    if node.target is aten.convolution.default:
        stride, padding, dilation, transposed, _, groups = node.args[3:9]
        need(not transposed)
    else:
        stride = _arg(node, 3, "stride", 1)
        padding = _arg(node, 4, "padding", 0)
        dilation = _arg(node, 5, "dilation", 1)
        groups = _arg(node, 6, "groups", 1)
    stride, dilation = A._tuple(stride, nd), A._tuple(dilation, nd)
    if isinstance(padding, str):
        padding = _string_padding(padding, weight.shape[2:], dilation)
    else:
        padding = A._pads(padding, nd)
    op = A.conv(weight, bias, stride, padding, dilation, groups)
    need(len(in_shape) == nd + 2)
    return Step(node, "conv", (x,), op, (nd, 1), params=consts.params_of(node.args[1:3]))


def _string_padding(mode: str, kernel, dilation) -> A.Pads:
    if mode == "valid":
        return tuple((0, 0) for _ in kernel)
    total = [d * (k - 1) for k, d in zip(kernel, dilation)]
    return tuple((t // 2, t - t // 2) for t in total)


def _linear(node, data, consts) -> Step:
    target = node.target
    need(len(data) == 1)
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None and len(in_shape) >= 2)
    if target is aten.linear.default:
        need(node.args[0] is x)
        weight = consts.tensor(node.args[1])
        bias_arg = _arg(node, 2, "bias", None)
        bias = None if bias_arg is None else consts.tensor(bias_arg)
        need(weight is not None and (bias_arg is None or bias is not None))
        params = consts.params_of(node.args[1:3])
    elif target is aten.addmm.default:
        need(node.args[1] is x and len(node.args) == 3 and not node.kwargs)
        right = consts.tensor(node.args[2])
        bias = consts.tensor(node.args[0])
        need(right is not None and bias is not None and right.dim() == 2)
        weight = right.t()
        need(bias.numel() in (1, weight.shape[0]))
        bias = bias.reshape(-1).expand(weight.shape[0])
        params = consts.params_of(node.args)
    else:  # x @ W with a constant right-hand side
        need(node.args[0] is x)
        right = consts.tensor(node.args[1])
        need(right is not None and right.dim() == 2)
        weight, bias = right.t(), None
        params = consts.params_of(node.args[1:2])
    need(weight.dim() == 2 and weight.is_floating_point())
    rank = len(in_shape)
    return Step(node, "linear", (x,), A.linear(weight, bias), (0, rank - 1), params=params)


def _batchnorm(node, data, consts) -> Step:
    x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
    need(not training and len(data) == 1 and x is data[0])
    return _bn_step(node, x, (weight, bias, mean, var), eps, consts)


def _is_decomposed_batchnorm(node: fx.Node) -> bool:
    src = node.args[0]
    return (isinstance(src, fx.Node) and src.target is aten._native_batch_norm_legit_no_training.default
            and node.args[1] == 0)


def _decomposed_batchnorm(node, consts) -> Step:
    """``getitem(_native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps), 0)``,
    the form BatchNorm takes in programs exported with core-ATen decompositions."""
    x, weight, bias, mean, var, _momentum, eps = node.args[0].args[:7]
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


def _pad(node, data, consts) -> Step:
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None)
    pads = list(node.args[1])
    if node.target is aten.pad.default:
        mode = _arg(node, 2, "mode", "constant")
        value = _arg(node, 3, "value", None)
        need(mode == "constant")
    else:
        value = _arg(node, 2, "value", 0)
    value = 0.0 if value is None else value
    need(isinstance(value, (int, float)) and not isinstance(value, bool))
    need(all(isinstance(p, int) and p >= 0 for p in pads) and len(pads) % 2 == 0)
    nd = len(in_shape) - 2
    need(0 < len(pads) // 2 <= nd)
    pairs = [(pads[2 * i], pads[2 * i + 1]) for i in range(len(pads) // 2)][::-1]
    pairs = [(0, 0)] * (nd - len(pairs)) + pairs  # F.pad lists the last dimension first
    channels = static(in_shape[1])
    need(channels is not None)
    fill, absorbs, size_specific = _border_fill(node, x, tuple(pairs), channels, consts)
    if fill is not None:
        value = fill
    return Step(node, "pad", (x,), A.pad(channels, tuple(pairs), value), (nd, 1), absorbs=absorbs,
                size_specific=size_specific)


def _border_fill(node, x, pairs, channels, consts):
    """DBB's BN-and-pad: after ``F.pad``, constants are written into the border through slice
    views (``out[:, :, 0:p, :] = values``, ``copy_`` in the graph). When the writes cover the
    whole border with one value per channel and every other reader comes after them, the
    tensor is padding with that value. Returns ``(values, absorbed nodes, size_specific)``;
    ``(None, (), None)`` when nothing is written; not affine when something else is."""
    writes, absorbed = [], []
    for user in node.users:
        chain = _write_chain(node, user)
        if chain is None:
            continue
        slices, copy = chain
        value = _constant_source(copy.args[1], consts)
        need(value is not None)
        writes.append((slices, value))
        absorbed += slices + [copy]
    if not writes:
        return None, (), None
    order = {n: i for i, n in enumerate(node.graph.nodes)}
    last_write = max(order[n] for n in absorbed)
    readers = [u for u in node.users if u not in absorbed]
    need(all(order[u] > last_write for u in readers))
    vectors = [_per_channel(value, channels, len(shape_of(x))) for _, value in writes]
    need(all(v is not None for v in vectors))
    need(all(A._same_values(vectors[0], v) for v in vectors[1:]))
    in_size = [static(d) for d in shape_of(x)[2:]]
    if None in in_size:  # symbolic sizes (--dynamic-hw): the writes must cover the border at every size
        widest = max(max(b, a) for b, a in pairs)
        sizes = [[2 * widest + 1 + k] * len(in_size) for k in range(6)]
        need(all(_fills_border(writes, size, pairs) for size in sizes))
        return vectors[0], tuple(absorbed), None
    need(_fills_border(writes, in_size, pairs))
    size_specific = None
    if not all(_fills_border(writes, [n + k for n in in_size], pairs) for k in (1, 2, 3)):
        size_specific = f"{describe(node)}: the values written into the border depend on the input size"
    return vectors[0], tuple(absorbed), size_specific


def _write_chain(base, user):
    """``user`` starts a chain of slice views of ``base`` that ends in a ``copy_`` into it:
    returns ``(slices, copy)``, or None when the chain is a read."""
    slices, node = [], user
    while node.target is aten.slice.Tensor and node.args[0] is (slices[-1] if slices else base):
        slices.append(node)
        if len(node.users) != 1:
            return None
        node = next(iter(node.users))
    if slices and node.target is aten.copy_.default and node.args[0] is slices[-1] and not node.users:
        return slices, node
    return None


def _constant_source(src, consts) -> torch.Tensor | None:
    """The constant a write broadcasts (through ``expand`` to the batch size, which is not one)."""
    while isinstance(src, fx.Node) and src not in consts and src.target in (aten.expand.default,):
        src = src.args[0]
    if isinstance(src, (int, float)) and not isinstance(src, bool):
        return torch.tensor(float(src), dtype=torch.float64)
    return consts.tensor(src)


def _per_channel(value: torch.Tensor, channels: int, rank: int) -> torch.Tensor | None:
    """A value broadcast over a ``[N, C, *spatial]`` view (``rank`` axes) as one number per
    channel, else None: it may vary along the channel axis only."""
    if value.dim() > rank:
        return None
    varying = [rank - value.dim() + i for i, d in enumerate(value.shape) if d != 1]
    if not varying:
        return value.reshape(()).expand(channels).clone()
    if varying != [1] or value.shape[1 - rank + value.dim()] != channels:
        return None
    return value.reshape(channels).clone()


def _fills_border(writes, in_size, pairs) -> bool:
    """Whether the writes, taken at this input size, cover exactly the padded border (every
    write on the full batch and channel range)."""
    padded = [n + b + a for n, (b, a) in zip(in_size, pairs)]
    covered = torch.zeros(padded, dtype=torch.bool)
    for slices, _ in writes:
        index = [slice(None)] * len(padded)
        for sl in slices:
            dim = sl.args[1] if len(sl.args) > 1 else 0
            rank = len(padded) + 2
            dim = dim % rank
            start = sl.args[2] if len(sl.args) > 2 else None
            end = sl.args[3] if len(sl.args) > 3 else None
            step = sl.args[4] if len(sl.args) > 4 else 1
            if dim < 2:
                if (start not in (None, 0)) or (end is not None and end < INT_MAX) or step != 1:
                    return False
                continue
            if not isinstance(index[dim - 2], slice) or index[dim - 2] != slice(None):
                return False  # two slices of one axis: not a pattern we read
            index[dim - 2] = slice(start, None if end is None or end >= INT_MAX else end, step)
        covered[tuple(index)] = True
    border = torch.ones(padded, dtype=torch.bool)
    border[tuple(slice(b, b + n) for n, (b, _) in zip(in_size, pairs))] = False
    return bool(torch.equal(covered, border))


def _avg_pool(node, data) -> Step:
    nd = _AVG[node.target]
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    in_shape = shape_of(x)
    need(in_shape is not None and len(in_shape) == nd + 2)
    kernel = A._tuple(node.args[1], nd)
    stride = _arg(node, 2, "stride", None) or kernel
    padding = A._tuple(_arg(node, 3, "padding", 0), nd)
    ceil_mode = _arg(node, 4, "ceil_mode", False)
    include_pad = _arg(node, 5, "count_include_pad", True)
    divisor = _arg(node, 6, "divisor_override", None) if nd > 1 else None
    need(divisor is None and (include_pad or not any(padding)))
    channels = static(in_shape[1])
    need(channels is not None)
    op = A.avg_pool(channels, kernel, A._tuple(stride, nd), padding)
    if ceil_mode:  # harmless only where it adds no partial window
        out = shape_of(node)
        need(op.output_size([static(d) for d in in_shape[2:]]) == tuple(static(d) for d in out[2:]))
    return Step(node, "avgpool", (x,), op, (nd, 1))


def _identity(node, data) -> Step:
    need(len(data) == 1 and node.args[0] is data[0])
    if node.target in (aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default):
        need(not _arg(node, 2, "train", True))
    return Step(node, "identity", (data[0],), Scalar())


def _layout_copy(node, data) -> Step:
    """``contiguous``/``clone`` is an identity only where it copies a contiguous tensor: after a
    transpose it makes the layout a later ``view`` relies on, and removing it would break that."""
    need(len(data) == 1 and node.args[0] is data[0])
    val = data[0].meta.get("val")
    need(isinstance(val, torch.Tensor))
    fmt = node.kwargs.get("memory_format", None if node.target is aten.clone.default else torch.contiguous_format)
    need(fmt in (None, torch.preserve_format, torch.contiguous_format))
    need(fmt is None or fmt is torch.preserve_format or val.is_contiguous())
    return Step(node, "identity", (data[0],), Scalar())


def _reshape(node, data) -> Step:
    """A reshape that keeps the last axis: on the linear layout (features last) it regroups
    rows and leaves every row as it is, so it sits inside a linear region."""
    x = node.args[0]
    need(isinstance(x, fx.Node) and x in data)
    others = [d for d in data if d is not x]
    need(node.target in (aten.reshape_as.default, aten.view_as.default) or not others)
    in_shape, out_shape = shape_of(x), shape_of(node)
    family = keeps_rows(None if in_shape is None else engine_dims(in_shape), None if out_shape is None else engine_dims(out_shape))
    return Step(node, "reshape", (x,), Scalar(), family)


def _slice(node, data) -> Step:
    """``x[..., a:b:s]``: see ``op_semantics.slice_op``."""
    need(len(data) == 1 and node.args[0] is data[0])
    x = data[0]
    shape = shape_of(x)
    need(shape is not None)
    dim = _arg(node, 1, "dim", 0)
    start, end, step = _arg(node, 2, "start", None), _arg(node, 3, "end", None), _arg(node, 4, "step", 1)
    kind, op, family, size_specific = slice_op(engine_dims(shape), dim, start, end, step, describe(node))
    return Step(node, kind, (x,), op, family, size_specific=size_specific)


def _stacked_sum(node, consts) -> Step:
    """``torch.stack([...]).sum(0)`` (or ``.mean(0)``): a sum of all the stacked tensors."""
    stack = node.args[0]
    need(isinstance(stack, fx.Node) and stack.target is aten.stack.default and len(stack.users) == 1)
    tensors = list(stack.args[0])
    dim = stack.args[1] if len(stack.args) > 1 else stack.kwargs.get("dim", 0)
    dims = _arg(node, 1, "dim", None)
    keepdim = _arg(node, 2, "keepdim", False)
    need(not keepdim and not node.kwargs.get("dtype") and isinstance(dims, (list, tuple)) and len(dims) == 1)
    out_rank = len(shape_of(stack))
    need(dims[0] % out_rank == dim % out_rank)
    need(all(isinstance(t, fx.Node) and t not in consts and shape_of(t) == shape_of(node) for t in tensors))
    coeff = 1.0 if node.target is aten.sum.dim_IntList else 1.0 / len(tensors)
    return Step(node, "sum", tuple(tensors), None, None, coeffs=(coeff,) * len(tensors), absorbs=(stack,))


def _concat(node, consts) -> Step:
    """Channel concatenation of tensors that a region computes from one input."""
    tensors = list(node.args[0])
    dim = _arg(node, 1, "dim", 0)
    shape = shape_of(node)
    rank = len(shape)
    dim %= rank
    need(len(tensors) >= 2 and all(isinstance(t, fx.Node) and t not in consts for t in tensors))
    need((rank > 2 and dim == 1) or (rank == 2 and dim == 1))
    family = (rank - 2, 1) if rank > 2 else (0, 1)
    return Step(node, "concat", tuple(tensors), None, family)


def _elementwise(node, data, consts) -> Step:
    target = node.target
    name = getattr(target, "__name__", str(target))
    args = list(node.args)
    if "neg" in name:
        need(len(data) == 1)
        return Step(node, "scale", (data[0],), Scalar(-1.0, 0.0))
    need(len(args) >= 2)
    alpha = node.kwargs.get("alpha", 1)
    need(isinstance(alpha, (int, float)))
    is_add = "add" in name
    is_sub = "sub" in name
    is_mul = "mul" in name
    is_div = "div" in name or "truediv" in name
    need(not (is_div and node.kwargs.get("rounding_mode")))
    if len(data) == 1 and (is_add or is_sub) and len(args) >= 2 and args[0] is args[1] is data[0]:
        factor = 1.0 + float(alpha) * (-1.0 if is_sub else 1.0)
        return Step(node, "scale", (data[0],), Scalar(factor, 0.0))
    if len(data) == 2 and (is_add or is_sub):
        need(all(isinstance(a, fx.Node) for a in args[:2]))
        coeff = float(alpha) * (-1.0 if is_sub else 1.0)
        need(shape_of(args[0]) == shape_of(args[1]) == shape_of(node))
        return Step(node, "sum", (args[0], args[1]), None, None, coeffs=(1.0, coeff))
    need(len(data) == 1)
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
    value = value.to(torch.float64)
    need(shape_of(node) == shape_of(x))  # the constant must not broadcast x
    if is_mul:
        scale, shift = value, None
    elif is_div:
        need(x_pos == 0 and bool(torch.all(value != 0)))
        scale, shift = 1.0 / value, None
    elif is_add:
        scale, shift = None, value * float(alpha) if x_pos == 0 else value
        need(x_pos == 0 or alpha == 1)
    else:  # sub
        if x_pos == 0:
            scale, shift = None, -value * float(alpha)
        else:
            scale, shift = torch.tensor(-float(alpha), dtype=torch.float64), value
    return _scale_shift_step(node, x, scale, shift, consts)


def _scale_shift_step(node, x, scale, shift, consts) -> Step:
    op, family = scale_shift(scale, shift, engine_dims(shape_of(x)))
    return Step(node, "scale", (x,), op, family, params=consts.params_of(node.args))


def engine_dims(shape) -> tuple:
    """A shape as the engine states it: ints, and names for symbolic dims."""
    return tuple(static(d) if static(d) is not None else str(d) for d in shape)


def describe(node: fx.Node) -> str:
    """The layer a node came from, as the user named it (``features.3``), else the node name."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, _ = list(stack.values())[-1]
        path = path.replace("L['self'].", "").replace("L__self___", "")
        if path:
            return f"{path} ({node.name})"
    return node.name
