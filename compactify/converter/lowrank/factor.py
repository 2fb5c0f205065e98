"""Low-rank forms of an affine operator and group-lasso pruning, in float64. No graph, no I/O.

A conv ``W[n, m, kh, kw]`` is a matrix in two ways, and each way gives a factored form:

- channel: ``[n, m*kh*kw]``; rank ``r`` gives ``kxk(m->r)`` then ``1x1(r->n)``.
- spatial (2-D convs): ``[m*kh, n*kw]``; rank ``r`` gives ``kh x 1 (m->r)`` then ``1 x kw (r->n)``.

A linear layer is the channel form with no kernel: ``m->r->n``. Grouped operators are factored
per group: each group's matrix is truncated to the same rank ``r`` and both factors keep the
groups, so the inner width is ``groups * r``. The singular values are split as ``sqrt(s)`` into
both factors; the first factor carries the zero padding, and the bias goes on the second.

Costs are counted by ``torch.utils.flop_counter`` on the real modules (on the meta device, so
nothing is allocated), never by hand: a factored form is worth having only when it is cheaper,
which for the channel form of a dense conv means ``r < n*m*k*k / (n + m*k*k)``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import Literal, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from compactify.converter.engine.algebra import F64, AffineConv, dense_weight, regroup
from compactify.converter.lowrank.rank_rules import LayerCandidate
from compactify.errors import NotContractibleError

Form = Literal["channel", "spatial"]
FORMS: tuple[str, ...] = ("channel", "spatial")


# ---------------------------------------------------------------------------------------
# The reshapings


def forms_for(op: AffineConv) -> tuple[str, ...]:
    """The factored forms that exist for ``op``: spatial only for 2-D convs."""
    return FORMS if op.ndim == 2 else ("channel",)


def channel_matrix(op: AffineConv) -> torch.Tensor:
    """``[groups, n/groups, (m/groups)*prod(kernel)]``: row ``o`` of group ``j`` is output
    ``j*n/groups + o``, its columns run over the group's inputs then the kernel taps."""
    g = op.groups
    return op.weight.reshape(g, op.out_channels // g, -1)


def spatial_matrix(op: AffineConv) -> torch.Tensor:
    """``[groups, (m/groups)*kh, (n/groups)*kw]`` for a 2-D conv: rows (input, kernel row),
    columns (output, kernel column), so that its rank is the width of a ``kh x 1`` then
    ``1 x kw`` pair."""
    _need_2d(op)
    g, mi = op.groups, op.weight.shape[1]
    no = op.out_channels // g
    kh, kw = op.kernel
    return op.weight.reshape(g, no, mi, kh, kw).permute(0, 2, 3, 1, 4).reshape(g, mi * kh, no * kw)


def matrix(op: AffineConv, form: str = "channel") -> torch.Tensor:
    if form == "channel":
        return channel_matrix(op)
    if form == "spatial":
        return spatial_matrix(op)
    raise ValueError(f"unknown low-rank form {form!r}; expected one of {FORMS}")


def _from_matrix(op: AffineConv, mat: torch.Tensor, form: str) -> torch.Tensor:
    """Inverse of :func:`matrix`: the kernel ``[n, m/groups, *kernel]`` of a reshaped matrix."""
    if form == "channel":
        return mat.reshape(op.weight.shape)
    g, mi = op.groups, op.weight.shape[1]
    no = op.out_channels // g
    kh, kw = op.kernel
    return mat.reshape(g, mi, kh, no, kw).permute(0, 3, 1, 2, 4).reshape(op.weight.shape)


def _need_2d(op: AffineConv) -> None:
    if op.ndim != 2:
        raise ValueError(f"the spatial form needs a 2-D conv, not an operator with {op.ndim} spatial dims")


def full_rank(op: AffineConv, form: str = "channel") -> int:
    """The largest rank the reshaping can have, per group."""
    rows, cols = matrix(op, form).shape[1:]
    return min(rows, cols)


def spectrum(op: AffineConv, form: str = "channel") -> torch.Tensor:
    """Singular values ``[groups, full_rank]`` in float64, descending in each row."""
    return torch.linalg.svdvals(matrix(op, form).to(F64))


# ---------------------------------------------------------------------------------------
# Factoring


def factor(
    op: AffineConv,
    rank: int,
    form: str = "channel",
    *,
    column_padding: Literal["first", "second"] = "first",
) -> tuple[AffineConv, AffineConv]:
    """``(first, second)`` with ``second(first(x))`` the best rank-``rank`` approximation of
    ``op`` (per group, in the Frobenius norm of the reshaping), and exactly ``op`` when its
    rank is at most ``rank``. Ranks above :func:`full_rank` are clamped to it.

    channel: ``first`` is the ``kxk`` conv ``m -> groups*rank`` with ``op``'s stride,
    dilation, padding and groups and no bias; ``second`` the ``1x1`` ``groups*rank -> n``
    with ``op``'s groups and bias. Linear operators get ``m -> groups*rank -> n``.

    spatial: ``first`` is ``kh x 1`` with the row stride and dilation, ``second`` ``1 x kw``
    with the column stride and dilation and the bias. The row padding is on ``first``. The
    column padding can sit on either factor and the result is the same: ``first`` is one
    column wide with column stride 1 and no bias, so it maps a zero column to a zero column
    and padding its input is padding its output. ``"first"`` (default) keeps every pad on the
    first factor, which :func:`algebra.compose` recognises as exact; ``"second"`` spares the
    first factor the padded columns (fewer FLOPs) but ``compose`` flags it, conservatively,
    as inexact.
    """
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    u, s, vh = torch.linalg.svd(matrix(op, form).to(F64), full_matrices=False)
    r = min(int(rank), s.shape[-1])
    root = s[:, :r].sqrt()
    left = u[:, :, :r] * root[:, None, :]  # [groups, rows, r]
    right = vh[:, :r, :] * root[:, :, None]  # [groups, r, cols]
    return _assemble(op, left, right, form, column_padding)


def truncate(op: AffineConv, rank: int, form: str = "channel") -> AffineConv:
    """``op`` with its reshaping replaced by the best rank-``rank`` approximation, as one
    dense operator (what :func:`factor` computes, written as a single kernel)."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    u, s, vh = torch.linalg.svd(matrix(op, form).to(F64), full_matrices=False)
    r = min(int(rank), s.shape[-1])
    mat = (u[:, :, :r] * s[:, None, :r]) @ vh[:, :r, :]
    return replace(op, weight=_from_matrix(op, mat, form))


def _assemble(
    op: AffineConv, left: torch.Tensor, right: torch.Tensor, form: str, column_padding: str
) -> tuple[AffineConv, AffineConv]:
    g, r = op.groups, left.shape[-1]
    n, mi, nd = op.out_channels, op.weight.shape[1], op.ndim
    no = n // g
    zeros = torch.zeros(g * r, dtype=F64)
    if form == "channel":
        w1 = right.reshape(g * r, mi, *op.kernel)
        w2 = left.reshape(g * no, r, *([1] * nd))
        first = AffineConv(w1, zeros, op.stride, op.padding, op.dilation, g)
        second = AffineConv(w2, op.bias.clone(), (1,) * nd, ((0, 0),) * nd, (1,) * nd, g)
        return first, second
    if form != "spatial":
        raise ValueError(f"unknown low-rank form {form!r}; expected one of {FORMS}")
    _need_2d(op)
    if column_padding not in ("first", "second"):
        raise ValueError(f"column_padding must be 'first' or 'second', got {column_padding!r}")
    kh, kw = op.kernel
    (sh, sw), (dh, dw), (ph, pw) = op.stride, op.dilation, op.padding
    w1 = left.permute(0, 2, 1).reshape(g * r, mi, kh, 1)
    w2 = right.reshape(g, r, no, kw).permute(0, 2, 1, 3).reshape(g * no, r, 1, kw)
    pads1, pads2 = ((ph, pw), ((0, 0), (0, 0))) if column_padding == "first" else ((ph, (0, 0)), ((0, 0), pw))
    first = AffineConv(w1, zeros, (sh, 1), pads1, (dh, 1), g)
    second = AffineConv(w2, op.bias.clone(), (1, sw), pads2, (1, dw), g)
    return first, second


# ---------------------------------------------------------------------------------------
# Modules and their cost


def as_module(op: AffineConv, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> nn.Module:
    """``op`` as ordinary torch layers: ``nn.Linear``, or ``nn.ConvNd`` behind a constant pad
    when the padding is not the same on both sides. On the meta device the weights are
    shapes only (for counting FLOPs)."""
    meta = torch.device(device).type == "meta"
    if op.ndim == 0:
        dense = regroup(op, 1)  # nn.Linear has no groups
        layer = nn.Linear(op.in_channels, op.out_channels, bias=op.has_bias, device=device, dtype=dtype)
        if not meta:
            with torch.no_grad():
                layer.weight.copy_(dense.weight)
                if layer.bias is not None:
                    layer.bias.copy_(op.bias)
        return layer
    symmetric = all(b == a for b, a in op.padding)
    conv_type = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[op.ndim]
    layer = conv_type(
        op.in_channels,
        op.out_channels,
        op.kernel,
        stride=op.stride,
        padding=tuple(b for b, _ in op.padding) if symmetric else 0,
        dilation=op.dilation,
        groups=op.groups,
        bias=op.has_bias,
        device=device,
        dtype=dtype,
    )
    if not meta:
        with torch.no_grad():
            layer.weight.copy_(op.weight)
            if layer.bias is not None:
                layer.bias.copy_(op.bias)
    if symmetric:
        return layer
    pad_type = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[op.ndim]
    flat = tuple(p for pair in reversed(op.padding) for p in pair)
    return nn.Sequential(pad_type(flat, 0.0), layer)


def module_flops(module: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass, as ``torch.utils.flop_counter`` counts them."""
    if any(t.device.type != "meta" for t in module.parameters()):
        module = copy.deepcopy(module).to("meta")  # count shapes, leave the caller's module alone
    dtype = next((t.dtype for t in module.parameters()), torch.float32)
    x = torch.empty(tuple(input_shape), device="meta", dtype=dtype)
    with FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops())


