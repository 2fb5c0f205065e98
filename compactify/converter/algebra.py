"""Affine operators and the identities that compose them, in float64. No graph, no I/O.

Every linear layer the converter understands (conv of any kernel, stride, dilation and
groups; linear; eval BatchNorm; zero padding; average pooling; identity; channel scale
and shift) is one :class:`AffineConv`: zero-pad the input, cross-correlate with a grouped
kernel, add a bias. A linear layer is the same thing with no spatial dimensions. Each
identity below is a small pure function in the manner of DBB's ``transI_fusebn``,
``transIII_1x1_kxk`` and friends, but for the general case (any stride, dilation, groups,
asymmetric padding) and with exactness decided rather than assumed.
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
    """``y = conv(zero_pad(x, padding), weight, stride, dilation, groups) + bias``.

    ``weight`` is ``[out, in // groups, *kernel]`` and ``bias`` is ``[out]``, both float64.
    ``padding`` holds ``(before, after)`` per spatial dimension. ``ndim == 0`` is a linear
    layer acting on the last axis.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    stride: tuple[int, ...]
    padding: Pads
    dilation: tuple[int, ...]
    groups: int = 1

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
        """Reads one input position per output and pads nothing."""
        return all(s == 1 for s in self.span) and all(p == (0, 0) for p in self.padding)

    @property
    def has_bias(self) -> bool:
        return bool(torch.any(self.bias != 0))

    @property
    def symmetric_padding(self) -> bool:
        return all(b == a for b, a in self.padding)

    def output_size(self, size: Sequence[int]) -> tuple[int, ...]:
        return tuple(
            (n + b + a - sp) // s + 1
            for n, (b, a), sp, s in zip(size, self.padding, self.span, self.stride)
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
    ndim = len(padding)
    op = identity(channels, ndim)
    return replace(op, padding=tuple((int(b), int(a)) for b, a in padding))


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
    exact: bool
    reason: str = ""


def compose(first: AffineConv, second: AffineConv, in_size: Sequence[int] | None = None) -> Composed:
    """``second(first(x))`` as one operator.

    The zero padding of ``second`` is moved onto the input (scaled by ``first``'s stride).
    That is exact when every padded position ``second`` reads is one where ``first`` would
    answer zero: always for a pointwise, unpadded, bias-free ``first``; for others it depends
    on the input size ``in_size`` (spatial), checked position by position when given.
    Otherwise the result is still returned, flagged inexact with the reason, because the
    border pixels differ.
    """
    if first.ndim != second.ndim:
        raise NotContractibleError("cannot compose operators of different spatial rank")
    if first.out_channels != second.in_channels:
        raise NotContractibleError(
            f"channel mismatch: {first.out_channels} outputs feed {second.in_channels} inputs"
        )
    pads_second = any(b or a for b, a in second.padding)
    exact, reason = True, ""
    if pads_second and not (first.is_pointwise and not first.has_bias):
        if in_size is None or not _padding_reads_zeros(first, second, in_size):
            exact = False
            reason = ("zero padding after a bias (or BatchNorm shift) differs at the borders" if first.has_bias
                      else "zero padding after a spatial or padded layer differs at the borders")

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
    # Every tap of the second kernel against the whole first kernel, in one matmul.
    taps2 = math.prod(b.kernel)
    w2_taps = w2.reshape(groups, out // groups, mid // groups, taps2).permute(0, 3, 1, 2)
    blocks = torch.matmul(w2_taps, w1.reshape(groups, 1, mid // groups, -1))
    blocks = blocks.reshape(groups, taps2, out // groups, in_per, *a.kernel)
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
    op = AffineConv(weight, bias, stride, padding, dil, groups)
    return Composed(_normalise_dilation(op), exact, reason)


def _padding_reads_zeros(first: AffineConv, second: AffineConv, in_size: Sequence[int]) -> bool:
    """Whether each padded position of ``first``'s output that ``second`` reads is one where
    ``first`` answers zero whatever the input: no bias, and a window that misses the input."""
    for axis, n in enumerate(in_size):
        qb, qa = second.padding[axis]
        if not (qb or qa):
            continue
        k1, d1, s1, (pb, pa) = first.kernel[axis], first.dilation[axis], first.stride[axis], first.padding[axis]
        k2, d2, s2 = second.kernel[axis], second.dilation[axis], second.stride[axis]
        n1 = (n + pb + pa - d1 * (k1 - 1) - 1) // s1 + 1
        n2 = (n1 + qb + qa - d2 * (k2 - 1) - 1) // s2 + 1
        for m in range(n2):
            for t in range(k2):
                j = m * s2 + t * d2 - qb
                if 0 <= j < n1:
                    continue
                if first.has_bias or any(0 <= j * s1 - pb + u * d1 < n for u in range(k1)):
                    return False
    return True


def _positions(kernel: tuple[int, ...]):
    if not kernel:
        yield ()
        return
    grids = torch.cartesian_prod(*[torch.arange(k) for k in kernel]) if len(kernel) > 1 else torch.arange(kernel[0])[:, None]
    for row in grids.tolist():
        yield tuple(row)


def add(x: AffineConv, y: AffineConv) -> AffineConv:
    """The sum of two branches that read the same input: kernels aligned in input coordinates."""
    if x.ndim != y.ndim or x.out_channels != y.out_channels or x.in_channels != y.in_channels:
        raise NotContractibleError("summed branches disagree on channels or spatial rank")
    if x.stride != y.stride:
        raise NotContractibleError(f"summed branches have different strides {x.stride} and {y.stride}")
    groups = math.gcd(x.groups, y.groups)
    x, y = regroup(x, groups), regroup(y, groups)
    nd = x.ndim
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
    weight = torch.zeros(x.out_channels, x.weight.shape[1], *size, dtype=F64)
    for op, lo_op in ((x, lo_x), (y, lo_y)):
        index = (slice(None), slice(None)) + tuple(
            slice((l_op - l) // g, (l_op - l) // g + k) for l_op, l, g, k in zip(lo_op, lo, dil, op.kernel)
        )
        weight[index] += op.weight
    padding = tuple((-l, pa + (h - hx)) for l, (_, pa), h, hx in zip(lo, x.padding, hi, hi_x))
    op = AffineConv(weight, x.bias + y.bias, x.stride, padding, dil, groups)
    return _normalise_dilation(op) if nd else op


def _fit(op: AffineConv, dilation: tuple[int, ...]) -> tuple[int, ...]:
    """Per axis: the target dilation, or the operator's own where it has a single tap."""
    return tuple(d if k > 1 else od for d, k, od in zip(dilation, op.kernel, op.dilation))


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
    flat = [p for pair in reversed(op.padding) for p in pair]
    if any(flat):
        x = F.pad(x, flat)
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[op.ndim]
    return fn(x, w, b, stride=op.stride, dilation=op.dilation, groups=op.groups)
