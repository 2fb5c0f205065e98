"""What an op means as an affine step, once a front-end has read its arguments: the part of
recognising an op that does not depend on the graph format. Front-ends parse (an ATen call, an
ONNX node) and call these; each raises ``NotAffine`` when the op is not an affine step here.
"""

from __future__ import annotations

from typing import Sequence

import torch

from compactify.converter.engine import algebra as A
from compactify.converter.engine.graph import Dim, static
from compactify.converter.engine.steps import Scalar

INT_MAX = 2**63 - 1


class NotAffine(Exception):
    """The op is not an affine step the engine can fold (it stays a region boundary)."""


def need(cond: bool) -> None:
    if not cond:
        raise NotAffine


def scale_shift(scale: torch.Tensor | None, shift: torch.Tensor | None,
                shape: Sequence[Dim]) -> tuple[A.AffineConv | Scalar, tuple[int, int] | None]:
    """``y = scale * x + shift`` for ``x`` of ``shape``, the constants broadcasting along at most
    one axis: the channel axis (1) of a conv layout or the last axis (features, or NHWC
    channels) of a linear layout. Returns the operator and its layout family."""
    tensors = [t for t in (scale, shift) if t is not None]
    if all(t.numel() == 1 for t in tensors):
        a = float(scale) if scale is not None else 1.0
        b = float(shift) if shift is not None else 0.0
        return Scalar(a, b), None
    rank = len(shape)
    axis = None
    for t in tensors:
        need(t.dim() <= rank)
        padded = (1,) * (rank - t.dim()) + tuple(t.shape)
        big = [i for i, s in enumerate(padded) if s != 1]
        if len(big) == 1:
            need(axis in (None, big[0]))
            axis = big[0]
        else:
            need(not big)
    need(axis is not None and axis >= 1 and (axis == 1 or axis == rank - 1))
    channels = static(shape[axis])
    need(channels is not None)
    vec = lambda t: None if t is None else t.reshape(-1).expand(channels).clone()  # noqa: E731
    family = (rank - 2, 1) if axis == 1 and rank > 2 else (0, rank - 1)
    scale_vec = vec(scale) if scale is not None else torch.ones(channels, dtype=torch.float64)
    return A.channel_affine(scale_vec, vec(shift), family[0]), family


def keeps_rows(in_shape: Sequence[Dim] | None, out_shape: Sequence[Dim] | None) -> tuple[int, int]:
    """The linear-layout family of a reshape that keeps the last axis (it regroups rows and
    leaves every row as it is, so it can sit inside a linear region)."""
    need(in_shape is not None and out_shape is not None and len(in_shape) >= 2 and len(out_shape) >= 2)
    need(static(in_shape[-1]) is not None and static(in_shape[-1]) == static(out_shape[-1]))
    need(sum(static(d) is None for d in out_shape) <= 1)  # the rewrite can say it with one -1
    return (0, len(out_shape) - 1)


def slice_op(shape: Sequence[Dim], dim: int, start: int | None, end: int | None, step: int,
             label: str) -> tuple[str, A.AffineConv | Scalar, tuple[int, int] | None, str | None]:
    """``x[..., start:end:step]`` on axis ``dim``: an identity over the whole axis, a channel
    selection on the channel axis, a crop (strided delta kernel) on a spatial axis. Returns
    ``(kind, op, family, size_specific)``; ``end`` None or >= INT_MAX runs to the end."""
    rank = len(shape)
    dim = dim % rank
    need(all(v is None or isinstance(v, int) for v in (start, end)) and isinstance(step, int) and step >= 1)
    n = static(shape[dim])
    if start in (None, 0) and (end is None or end >= INT_MAX or (n is not None and end >= n)) and step == 1:
        return "identity", Scalar(), None, None
    need(dim >= 1)
    conv_layout = rank > 2
    if n is None:  # a symbolic spatial size: only a crop counted from both ends reads the same
        need(conv_layout and dim >= 2 and (start is None or start >= 0) and (end is None or end < 0 or end >= INT_MAX))
        off_end = -end if end is not None and end < 0 else 0
        n = (start or 0) + off_end + 1  # a stand-in size with the same offsets from both ends
    a = _clamp(0 if start is None else start, n)
    e = _clamp(n if end is None else end, n)
    need(e > a)
    if dim == 1 or (not conv_layout and dim == rank - 1):
        channels = A.select_channels(n, range(a, e, step), rank - 2 if conv_layout else 0)
        family = (rank - 2, 1) if conv_layout else (0, rank - 1)
        return "select", channels, family, None
    need(conv_layout)
    channels = static(shape[1])
    need(channels is not None)
    from_end = end is None or end >= n or end < 0  # the same number of pixels off the end at any size
    if (start is None or start >= 0) and from_end:
        kernel_len = a + (n - e) + 1
        size_specific = None
    else:
        m = -(-(e - a) // step)
        kernel_len = n - (m - 1) * step
        size_specific = f"{label}: a crop measured from the start of the axis depends on the input size"
    nd = rank - 2
    axis = dim - 2
    starts, kernel, stride = [0] * nd, [1] * nd, [1] * nd
    starts[axis], kernel[axis], stride[axis] = a, kernel_len, step
    return "crop", A.crop(channels, starts, kernel, stride), (nd, 1), size_specific


def _clamp(index: int, n: int) -> int:
    if index < 0:
        index += n
    return max(0, min(index, n))


# ---------------------------------------------------------------------------------------
# Where a layout op puts each input axis


def permuted_axes(perm: Sequence[int]) -> tuple[int, ...]:
    """``axes`` of a permute (or a transpose written as one): input axis ``i`` goes whole to the
    output axis that names it."""
    rank = len(perm)
    perm = [p % rank for p in perm]
    need(sorted(perm) == list(range(rank)))
    return tuple(perm.index(i) for i in range(rank))


def transposed_perm(rank: int, a: int, b: int) -> list[int]:
    perm = list(range(rank))
    perm[a % rank], perm[b % rank] = perm[b % rank], perm[a % rank]
    return perm


def reshaped_axes(in_shape: Sequence[Dim], out_shape: Sequence[Dim]) -> tuple[int | None, ...]:
    """``axes`` of a row-major reshape (view, flatten, unflatten, squeeze): an input axis stays
    whole where some output axis has its size and the axes before both hold as many elements.
    The element counts are compared as products of the symbolic dims, so the answer holds at
    every input size, not only at the traced one."""
    out_prefix = [_product(out_shape[:j]) for j in range(len(out_shape))]
    axes = []
    for i, size in enumerate(in_shape):
        prefix = _product(in_shape[:i])
        match = [j for j, p in enumerate(out_prefix) if p == prefix and str(out_shape[j]) == str(size)]
        axes.append(match[0] if static(size) is not None and match else None)
    return tuple(axes)


def _product(dims: Sequence[Dim]) -> tuple[int, tuple[str, ...]]:
    """A product of dims as (the static part, the sorted symbols); size-1 dims drop out."""
    number, symbols = 1, []
    for d in dims:
        if static(d) is not None:
            number *= d
        else:
            symbols.append(str(d))
    return number, tuple(sorted(symbols))