def _input_shape(op: AffineConv, in_spatial: Sequence[int]) -> tuple[int, ...]:
    """One sample: ``[1, m, *in_spatial]``; for a linear operator ``in_spatial`` are the
    leading (token) dims, ``[1, *in_spatial, m]``."""
    in_spatial = tuple(int(v) for v in in_spatial)
    if op.ndim == 0:
        return (1, *in_spatial, op.in_channels)
    if len(in_spatial) != op.ndim:
        raise ValueError(f"an operator with {op.ndim} spatial dims needs {op.ndim} input sizes, got {in_spatial}")
    return (1, op.in_channels, *in_spatial)


def dense_flops(op: AffineConv, in_spatial: Sequence[int] = ()) -> int:
    """FLOPs of ``op`` as one layer on one sample of spatial size ``in_spatial``."""
    return module_flops(as_module(op, device="meta"), _input_shape(op, in_spatial))


def _shape_only_factors(op: AffineConv, rank: int, form: str, column_padding: str) -> tuple[AffineConv, AffineConv]:
    """Factors with the right shapes and placements and zero weights: FLOPs need no SVD."""
    g = op.groups
    rows, cols = matrix(op, form).shape[1:]
    r = min(int(rank), rows, cols)
    return _assemble(
        op, torch.zeros(g, rows, r, dtype=F64), torch.zeros(g, r, cols, dtype=F64), form, column_padding
    )


