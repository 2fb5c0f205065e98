"""Fold a region's operator forward into every layer that reads it (Next-ViT's ``merge_pre_bn``).

Region finding stops where a tensor is read by several layers (q, k and v) or where a layout op
moves the channels to another axis (``x.flatten(2).transpose(1, 2)`` before a Linear). Two exact
identities reach across those stops:

- a per-channel affine (an eval BatchNorm) before a node that only moves data is the same
  per-channel affine after it, on the axis the channels went to, provided the node keeps that
  axis whole; and it commutes with a channel-uniform average (an average pool that pads
  nothing), whose taps sum to one for every channel alike;
- an operator read only by layers that start from it goes into each of them: ``W_i @ (A x + a)``
  is one layer per reader.

So a region whose every reader, followed through such nodes, is a layer that absorbs it is
removed and its operator becomes the ``lead`` of each reader: that reader's merged layer computes
its region of ``lead(x)``. Other per-channel affines met on the way (Next-ViT's BatchNorm after
its average pool) fold along. A fold is made only when it is exact, and only when the readers
merged cost no more FLOPs and no more parameters than the folded region and the readers as they
were planned: a BatchNorm folds into Linears that have a bias for free, a Linear into q, k and v
only when it is wide enough that three composed layers are cheaper than four.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable
from dataclasses import dataclass

import torch

from compactify.converter.engine import algebra as A
from compactify.converter.engine.cost import operator_flops, operator_params
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.plan import Decision
from compactify.converter.engine.regions import (
    Composition,
    compose_region,
    spatial_size,
    step_users,
)
from compactify.converter.engine.steps import Scalar
from compactify.errors import NotContractibleError

Node = Hashable


@dataclass
class _Pending:
    """The operator being folded, as it stands on one tensor: a per-channel affine (``scale``,
    ``shift``) on channel axis ``axis``, or any operator that has not moved (``op``)."""

    axis: int
    scale: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    op: A.AffineConv | None = None

    def as_op(self, ndim: int) -> A.AffineConv:
        return self.op if self.op is not None else A.channel_affine(self.scale, self.shift, ndim)


@dataclass
class _Fold:
    """What folding one region changes: decisions removed along with it, and the readers' new
    decisions by their index in the plan."""

    removed: list[int]
    readers: dict[int, Decision]


def fold_forward(graph: AffineGraph, decisions: list[Decision], allow_approximate: bool = False,
                 dynamic_hw: bool = False) -> list[Decision]:
    """The plan with every region folded forward that can be, exactly and at no extra cost."""
    decisions = list(decisions)
    index = {n: i for i, d in enumerate(decisions) for n in d.region.nodes}
    for i in range(len(decisions)):
        fold = _try_fold(graph, decisions, index, i, allow_approximate, dynamic_hw)
        if fold is None or not _pays(decisions, fold):
            continue
        names = tuple(d.region.name for d in fold.readers.values())
        for j in fold.removed:
            decisions[j] = _removed(decisions[j], names)
        for j, d in fold.readers.items():
            decisions[j] = d
    return decisions


def channel_affine_of(op: A.AffineConv) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(scale, shift)`` when ``op`` scales and shifts each channel on its own, else None."""
    c = op.out_channels
    if op.groups != c or op.in_channels != c or not op.is_pointwise or any(s != 1 for s in op.stride):
        return None
    return op.weight.reshape(c), op.bias


def _uniform_average_sum(op: A.AffineConv) -> float | None:
    """The sum of the taps when ``op`` filters every channel alike, on its own, with no bias and
    no padding (an average pool): a per-channel affine commutes with it. Else None."""
    c = op.out_channels
    if op.groups != c or op.in_channels != c or op.pads or op.has_bias:
        return None
    taps = op.weight.reshape(c, -1)
    if not bool(torch.all(taps == taps[:1])):
        return None
    return float(taps[0].sum())


def _try_fold(graph, decisions, index, i, allow_approximate, dynamic_hw) -> _Fold | None:
    source = decisions[i]
    comp = source.composition
    if source.kind not in ("keep", "dense") or comp is None or not comp.exact or comp.size_notes and dynamic_hw:
        return None
    if not isinstance(comp.value, A.AffineConv) or comp.family is None:
        return None
    axis = _axis(graph, source.region.exit, comp.family)
    if axis is None:
        return None
    affine = channel_affine_of(comp.value)
    if affine is not None and not _same_shape(graph, source.region):
        return None  # removed, the region would hand on a tensor of another shape (a reshape in it)
    if affine is None and not _pointwise(comp.value):
        return None  # composing a spatial kernel into its readers costs more than it saves
    start = _Pending(axis, *affine) if affine is not None else _Pending(axis, op=comp.value)
    fold = _Fold([i], {})
    leads: dict[int, _Pending] = {}
    crossed: set[int] = set()
    frontier = [(source.region.exit, start)]
    while frontier:
        node, pending = frontier.pop()
        for user in step_users(graph, node, graph.steps):
            j = index.get(user)
            if j is not None:
                if j in crossed:
                    if decisions[j].region.entry == node:
                        continue  # another read of the same tensor inside one region
                    return None
                crossed.add(j)
                step = _through_region(graph, decisions[j], node, pending)
                if step is None:
                    return None
                kind, after = step
                if kind == "reader":
                    leads[j] = pending
                else:
                    if kind == "absorbed":
                        fold.removed.append(j)
                    frontier.append((decisions[j].region.exit, after))
            elif user in graph.shape_reads and pending.op is None:
                continue  # a per-channel affine leaves the shape as it was
            elif user in graph.layouts and graph.layouts[user].data == node and pending.op is None:
                moved = graph.layouts[user].axes
                if pending.axis >= len(moved) or moved[pending.axis] is None:
                    return None
                frontier.append((user, dataclasses.replace(pending, axis=moved[pending.axis])))
            else:
                return None  # read by something that cannot take the fold: the region stays
    if start.op is not None and not _may_pay(decisions, fold, leads, start.op):
        return None
    for j, pending in leads.items():
        reader = _reader(graph, decisions[j], pending, allow_approximate, dynamic_hw)
        if reader is None:
            return None
        fold.readers[j] = reader
    return fold if fold.readers else None


