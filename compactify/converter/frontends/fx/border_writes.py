"""A constant pad whose border is then overwritten through slice views, read as padding with the
written value.

Some blocks pad with zeros and then write one value per channel into every border strip
(``out[:, :, 0:p, :] = v``: ``slice`` views ending in ``copy_`` in the captured graph), because a
following unpadded conv must see the value that the preceding affine map gives a zero input
(the design notes: padding done with the bias value keeps a merged chain exact). When the writes
cover exactly the padded border with the same per-channel value and every other reader comes
after them, the tensor is ``pad(x, value)``; the writes are absorbed into that one step.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import fx

from compactify.converter.engine import algebra as A
from compactify.converter.engine.op_semantics import INT_MAX, need
from compactify.converter.frontends.fx.constants import Constants
from compactify.converter.frontends.fx.nodes import describe, known_size, shape_of

aten = torch.ops.aten


class BorderFill(NamedTuple):
    values: torch.Tensor  # one per channel, float64
    absorbs: tuple[fx.Node, ...]  # the slice views and copies the pad step stands for
    size_specific: str | None  # why the writes fill the border only at the captured size, if so


def border_fill(pad: fx.Node, x: fx.Node, pairs: tuple[tuple[int, int], ...], channels: int,
                consts: Constants) -> BorderFill | None:
    """What the writes into ``pad``'s border (``pairs`` per spatial axis of ``x``) fill it with;
    None when nothing is written into it; NotAffine when something is but it is not a border
    fill (a partial border, values varying along a spatial axis, a read before a write)."""
    writes, absorbed = [], []
    for user in pad.users:
        chain = _write_chain(pad, user)
        if chain is None:
            continue
        slices, copy = chain
        value = _constant_source(copy.args[1], consts)
        need(value is not None)
        writes.append((slices, value))
        absorbed += slices + [copy]
    if not writes:
        return None
    order = {n: i for i, n in enumerate(pad.graph.nodes)}
    last_write = max(order[n] for n in absorbed)
    readers = [u for u in pad.users if u not in absorbed]
    need(all(order[u] > last_write for u in readers))
    vectors = [_per_channel(value, channels, len(shape_of(x))) for _, value in writes]
    need(all(v is not None for v in vectors))
    need(all(A._same_values(vectors[0], v) for v in vectors[1:]))
    in_size = [known_size(d) for d in shape_of(x)[2:]]
    if None in in_size:  # symbolic sizes (--dynamic-hw): the writes must cover the border at every size
        widest = max(max(b, a) for b, a in pairs)
        sizes = [[2 * widest + 1 + k] * len(in_size) for k in range(6)]
        need(all(_fills_border(writes, size, pairs) for size in sizes))
        return BorderFill(vectors[0], tuple(absorbed), None)
    need(_fills_border(writes, in_size, pairs))
    size_specific = None
    if not all(_fills_border(writes, [n + k for n in in_size], pairs) for k in (1, 2, 3)):
        size_specific = f"{describe(pad)}: the values written into the border depend on the input size"
    return BorderFill(vectors[0], tuple(absorbed), size_specific)


def _write_chain(base: fx.Node, user: fx.Node):
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


def _constant_source(src, consts: Constants) -> torch.Tensor | None:
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