def factored_flops(
    op: AffineConv,
    rank: int,
    form: str = "channel",
    in_spatial: Sequence[int] = (),
    *,
    column_padding: Literal["first", "second"] = "first",
) -> int:
    """FLOPs of ``factor(op, rank, form)`` run as two layers on one sample. It is linear in the
    rank (per group), so ``factored_flops(op, 1, ...)`` is the cost of one unit of rank."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    first, second = _shape_only_factors(op, rank, form, column_padding)
    module = nn.Sequential(as_module(first, device="meta"), as_module(second, device="meta"))
    return module_flops(module, _input_shape(op, in_spatial))


def candidate(
    name: str,
    op: AffineConv,
    form: str = "channel",
    in_spatial: Sequence[int] = (),
    *,
    column_padding: Literal["first", "second"] = "first",
) -> LayerCandidate:
    """What :func:`rank_rules.choose_ranks` needs to know about ``op`` in one form."""
    return LayerCandidate(
        name=name,
        singular_values=spectrum(op, form),
        dense_flops=dense_flops(op, in_spatial),
        flops_per_rank=factored_flops(op, 1, form, in_spatial, column_padding=column_padding),
        form=form,
    )


# ---------------------------------------------------------------------------------------
# Group lasso: units whose whole group is zero


def zero_units(op: AffineConv, tol: float = 0.0, *, ignore_bias: bool = False) -> torch.Tensor:
    """Bool mask ``[out]`` of output units whose weights (all inputs and taps) and bias have an
    L2 norm at most ``tol`` times the largest unit's norm. With ``ignore_bias`` the bias is left
    out: those units output the constant ``op.bias[o]`` (see ``fill`` in :func:`drop_inputs`)."""
    w = op.weight.reshape(op.out_channels, -1)
    sq = (w**2).sum(1)
    if not ignore_bias:
        sq = sq + op.bias**2
    norms = sq.sqrt()
    return norms <= tol * norms.max()


def _index(keep: Sequence[int] | torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.as_tensor(keep)
    if keep.dtype == torch.bool:
        if keep.numel() != size:
            raise ValueError(f"keep mask has {keep.numel()} entries for {size} channels")
        return keep.nonzero().flatten()
    idx = torch.unique(keep.long())
    if idx.numel() and (idx[0] < 0 or idx[-1] >= size):
        raise ValueError(f"keep indices must lie in [0, {size})")
    return idx


def _equal_blocks(counts: torch.Tensor) -> int:
    """The most groups, dividing ``len(counts)``, whose merged blocks keep equal counts."""
    g = counts.numel()
    for d in sorted((d for d in range(1, g + 1) if g % d == 0), reverse=True):
        sums = counts.reshape(d, g // d).sum(1)
        if torch.all(sums == sums[0]):
            return d
    return 1


def drop_outputs(op: AffineConv, keep: Sequence[int] | torch.Tensor) -> AffineConv:
    """``op`` computing only the outputs ``keep`` (indices or a bool mask), in order.
    A grouped operator keeps its groups when every group keeps as many outputs, and is
    written with fewer (coarser) groups otherwise."""
    idx = _index(keep, op.out_channels)
    if idx.numel() == 0:
        raise NotContractibleError("every output unit would be removed; the layer's output is constant")
    mask = torch.zeros(op.out_channels, dtype=torch.bool)
    mask[idx] = True
    op = regroup(op, _equal_blocks(mask.reshape(op.groups, -1).sum(1)))
    return replace(op, weight=op.weight[idx].clone(), bias=op.bias[idx].clone())


def drop_inputs(
    op: AffineConv,
    keep: Sequence[int] | torch.Tensor,
    fill: torch.Tensor | None = None,
) -> AffineConv:
    """``op`` reading only the input channels ``keep`` (indices or a bool mask).

    The dropped channels are zero unless ``fill`` (``[in]``, one constant per channel) says
    otherwise; a constant is folded into the bias, which is exact only without zero padding
    (a padded border does not carry the constant), so that case raises NotContractibleError.
    """
    idx = _index(keep, op.in_channels)
    if idx.numel() == 0:
        raise NotContractibleError("every input channel would be removed; the layer's output is constant")
    mask = torch.zeros(op.in_channels, dtype=torch.bool)
    mask[idx] = True
    bias = op.bias
    if fill is not None:
        const = torch.as_tensor(fill, dtype=F64).reshape(-1).expand(op.in_channels) * (~mask)
        if torch.any(const != 0):
            if any(b or a for b, a in op.padding):
                raise NotContractibleError(
                    "a removed channel carries a non-zero constant into a zero-padded layer; "
                    "the borders would differ"
                )
            bias = bias + torch.einsum("oi...,i->o", dense_weight(op), const)
    g = _equal_blocks(mask.reshape(op.groups, -1).sum(1))
    op = regroup(op, g)
    in_per, out_per = op.weight.shape[1], op.out_channels // g
    blocks = []
    for j in range(g):
        local = mask[j * in_per : (j + 1) * in_per].nonzero().flatten()
        blocks.append(op.weight[j * out_per : (j + 1) * out_per][:, local])
    return replace(op, weight=torch.cat(blocks).contiguous(), bias=bias.clone())


def drop_channels(op: AffineConv, keep: Sequence[int] | torch.Tensor) -> AffineConv:
    """A channel-wise operator (eval BatchNorm, channel scale, depthwise conv: one input per
    group) without the channels ``keep`` leaves out: each kept input keeps its group and the
    group's outputs (``c*mult .. c*mult + mult - 1`` for a depth multiplier ``mult``).

    For a zero input, a dropped channel would have carried ``op.bias`` of its outputs; pass
    that (through whatever nonlinearity follows) as ``fill`` to :func:`drop_inputs`."""
    if op.weight.shape[1] != 1:
        raise ValueError("drop_channels needs a channel-wise operator (one input channel per group)")
    idx = _index(keep, op.in_channels)
    if idx.numel() == 0:
        raise NotContractibleError("every channel would be removed")
    mult = op.out_channels // op.groups
    rows = (idx[:, None] * mult + torch.arange(mult)).flatten()
    return replace(op, weight=op.weight[rows].clone(), bias=op.bias[rows].clone(), groups=int(idx.numel()))


def prune_pair(
    producer: AffineConv, consumer: AffineConv, tol: float = 0.0
) -> tuple[AffineConv, AffineConv, list[int]]:
    """Remove the producer's all-zero units (weights and bias, see :func:`zero_units`) and the
    consumer's matching input channels. Exact when whatever runs between the two maps a zero
    channel to a zero channel (ReLU and friends); a BatchNorm between them belongs to the
    producer (compose them first) or goes through :func:`drop_channels`. Returns the new pair
    and the removed unit indices."""
    if producer.out_channels != consumer.in_channels:
        raise NotContractibleError(
            f"channel mismatch: {producer.out_channels} outputs feed {consumer.in_channels} inputs"
        )
    dead = zero_units(producer, tol)
    removed = dead.nonzero().flatten().tolist()
    if not removed:
        return producer, consumer, []
    return drop_outputs(producer, ~dead), drop_inputs(consumer, ~dead), removed


def break_even_rank(op: AffineConv, form: str = "channel", in_spatial: Sequence[int] = ()) -> int:
    """The largest rank, up to :func:`full_rank`, whose factored form costs fewer FLOPs than
    ``op`` (0 if none). For the channel form of a dense conv it is the largest integer below
    ``n*m*k*k / (n + m*k*k)``."""
    per = factored_flops(op, 1, form, in_spatial)
    return min(full_rank(op, form), max(0, math.ceil(dense_flops(op, in_spatial) / per) - 1))