def _same_shape(graph: AffineGraph, region) -> bool:
    a, b = graph.shape(region.entry), graph.shape(region.exit)
    return a is not None and b is not None and [str(d) for d in a] == [str(d) for d in b]


def _pointwise(op: A.AffineConv) -> bool:
    return op.is_pointwise and all(s == 1 for s in op.stride)


def _may_pay(decisions, fold: _Fold, leads: dict[int, _Pending], op: A.AffineConv) -> bool:
    """Before composing anything: a channel-mixing operator goes only into pointwise readers, each
    of which then reads ``op``'s inputs instead of its outputs, and so costs its FLOPs scaled by
    that ratio; the fold must not cost more than the operator and its readers as planned."""
    readers = [decisions[j] for j in leads]
    if any(d.composition is None or not _pointwise(d.composition.value) for d in readers):
        return False
    ratio = op.in_channels / op.out_channels
    after = sum(d.flops_after * ratio for d in readers)
    return after <= decisions[fold.removed[0]].flops_after + sum(d.flops_after for d in readers)


def _axis(graph: AffineGraph, node: Node, family: tuple[int, int]) -> int | None:
    """The channel axis of ``node`` under a region's layout family."""
    shape = graph.shape(node)
    if shape is None:
        return None
    nd, axis = family
    if nd > 0:
        return axis if len(shape) == nd + 2 else None
    return len(shape) - 1


def _through_region(graph, d: Decision, node: Node, pending: _Pending) -> tuple[str, _Pending | None] | None:
    """How the fold crosses the decision ``d`` that reads ``node``: it is a reader that takes it
    ("reader"), a per-channel affine that joins it ("absorbed"), or something a per-channel
    affine passes through unchanged in kind ("through": identities, uniform averages)."""
    comp = d.composition
    if d.region.entry != node or comp is None or not comp.exact:
        return None
    if d.kind == "removed":  # an identity (or a region an earlier fold removed): the fold goes on past it
        return "through", pending
    if d.kind not in ("keep", "dense") or not isinstance(comp.value, A.AffineConv) or comp.family is None:
        return None
    if _axis(graph, node, comp.family) != pending.axis:
        return None  # the fold's channels are not the axis this region computes on
    out_axis = _axis(graph, d.region.exit, comp.family)
    if pending.op is not None or d.lead is not None:
        return "reader", None
    own = channel_affine_of(comp.value)
    if own is not None and out_axis is not None and _same_shape(graph, d.region):
        scale, shift = own
        return "absorbed", _Pending(out_axis, pending.scale * scale, pending.shift * scale + shift)
    total = _uniform_average_sum(comp.value)
    if total is not None and out_axis is not None:
        return "through", _Pending(out_axis, pending.scale, pending.shift * total)
    return "reader", None


def _reader(graph, d: Decision, pending: _Pending, allow_approximate: bool, dynamic_hw: bool) -> Decision | None:
    """The reader's decision once ``pending`` is folded into it: its region composed after the
    lead, as one layer, if that is exact (or allowed approximate) everywhere it must be."""
    region, family = d.region, d.composition.family
    lead = pending.as_op(family[0])
    if d.lead is not None:
        lead = A.compose(lead, d.lead).op
    try:
        start = Composition(lead, family, True)
        comp = compose_region(region, start, spatial_size(graph, region.entry))
    except NotContractibleError:
        return None
    if isinstance(comp.value, Scalar) or (not comp.exact and not allow_approximate) or comp.value.pads_nonzero:
        return None
    if dynamic_hw and comp.size_notes:
        return None
    entry_shape = graph.example_shapes.get(region.entry)
    if entry_shape is None:
        return None
    operator = A.trim(comp.value)
    reason = "merged exactly with the layer before it folded in" if comp.exact else \
        "merged approximately (--allow-approximate) with the layer before it folded in"
    return Decision(region, "dense", reason, comp.exact, comp, operator=operator, params_before=d.params_before,
                    params_after=operator_params(operator), flops_before=d.flops_before,
                    flops_after=operator_flops(operator, entry_shape), warnings=list(d.warnings), lead=lead)


def _pays(decisions: list[Decision], fold: _Fold) -> bool:
    """Neither FLOPs nor parameters grow: the folded regions and the readers as planned, against
    the readers with the fold in them."""
    before = [decisions[j] for j in fold.removed] + [decisions[j] for j in fold.readers]
    flops = sum(d.flops_after for d in before), sum(d.flops_after for d in fold.readers.values())
    params = sum(d.params_after for d in before), sum(d.params_after for d in fold.readers.values())
    return flops[1] <= flops[0] and params[1] <= params[0]


def _removed(d: Decision, into: tuple[str, ...]) -> Decision:
    return dataclasses.replace(
        d, kind="removed", reason=f"folded into the layers that read it ({', '.join(into)})", module=None,
        operator=None, factors=None, stopped_by=None, params_after=0, flops_after=0, folded_into=into)
