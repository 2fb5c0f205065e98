"""Affine operators and the identities that compose them, in float64. No graph, no I/O.

Every linear layer the converter understands (conv of any kernel, stride, dilation and
groups; transposed conv; linear; eval BatchNorm; zero padding; average pooling; identity;
channel scale and shift) is one :class:`AffineConv`: zero-pad the input, cross-correlate
with a grouped kernel, add a bias. A transposed conv is a stride-1 conv of its input spread
out (``in_dilation - 1`` zeros between samples), so what follows it composes as with any
conv. A linear layer is the same thing with no spatial dimensions. Each identity below is
a small pure function in the manner of DBB's ``transI_fusebn``, ``transIII_1x1_kxk`` and
friends, but for the general case (any stride, dilation, groups, asymmetric padding) and
with exactness decided rather than assumed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import reduce
from typing import Sequence

import torch
import torch.nn.functional as F

from compactify.errors import NotContractibleError

Pads = tuple[tuple[int, int], ...]
F64 = torch.float64


@dataclass(frozen=True)
class AffineConv:
    """``y = conv(pad(spread(x, in_dilation), padding, pad_value), weight, stride, dilation, groups) + bias``.

    ``weight`` is ``[out, in // groups, *kernel]`` and ``bias`` is ``[out]``, both float64.
    ``padding`` holds ``(before, after)`` per spatial dimension; the padded positions hold
    ``pad_value`` (one value per input channel; None is zero padding, the only kind a conv
    layer has). ``ndim == 0`` is a linear layer acting on the last axis.
    ``in_dilation`` (empty: none) puts ``e - 1`` zeros between neighbouring input samples
    along an axis, as a transposed conv of stride ``e`` does; ``padding`` then counts
    positions of the spread input.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, ...]
    padding: Pads
    dilation: tuple[int, ...]
    groups: int = 1
    pad_value: torch.Tensor | None = None
    in_dilation: tuple[int, ...] = ()

    @property
    def input_dilation(self) -> tuple[int, ...]:
        return self.in_dilation or (1,) * self.ndim

    @property
    def dilates_input(self) -> bool:
        return any(e > 1 for e in self.in_dilation)

    @property
    def ndim(self) -> int:
        return self.weight.dim() - 2

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:])

    @property
    def span(self) -> tuple[int, ...]:
        """Input extent one output reads, per spatial dimension."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def is_pointwise(self) -> bool:
        """Reads one input position per output, pads nothing and spreads nothing."""
        return (all(s == 1 for s in self.span) and all(p == (0, 0) for p in self.padding)
                and not self.dilates_input)

    @property
    def has_bias(self) -> bool:
        return bool(torch.any(self.bias != 0))

    @property
    def pads(self) -> bool:
        return any(b or a for b, a in self.padding)

    @property
    def pads_nonzero(self) -> bool:
        """Pads with a value other than zero (no conv layer can do that by itself)."""
        return self.pads and self.pad_value is not None and bool(torch.any(self.pad_value != 0))

    @property
    def symmetric_padding(self) -> bool:
        return all(b == a for b, a in self.padding)

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        return tuple(
            ((n - 1) * e + 1 + b + a - sp) // s + 1
            for n, e, (b, a), sp, s in zip(size, self.input_dilation, self.padding, self.span, self.stride)
        )


def _tuple(value: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * ndim
    value = tuple(int(v) for v in value)
    if len(value) == 1 and ndim > 1:
        return value * ndim
    return value


def _pads(padding: int | Sequence[int] | Pads, ndim: int) -> Pads:
    if isinstance(padding, int):
        return ((padding, padding),) * ndim
    padding = tuple(padding)
    if padding and isinstance(padding[0], tuple):
        return tuple((int(b), int(a)) for b, a in padding)
    sym = _tuple(padding, ndim)
    return tuple((p, p) for p in sym)


# ---------------------------------------------------------------------------------------
# Constructors: each layer kind as an AffineConv


def conv(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | Pads = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> AffineConv:
    weight = weight.detach().to(F64)
    nd = weight.dim() - 2
    out = weight.shape[0]
    b = torch.zeros(out, dtype=F64) if bias is None else bias.detach().to(F64).reshape(out)
    return AffineConv(weight, b, _tuple(stride, nd), _pads(padding, nd), _tuple(dilation, nd), int(groups))


def conv_transpose(
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] | Pads = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> AffineConv:
    """A transposed conv (``weight`` is ``[in, out // groups, *kernel]``) as the stride-1 conv
    it is on its spread input: kernel flipped and in/out swapped per group, padded
    ``d*(k-1) - p`` before and ``d*(k-1) - p + output_padding`` after. ``padding`` is what the
    layer crops, the same at both ends or ``(begin, end)`` per axis as ONNX writes it."""
    weight = weight.detach().to(F64)
    nd = weight.dim() - 2
    stride, dilation = _tuple(stride, nd), _tuple(dilation, nd)
    crops, output_padding = _pads(padding, nd), _tuple(output_padding, nd)
    reach = [d * (k - 1) for k, d in zip(weight.shape[2:], dilation)]
    if any(max(pair) > r for pair, r in zip(crops, reach)):
        # It would crop its spread input, which no padding can say (and no layer here writes).
        raise NotContractibleError(f"a transposed conv whose padding {crops} exceeds its kernel's reach {reach}")
    inner = tuple((r - b, r - e + o) for r, (b, e), o in zip(reach, crops, output_padding))
    op = conv(_swap_in_out(weight, groups), bias, 1, inner, dilation, groups)
    return replace(op, in_dilation=_spread(stride))


def _swap_in_out(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``[a, b // groups, *k]`` -> ``[b, a // groups, *k]`` with the taps reversed: a transposed
    conv's kernel as the conv kernel that computes it on the spread input, and back."""
    a, b_per = weight.shape[:2]
    kernel = weight.shape[2:]
    w = weight.reshape(groups, a // groups, b_per, *kernel).transpose(1, 2)
    return w.reshape(groups * b_per, a // groups, *kernel).flip(list(range(2, weight.dim()))).contiguous()


def _spread(in_dilation: Sequence[int]) -> tuple[int, ...]:
    """The field's value: empty where no axis is spread, so equal operators compare equal."""
    in_dilation = tuple(int(e) for e in in_dilation)
    return in_dilation if any(e > 1 for e in in_dilation) else ()


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> AffineConv:
    """``y = x @ weight.T + bias`` on the last axis."""
    return conv(weight, bias)


def channel_affine(scale: torch.Tensor, shift: torch.Tensor | None, ndim: int) -> AffineConv:
    """Per-channel ``y = scale * x + shift`` as a depthwise pointwise kernel."""
    scale = scale.detach().to(F64).reshape(-1)
    c = scale.numel()
    weight = scale.reshape(c, 1, *([1] * ndim))
    shift = torch.zeros(c, dtype=F64) if shift is None else shift.detach().to(F64).reshape(-1).expand(c).clone()
    return AffineConv(weight, shift, (1,) * ndim, ((0, 0),) * ndim, (1,) * ndim, c)


def identity(channels: int, ndim: int) -> AffineConv:
    return channel_affine(torch.ones(channels, dtype=F64), None, ndim)


def batchnorm(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    ndim: int,
) -> AffineConv:
    """Eval-mode BatchNorm: ``gamma * (x - mean) / sqrt(var + eps) + beta``."""
    mean = running_mean.detach().to(F64)
    inv_std = torch.rsqrt(running_var.detach().to(F64) + eps)
    gamma = torch.ones_like(mean) if weight is None else weight.detach().to(F64)
    beta = torch.zeros_like(mean) if bias is None else bias.detach().to(F64)
    scale = gamma * inv_std
    return channel_affine(scale, beta - mean * scale, ndim)


def zero_pad(channels: int, padding: Pads) -> AffineConv:
    return pad(channels, padding)


def pad(channels: int, padding: Pads, value: torch.Tensor | float | None = None) -> AffineConv:
    """Constant padding; ``value`` is a scalar or one value per channel (DBB's BN-and-pad)."""
    ndim = len(padding)
    op = identity(channels, ndim)
    if value is not None:
        value = torch.as_tensor(value, dtype=F64).reshape(-1).expand(channels).clone()
        if not bool(torch.any(value != 0)):
            value = None
    return replace(op, padding=tuple((int(b), int(a)) for b, a in padding), pad_value=value)


def crop(channels: int, starts: Sequence[int], kernel: Sequence[int], stride: Sequence[int]) -> AffineConv:
    """A strided selection ``x[..., a:b:s]`` per spatial axis: a depthwise delta kernel with its
    tap at ``start`` and a length that makes the output size come out right."""
    ndim = len(kernel)
    weight = torch.zeros(channels, 1, *kernel, dtype=F64)
    weight[(slice(None), 0) + tuple(int(a) for a in starts)] = 1.0
    return AffineConv(weight, torch.zeros(channels, dtype=F64), _tuple(tuple(stride), ndim),
                      ((0, 0),) * ndim, (1,) * ndim, channels)


def select_channels(in_channels: int, index: Sequence[int], ndim: int) -> AffineConv:
    """Output channel ``i`` is input channel ``index[i]``: a 0/1 pointwise kernel."""
    weight = torch.zeros(len(index), in_channels, *([1] * ndim), dtype=F64)
    for i, j in enumerate(index):
        weight[(i, int(j)) + (0,) * ndim] = 1.0
    return conv(weight)


def avg_pool(channels: int, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int]) -> AffineConv:
    """Average pooling that counts padded zeros (``count_include_pad=True``)."""
    kernel = tuple(int(k) for k in kernel)
    ndim = len(kernel)
    weight = torch.full((channels, 1, *kernel), 1.0 / math.prod(kernel), dtype=F64)
    return AffineConv(
        weight, torch.zeros(channels, dtype=F64), _tuple(stride, ndim), _pads(padding, ndim), (1,) * ndim, channels
    )


# ---------------------------------------------------------------------------------------
# Group structure


def dense_weight(op: AffineConv) -> torch.Tensor:
    """The kernel as ``[out, in, *kernel]`` with the zero blocks the groups imply."""
    return regroup(op, 1).weight


def regroup(op: AffineConv, groups: int) -> AffineConv:
    """The same operator written with ``groups`` groups, which must divide ``op.groups``."""
    if groups == op.groups:
        return op
    if op.groups % groups:
        raise ValueError(f"cannot write a {op.groups}-group kernel with {groups} groups")
    g_old, out, in_per = op.groups, op.out_channels, op.weight.shape[1]
    merge = g_old // groups
    out_per_old = out // g_old
    w = op.weight.reshape(groups, merge, out_per_old, in_per, *op.kernel)
    # Block j of the coarser grouping holds `merge` old blocks on its diagonal.
    new = torch.zeros(groups, merge, out_per_old, merge, in_per, *op.kernel, dtype=op.weight.dtype)
    for m in range(merge):
        new[:, m, :, m] = w[:, m]
    new = new.reshape(out, merge * in_per, *op.kernel)
    return replace(op, weight=new, groups=groups)


# ---------------------------------------------------------------------------------------
# Dilation


def redilate(op: AffineConv, dilation: Sequence[int]) -> AffineConv:
    """Write the kernel on a finer tap grid; each new dilation must divide the old one."""
    dilation = tuple(int(d) for d in dilation)
    if dilation == op.dilation:
        return op
    w = op.weight
    for axis, (old, new) in enumerate(zip(op.dilation, dilation)):
        k = w.shape[2 + axis]
        if k == 1 or old == new:
            continue
        if old % new:
            raise ValueError(f"dilation {new} does not divide {old}")
        step = old // new
        shape = list(w.shape)
        shape[2 + axis] = (k - 1) * step + 1
        grown = torch.zeros(shape, dtype=w.dtype)
        index = [slice(None)] * w.dim()
        index[2 + axis] = slice(None, None, step)
        grown[tuple(index)] = w
        w = grown
    return replace(op, weight=w, dilation=dilation)


def _tap_step(kernel: int, dilation: int) -> int:
    """The dilation that matters: a single tap has none (0 is the gcd identity)."""
    return 0 if kernel == 1 else dilation


def _normalise_dilation(op: AffineConv) -> AffineConv:
    """Single-tap axes report dilation 1 so that equal operators compare equal."""
    dil = tuple(1 if k == 1 else d for k, d in zip(op.kernel, op.dilation))
    return replace(op, dilation=dil) if dil != op.dilation else op


# ---------------------------------------------------------------------------------------
# Composition


@dataclass(frozen=True)
class Composed:
    op: AffineConv
    exact: bool  # at the input size it was composed for (at every size when none was given)
    reason: str = ""
    all_sizes: bool = True  # exact at every input size, not only the one given


def border_response(op: AffineConv) -> torch.Tensor:
    """What ``op`` answers where its whole window reads padding: the bias, plus the kernel's
    sum against the pad value when that is not zero. Per output channel."""
    if op.pad_value is None:
        return op.bias
    g, out, in_per = op.groups, op.out_channels, op.weight.shape[1]
    taps = op.weight.reshape(g, out // g, in_per, -1).sum(-1)
    u = op.pad_value.reshape(g, in_per, 1)
    return op.bias + (taps @ u).reshape(out)


def _same_values(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    """Equal up to float64 rounding (DBB computes its pad value with another formula than ours)."""
    b = torch.zeros_like(a) if b is None else b
    scale = max(float(a.abs().max()) if a.numel() else 0.0, float(b.abs().max()) if b.numel() else 0.0, 1e-300)
    return bool(torch.all((a - b).abs() <= 1e-9 * scale))


def compose(first: AffineConv, second: AffineConv, in_size: Sequence[int] | None = None) -> Composed:
    """``second(first(x))`` as one operator.

    The padding of ``second`` is moved onto the input (scaled by ``first``'s stride). That is
    exact when every padded position ``second`` reads is one where ``first`` answers the pad
    value: ``first`` must answer it to a window of padding (zero padding after a bias-free
    layer, or DBB's BN-and-pad, which writes the BatchNorm shift into the border), and each
    such window must miss the input, which for a spatial or strided ``first`` depends on the
    input size. Exactness is decided at ``in_size`` (spatial) when given, and separately for
    every input size (``all_sizes``). An inexact result is still returned, flagged with the
    reason, because only the border pixels differ.

    A ``second`` that spreads its input (a transposed conv) needs ``first`` moved past the
    spreading (:func:`_spread_through`); where that is not exact, the difference is not at
    the borders only, so it raises NotContractibleError instead.
    """
    if first.ndim != second.ndim:
        raise NotContractibleError("cannot compose operators of different spatial rank")
    if first.out_channels != second.in_channels:
        raise NotContractibleError(
            f"channel mismatch: {first.out_channels} outputs feed {second.in_channels} inputs"
        )
    if second.dilates_input:
        first = _spread_through(first, second.input_dilation)
        second = replace(second, in_dilation=())
    exact, all_sizes, reason = True, True, ""
    if second.pads:
        if not _same_values(border_response(first), second.pad_value):
            exact = all_sizes = False
            if second.pads_nonzero:
                reason = "padding with a value that the layer before does not answer at the borders"
            else:
                reason = "zero padding after a bias (or BatchNorm shift) differs at the borders"
        elif not first.is_pointwise:
            all_sizes = all(_axis_windows_miss_all_sizes(first, second, axis) for axis in range(first.ndim))
            exact = all_sizes if in_size is None else _windows_miss(first, second, in_size)
            if not exact and in_size is None:
                reason = "padding after a spatial or strided layer differs at the borders at some input sizes"
            elif not exact:
                reason = "zero padding after a spatial or padded layer differs at the borders"
            elif not all_sizes:
                reason = "padding after a spatial or strided layer is exact only at this input size"
    return Composed(_normalise_dilation(composed_operator(first, second)), exact, reason, all_sizes)


def composed_operator(first: AffineConv, second: AffineConv) -> AffineConv:
    """``second(first(x))`` as one operator, its exactness at the borders aside (``compose`` decides
    that). A per-channel scale on either side, or a depthwise layer after a pointwise one, scales
    the other side's kernel directly: the general product would first write the per-channel side
    as a dense C x C kernel and then spend C multiply-adds on every weight of the other, most of
    them against zeros (a BatchNorm after a CL chain's 2048-wide 3x3 would be a 2048 x 2048 matrix).
    Same values either way: the general product only adds exact zeros to these."""
    if _channel_scale(second):
        return _rows_scaled(first, second)
    if _channel_scale(first):
        return _columns_scaled(first, second)
    if _plain_pointwise(first) and _depthwise(second):
        return _depthwise_after_pointwise(first, second)
    return _product(first, second)


def _plain_pointwise(op: AffineConv) -> bool:
    return op.is_pointwise and all(s == 1 for s in op.stride)


def _depthwise(op: AffineConv) -> bool:
    return op.groups == op.out_channels == op.in_channels and op.weight.shape[1] == 1 and not op.dilates_input


def _channel_scale(op: AffineConv) -> bool:
    """``y = scale * x + shift`` per channel: a BatchNorm or affine, as ``channel_affine`` writes it."""
    return _plain_pointwise(op) and _depthwise(op)


def _pad_value_after(first: AffineConv, padding: Pads) -> torch.Tensor | None:
    return first.pad_value if any(b or a for b, a in padding) else None


def _rows_scaled(first: AffineConv, second: AffineConv) -> AffineConv:
    scale = second.weight.reshape(-1)
    weight = first.weight * scale.reshape(-1, *([1] * (first.weight.dim() - 1)))
    return replace(first, weight=weight, bias=first.bias * scale + second.bias,
                   pad_value=_pad_value_after(first, first.padding))


def _columns_scaled(first: AffineConv, second: AffineConv) -> AffineConv:
    groups, out, in_per = second.groups, second.out_channels, second.weight.shape[1]
    w = second.weight.reshape(groups, out // groups, in_per, -1)
    weight = (w * first.weight.reshape(groups, 1, in_per, 1)).reshape(second.weight.shape)
    bias = second.bias + (w.sum(-1) @ first.bias.reshape(groups, in_per, 1)).reshape(out)
    return replace(second, weight=weight, bias=bias, pad_value=_pad_value_after(first, second.padding),
                   in_dilation=first.in_dilation)


def _depthwise_after_pointwise(first: AffineConv, second: AffineConv) -> AffineConv:
    """Each output channel's taps times the pointwise row that made that channel."""
    bias = second.bias + second.weight.reshape(second.out_channels, -1).sum(-1) * first.bias
    return AffineConv(first.weight * second.weight, bias, second.stride, second.padding, second.dilation,
                      first.groups, _pad_value_after(first, second.padding), first.in_dilation)


def _product(first: AffineConv, second: AffineConv) -> AffineConv:
    """The general composition: every tap of ``second``'s kernel against the whole of ``first``'s."""
    groups = math.gcd(first.groups, second.groups)
    a, b = regroup(first, groups), regroup(second, groups)
    s1 = a.stride
    # Composite taps sit at s1*d2*t2 + d1*t1; keep the coarsest grid that holds them all.
    dil = tuple(
        max(1, math.gcd(_tap_step(k1, d1), _tap_step(k2, s * d2)))
        for k1, d1, k2, d2, s in zip(a.kernel, a.dilation, b.kernel, b.dilation, s1)
    )
    size = tuple(
        (s * d2 * (k2 - 1) + d1 * (k1 - 1)) // g + 1
        for k1, d1, k2, d2, s, g in zip(a.kernel, a.dilation, b.kernel, b.dilation, s1, dil)
    )
    out, mid = b.out_channels, a.out_channels
    in_per = a.weight.shape[1]
    w1 = a.weight.reshape(groups, mid // groups, in_per, *a.kernel)
    w2 = b.weight.reshape(groups, out // groups, mid // groups, *b.kernel)
    weight = torch.zeros(groups, out // groups, in_per, *size, dtype=F64)
    # Every tap of the second kernel against the whole first kernel, in one product per group with
    # the taps stacked as rows (a batch of per-tap products broadcast over the first kernel ran at
    # about half the speed of one large product, and this is most of a large conversion's planning).
    taps2 = math.prod(b.kernel)
    w2_rows = w2.reshape(groups, out // groups, mid // groups, taps2).transpose(2, 3)
    w2_rows = w2_rows.reshape(groups, (out // groups) * taps2, mid // groups)
    blocks = torch.bmm(w2_rows, w1.reshape(groups, mid // groups, -1))
    blocks = blocks.reshape(groups, out // groups, taps2, in_per, *a.kernel).transpose(1, 2)
    step = [d1 // g if k1 > 1 else 1 for d1, k1, g in zip(a.dilation, a.kernel, dil)]
    for i, t2 in enumerate(_positions(b.kernel)):
        start = [(s * d2 * t) // g for s, d2, t, g in zip(s1, b.dilation, t2, dil)]
        index = (slice(None),) * 3 + tuple(
            slice(st, st + (k - 1) * sp + 1, sp) for st, k, sp in zip(start, a.kernel, step)
        )
        weight[index] += blocks[:, i]
    weight = weight.reshape(out, in_per, *size)
    # Valid wherever the intermediate is unpadded; at padded borders the flag above says so.
    # Per group, so a depthwise second operator never becomes a dense C x C kernel.
    taps_sum = w2.reshape(groups, out // groups, mid // groups, -1).sum(-1)
    bias = b.bias + (taps_sum @ a.bias.reshape(groups, mid // groups, 1)).reshape(out)
    stride = tuple(x * y for x, y in zip(a.stride, b.stride))
    padding = tuple(
        (pa[0] + s * pb[0], pa[1] + s * pb[1]) for pa, pb, s in zip(a.padding, b.padding, s1)
    )
    return AffineConv(weight, bias, stride, padding, dil, groups, _pad_value_after(first, padding), first.in_dilation)


def _spread_through(op: AffineConv, in_dilation: tuple[int, ...]) -> AffineConv:
    """``op`` moved past the spreading that follows it: ``spread(op(x)) == op'(spread(x))``.

    Holds for a bias-free stride-1 layer with zero padding, whose kernel and padding then
    stretch by the spread (every window of ``op'`` that starts between two samples reads
    only inserted zeros, so it answers zero as the inserted position should). A bias would
    be added at the inserted positions too, and a stride would skip samples that the spread
    keeps, so both are refused: the result would differ everywhere, not only at borders."""
    if op.ndim != len(in_dilation):
        raise NotContractibleError("cannot compose operators of different spatial rank")
    if any(s > 1 for s, e in zip(op.stride, in_dilation) if e > 1):
        raise NotContractibleError("a strided layer before a transposed conv has no single-layer form")
    if op.has_bias or op.pads_nonzero:
        raise NotContractibleError("a bias (or BatchNorm shift) before a strided transposed conv would also fill "
                                   "the zeros it inserts between samples")
    return replace(
        op,
        dilation=tuple(d * e for d, e in zip(op.dilation, in_dilation)),
        padding=tuple((b * e, a * e) for (b, a), e in zip(op.padding, in_dilation)),
        in_dilation=_spread(tuple(x * e for x, e in zip(op.input_dilation, in_dilation))),
    )


def _windows_miss(first: AffineConv, second: AffineConv, in_size: Sequence[int]) -> bool:
    """At this input size: whether each padded position of ``first``'s output that ``second``
    reads is one whose window of ``first`` misses the input."""
    return all(_axis_windows_miss(first, second, axis, n) for axis, n in enumerate(in_size))


def _axis_windows_miss(first: AffineConv, second: AffineConv, axis: int, n: int) -> bool:
    qb, qa = second.padding[axis]
    if not (qb or qa):
        return True
    k1, d1, s1, (pb, pa) = first.kernel[axis], first.dilation[axis], first.stride[axis], first.padding[axis]
    k2, d2, s2 = second.kernel[axis], second.dilation[axis], second.stride[axis]
    e = first.input_dilation[axis]
    n = (n - 1) * e + 1  # the spread input's extent; its samples sit at multiples of e
    n1 = (n + pb + pa - d1 * (k1 - 1) - 1) // s1 + 1
    n2 = (n1 + qb + qa - d2 * (k2 - 1) - 1) // s2 + 1
    if n1 < 1 or n2 < 1:
        return True  # no output at this size: nothing to be wrong
    for j in list(range(-qb, 0)) + list(range(n1, n1 + qa)):
        read = any((j + qb - t * d2) % s2 == 0 and 0 <= (j + qb - t * d2) // s2 < n2 for t in range(k2))
        if not read:
            continue
        low = j * s1 - pb
        if any(0 <= low + d1 * t < n and (low + d1 * t) % e == 0 for t in range(k1)):
            return False  # a tap of the window reads an input sample
    return True


def _axis_windows_miss_all_sizes(first: AffineConv, second: AffineConv, axis: int) -> bool:
    """The same question for every input size along one axis. Past the size where the two
    borders stop interacting, the answer repeats with period ``s1 * s2`` (the right border's
    windows depend on the size modulo the strides), so a finite range of sizes decides it."""
    qb, qa = second.padding[axis]
    if not (qb or qa):
        return True
    k1, d1, s1, (pb, pa) = first.kernel[axis], first.dilation[axis], first.stride[axis], first.padding[axis]
    k2, d2, s2 = second.kernel[axis], second.dilation[axis], second.stride[axis]
    reach = d1 * (k1 - 1) + pb + pa + s1 * (d2 * (k2 - 1) + qb + qa + s2)
    return all(_axis_windows_miss(first, second, axis, n) for n in range(1, 2 * reach + 2 * s1 * s2 + 2))


def _positions(kernel: tuple[int, ...]):
    if not kernel:
        yield ()
        return
    grids = torch.cartesian_prod(*[torch.arange(k) for k in kernel]) if len(kernel) > 1 else torch.arange(kernel[0])[:, None]
    for row in grids.tolist():
        yield tuple(row)


def add(x: AffineConv, y: AffineConv) -> AffineConv:
    """The sum of two branches that read the same input: kernels aligned in input coordinates."""
    if x.out_channels != y.out_channels:
        raise NotContractibleError("summed branches disagree on channels or spatial rank")
    wx, wy, frame = _align(x, y, "summed")
    return _normalise(replace(frame, weight=wx + wy, bias=x.bias + y.bias))


def concat(x: AffineConv, y: AffineConv) -> AffineConv:
    """Branches that read the same input, concatenated along the channels (DBB's transform IV,
    Inception-style blocks): kernels aligned as for a sum, stacked along the outputs."""
    if x.groups != y.groups or x.groups > 1:  # a stack of grouped kernels is no longer grouped
        x, y = regroup(x, 1), regroup(y, 1)
    wx, wy, frame = _align(x, y, "concatenated")
    return _normalise(replace(frame, weight=torch.cat([wx, wy]), bias=torch.cat([x.bias, y.bias])))


def _normalise(op: AffineConv) -> AffineConv:
    return _normalise_dilation(op) if op.ndim else op


def _align(x: AffineConv, y: AffineConv, how: str) -> tuple[torch.Tensor, torch.Tensor, AffineConv]:
    """Both kernels on one tap grid and window, and the operator frame (stride, padding,
    dilation, groups, pad value) they then share; the frame's weight and bias are ``x``'s."""
    if x.ndim != y.ndim or x.in_channels != y.in_channels:
        raise NotContractibleError(f"{how} branches disagree on channels or spatial rank")
    if x.stride != y.stride:
        raise NotContractibleError(f"{how} branches have different strides {x.stride} and {y.stride}")
    if x.input_dilation != y.input_dilation:
        raise NotContractibleError(f"{how} branches spread their input differently (transposed conv strides "
                                   f"{x.input_dilation} and {y.input_dilation})")
    pad_value = _shared_pad_value(x, y, how)
    groups = math.gcd(x.groups, y.groups)
    x, y = regroup(x, groups), regroup(y, groups)
    lo_x = [-b for b, _ in x.padding]
    lo_y = [-b for b, _ in y.padding]
    # A tap grid both kernels and their offset fit on.
    dil = tuple(
        max(1, reduce(math.gcd, (_tap_step(kx, dx), _tap_step(ky, dy), abs(ax - ay))))
        for kx, dx, ky, dy, ax, ay in zip(x.kernel, x.dilation, y.kernel, y.dilation, lo_x, lo_y)
    )
    x, y = redilate(x, _fit(x, dil)), redilate(y, _fit(y, dil))
    lo = [min(a, b) for a, b in zip(lo_x, lo_y)]
    hi_x = [l + s - 1 for l, s in zip(lo_x, x.span)]
    hi_y = [l + s - 1 for l, s in zip(lo_y, y.span)]
    hi = [max(a, b) for a, b in zip(hi_x, hi_y)]
    size = tuple((h - l) // g + 1 for h, l, g in zip(hi, lo, dil))
    placed = []
    for op, lo_op in ((x, lo_x), (y, lo_y)):
        weight = torch.zeros(op.out_channels, op.weight.shape[1], *size, dtype=F64)
        index = (slice(None), slice(None)) + tuple(
            slice((l_op - l) // g, (l_op - l) // g + k) for l_op, l, g, k in zip(lo_op, lo, dil, op.kernel)
        )
        weight[index] = op.weight
        placed.append(weight)
    padding = tuple((-l, pa + (h - hx)) for l, (_, pa), h, hx in zip(lo, x.padding, hi, hi_x))
    pads = any(b or a for b, a in padding)
    frame = AffineConv(placed[0], x.bias, x.stride, padding, dil, groups, pad_value if pads else None, x.in_dilation)
    return placed[0], placed[1], frame


def _shared_pad_value(x: AffineConv, y: AffineConv, how: str) -> torch.Tensor | None:
    padded = [op for op in (x, y) if op.pads]
    if len(padded) == 2 and not _same_values(
        padded[0].pad_value if padded[0].pad_value is not None else torch.zeros(x.in_channels, dtype=F64),
        padded[1].pad_value,
    ):
        raise NotContractibleError(f"{how} branches pad their input with different values")
    return padded[0].pad_value if padded else None


def _fit(op: AffineConv, dilation: tuple[int, ...]) -> tuple[int, ...]:
    """Per axis: the target dilation, or the operator's own where it has a single tap."""
    return tuple(d if k > 1 else od for d, k, od in zip(dilation, op.kernel, op.dilation))


def trim(op: AffineConv) -> AffineConv:
    """Drop all-zero taps at the edges of the kernel where the padding they read can go with
    them (a crop merged into a conv leaves such taps): the same operator, cheaper."""
    weight, padding = op.weight, list(op.padding)
    for axis in range(op.ndim):
        dim, d = 2 + axis, op.dilation[axis]
        while weight.shape[dim] > 1 and padding[axis][0] >= d and not bool(weight.select(dim, 0).any()):
            weight = weight.narrow(dim, 1, weight.shape[dim] - 1)
            padding[axis] = (padding[axis][0] - d, padding[axis][1])
        while weight.shape[dim] > 1 and padding[axis][1] >= d and not bool(weight.select(dim, -1).any()):
            weight = weight.narrow(dim, 0, weight.shape[dim] - 1)
            padding[axis] = (padding[axis][0], padding[axis][1] - d)
    if weight.shape == op.weight.shape:
        return op
    padding = tuple(padding)
    pad_value = op.pad_value if any(b or a for b, a in padding) else None
    return _normalise(replace(op, weight=weight.contiguous(), padding=padding, pad_value=pad_value))


def scale(op: AffineConv, factor: float) -> AffineConv:
    return replace(op, weight=op.weight * factor, bias=op.bias * factor)


# ---------------------------------------------------------------------------------------
# Reference application (tests, approximate merges)


def apply(op: AffineConv, x: torch.Tensor) -> torch.Tensor:
    """Run the operator on ``x`` (channels on axis 1, or last for ``ndim == 0``)."""
    w = op.weight.to(x.dtype)
    b = op.bias.to(x.dtype)
    if op.ndim == 0:
        return F.linear(x, dense_weight(op).to(x.dtype), b)
    if op.dilates_input:
        x = spread(x, op.input_dilation)
    flat = [p for pair in reversed(op.padding) for p in pair]
    if any(flat):
        inside = F.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), flat)
        x = F.pad(x, flat)
        if op.pad_value is not None:
            x = x + (1 - inside) * op.pad_value.to(x.dtype).reshape(1, -1, *([1] * op.ndim))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[op.ndim]
    return fn(x, w, b, stride=op.stride, dilation=op.dilation, groups=op.groups)


def spread(x: torch.Tensor, in_dilation: Sequence[int]) -> torch.Tensor:
    """``x`` (channels on axis 1) with ``e - 1`` zeros between neighbouring samples per axis."""
    size = [(n - 1) * e + 1 for n, e in zip(x.shape[2:], in_dilation)]
    out = x.new_zeros(*x.shape[:2], *size)
    out[(slice(None), slice(None)) + tuple(slice(None, None, e) for e in in_dilation)] = x
    return out


# ---------------------------------------------------------------------------------------
# As a layer


@dataclass(frozen=True)
class TransposedLayer:
    """An operator that spreads its input, as one transposed conv layer, with a zero pad of its
    input in front (``input_pad``, per axis ``(before, after)`` in input samples) and a crop of
    its output behind (``output_crop``, per axis ``(begin, end)``); both are usually none."""

    weight: torch.Tensor  # [in, out // groups, *kernel]
    bias: torch.Tensor
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    input_pad: Pads
    output_crop: Pads


def unwritable(op: AffineConv) -> str | None:
    """Why no standard layer (conv, transposed conv, linear, behind a zero pad) computes ``op``;
    None when one does."""
    if op.pads_nonzero:
        return "pads its input with a nonzero value, which no single layer does"
    if op.dilates_input and any(s > 1 for s in op.stride):
        return "a transposed conv followed by a strided layer has no single-layer form"
    return None


def transposed_layer(op: AffineConv) -> TransposedLayer:
    """``op`` (which spreads its input) as a transposed conv layer.

    A transposed conv of stride ``e``, padding ``p`` and output padding ``o < e`` pads its
    spread input ``r - p`` before and ``r - p + o`` after (``r = d*(k-1)``), the same reach at
    both ends. Padding beyond that reach is written as whole input samples of zero padding
    (each worth ``e`` spread positions, and costing a transposed conv input sample), a shorter
    padding at one end as a crop of its output (less padding on the input of a stride-1 conv
    is the same crop of its output, and costs nothing)."""
    why = unwritable(op)
    if why or not op.dilates_input:
        raise NotContractibleError(why or "the operator spreads no input: it is a plain conv")
    input_pad, padding, output_padding, crop = [], [], [], []
    for e, (pb, pa), sp in zip(op.input_dilation, op.padding, op.span):
        reach = sp - 1
        before = max(0, -(-(pb - reach) // e))
        after = max(0, -(-(pa - reach - (e - 1)) // e))
        pb, pa = pb - before * e, pa - after * e  # now pb <= reach and pa <= reach + e - 1
        common = max(pb, pa - (e - 1))  # what the layer pads at both ends, before output padding
        out_pad = max(0, pa - common)
        input_pad.append((before, after))
        padding.append(reach - common)
        output_padding.append(out_pad)
        crop.append((common - pb, common + out_pad - pa))
    return TransposedLayer(_swap_in_out(op.weight, op.groups), op.bias, op.input_dilation, tuple(padding),
                           tuple(output_padding), op.dilation, op.groups, tuple(input_pad), tuple(crop))
