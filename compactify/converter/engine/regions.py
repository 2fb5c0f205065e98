"""Find the maximal linear regions of a captured graph and compose each into one operator.

A region runs from one entry tensor to one exit tensor through affine steps only; its
inner tensors are used nowhere else. Fan-out that rejoins inside the region (parallel
branches summed, identity shortcuts) stays inside; a tensor that is also needed outside,
or by two different exits, becomes an exit of its own (it is *materialized*), and the
steps after it start a new region.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Hashable

import torch

from compactify.converter.engine import algebra as A
from compactify.converter.engine.graph import AffineGraph, static
from compactify.converter.engine.steps import Scalar, Step
from compactify.errors import NotContractibleError

Node = Hashable


@dataclass
class Region:
    entry: Node
    exit: Node
    nodes: list[Node]  # topological order, exit last
    steps: dict[Node, Step]
    graph: AffineGraph = field(repr=False, compare=False, kw_only=True)

    @property
    def name(self) -> str:
        """The exit's layer path where it has one (``features.3``), else its node name."""
        label = self.graph.describe(self.exit)
        return label.split(" (")[0] if " (" in label else label

    @property
    def layers(self) -> list[str]:
        return [self.graph.describe(n) for n in self.nodes]

    def part(self, entry: Node, exit: Node, nodes: list[Node]) -> Region:
        """The sub-region of these nodes, from ``entry`` to ``exit``."""
        return Region(entry, exit, nodes, {n: self.steps[n] for n in nodes}, graph=self.graph)

    @property
    def ops(self) -> list[str]:
        return [self.steps[n].kind for n in self.nodes]

    @property
    def params(self) -> frozenset[str]:
        return frozenset().union(*(self.steps[n].params for n in self.nodes))


@dataclass
class Composition:
    value: A.AffineConv | Scalar
    family: tuple[int, int] | None
    exact: bool
    reasons: list[str] = field(default_factory=list)
    # Why the merged operator holds only at the traced input size; empty: at every size.
    size_notes: list[str] = field(default_factory=list)


def find_regions(graph: AffineGraph) -> list[Region]:
    steps = dict(graph.steps)
    materialized: set[Node] = set()
    while True:
        entry = _entries(graph, steps, materialized)
        if entry is None:  # a multi-entry sum was dropped from the affine set: recompute
            continue
        grew = _materialize(graph, steps, entry, materialized)
        if not grew:
            break
    regions = []
    for node in graph.nodes:
        if node in materialized and node in steps:
            regions.append(_collect(graph, node, steps, entry, materialized))
    return regions


def _entries(graph, steps, materialized) -> dict[Node, Node] | None:
    entry: dict[Node, Node] = {}
    for node in graph.nodes:
        step = steps.get(node)
        if step is None:
            continue
        sources = {entry[d] if d in steps and d not in materialized else d for d in step.data}
        if len(sources) != 1:
            del steps[node]  # sums two regions: it stays a plain add
            materialized.discard(node)
            return None
        entry[node] = sources.pop()
    return entry


def step_users(graph: AffineGraph, node: Node, steps) -> list[Node]:
    """Users as the steps see them: a node that only feeds steps reading ``node`` (decomposed
    BatchNorm's ``getitem``, the ``stack`` of a stacked sum) is looked through, and the nodes a
    step absorbs (the border writes of a BN-and-pad) are part of it."""
    found = []
    absorbed = steps[node].absorbs if node in steps else ()
    for u in graph.users.get(node, ()):
        if u in absorbed:
            continue
        live = [v for v in graph.users.get(u, ()) if graph.users.get(v) or v in steps]  # unused getitems do not count
        if u not in steps and live and all(v in steps and node in steps[v].data for v in live):
            found.extend(live)
        else:
            found.append(u)
    return found


def _materialize(graph, steps, entry, materialized) -> bool:
    grew = False
    for node in steps:
        if node not in materialized and any(u not in steps for u in step_users(graph, node, steps)):
            materialized.add(node)
            grew = True
    exits: dict[Node, set[Node]] = {}
    for node in reversed(graph.nodes):
        if node not in steps:
            continue
        if node in materialized:
            exits[node] = {node}
            continue
        reach = set()
        for u in step_users(graph, node, steps):
            reach |= exits.get(u, set())
        if len(reach) > 1:
            materialized.add(node)
            reach = {node}
            grew = True
        exits[node] = reach
    return grew


def _collect(graph, exit_node, steps, entry, materialized) -> Region:
    start = entry[exit_node]
    members = {exit_node}
    stack = [exit_node]
    while stack:
        node = stack.pop()
        for d in steps[node].data:
            if d in steps and d not in materialized and d not in members and entry[d] == start:
                members.add(d)
                stack.append(d)
    order = [n for n in graph.nodes if n in members]
    return Region(start, exit_node, order, {n: steps[n] for n in order}, graph=graph)


# ---------------------------------------------------------------------------------------
# Composition of a region into one operator


IDENTITY = Composition(Scalar(), None, True)


def compose_region(region: Region, start: Composition = IDENTITY,
                   in_size: tuple[int, ...] | None = None) -> Composition:
    """The region as one operator; with ``start``, the operator from an earlier tensor whose
    spatial size is ``in_size`` (the region's entry is then ``start`` applied to it)."""
    graph = region.graph
    values: dict[Node, Composition] = {region.entry: start}
    if start is IDENTITY:
        in_size = spatial_size(graph, region.entry)
    for node in region.nodes:
        step = region.steps[node]
        label = graph.describe(node)
        if step.kind == "sum":
            parts = [_scaled(values[d], c) for d, c in zip(step.data, step.coeffs)]
            values[node] = _fold(parts, label, _sum)
        elif step.kind == "concat":
            channels = _channels(graph, step.data[0])
            values[node] = _fold([values[d] for d in step.data], label, lambda a, b, where: _concat(a, b, where, channels))
        else:
            values[node] = extend(values[step.data[0]], step, label, in_size)
    result = values[region.exit]
    if start is IDENTITY:
        check_shape(region, result)
    return result


def _fold(parts: list[Composition], label: str, combine) -> Composition:
    result = parts[0]
    for part in parts[1:]:
        result = combine(result, part, label)
    return result


def _scaled(c: Composition, factor: float) -> Composition:
    if factor == 1.0:
        return c
    if isinstance(c.value, Scalar):
        return Composition(Scalar(c.value.a * factor, c.value.b * factor), None, c.exact, c.reasons, c.size_notes)
    return Composition(A.scale(c.value, factor), c.family, c.exact, c.reasons, c.size_notes)


def _family(a, b, label: str) -> tuple[int, int] | None:
    """The layout both sides agree on. Linear layouts (features on the last axis) agree
    whatever their rank, since a reshape that keeps the last axis may sit between them."""
    if a is not None and b is not None and a != b and not (a[0] == 0 and b[0] == 0):
        raise NotContractibleError(f"{label} mixes channel layouts {a} and {b}")
    return b if b is not None else a


def _merged_notes(*parts: Composition, extra: str | None = None) -> tuple[list[str], list[str]]:
    reasons, notes = [], []
    for p in parts:
        reasons += [r for r in p.reasons if r not in reasons]
        notes += [n for n in p.size_notes if n not in notes]
    if extra and extra not in notes:
        notes.append(extra)
    return reasons, notes


def _as_conv(value: Scalar, channels: int, ndim: int) -> A.AffineConv:
    ones = torch.ones(channels, dtype=torch.float64)
    return A.channel_affine(ones * value.a, ones * value.b, ndim)


def spatial_size(graph: AffineGraph, node: Node) -> tuple[int, ...] | None:
    """The static spatial sizes of a conv-layout tensor (channels on axis 1), else None."""
    shape = graph.shape(node)
    if shape is None or len(shape) < 3:
        return None
    dims = tuple(static(d) for d in shape[2:])
    return None if None in dims else dims


def extend(prev: Composition, step: Step, label: str, in_size: tuple[int, ...] | None = None) -> Composition:
    """``prev`` (from the region entry, whose spatial size is ``in_size``) then one more step
    (``label`` names it in the reasons)."""
    op = step.operator()
    family = _family(prev.family, step.family, label)
    reasons, notes = _merged_notes(prev, extra=step.size_specific)
    if isinstance(op, Scalar):
        if isinstance(prev.value, Scalar):
            v = Scalar(op.a * prev.value.a, op.a * prev.value.b + op.b)
            return Composition(v, family, prev.exact, reasons, notes)
        w = prev.value
        shifted = replace(w, weight=w.weight * op.a, bias=w.bias * op.a + op.b)
        return Composition(shifted, family, prev.exact, reasons, notes)
    first = prev.value
    if isinstance(first, Scalar):
        if first.is_identity:
            return Composition(op, family, prev.exact, reasons, notes)
        first = _as_conv(first, op.in_channels, op.ndim)
    composed = A.compose(first, op, in_size if in_size is not None and len(in_size) == op.ndim else None)
    exact = prev.exact and composed.exact
    if not composed.exact:
        reasons.append(f"{label}: {composed.reason}")
    elif not composed.all_sizes:
        notes.append(f"{label}: {composed.reason}")
    return Composition(composed.op, family, exact, reasons, notes)


def _sum(a: Composition, b: Composition, label: str) -> Composition:
    family = _family(a.family, b.family, label)
    reasons, notes = _merged_notes(a, b)
    exact = a.exact and b.exact
    if isinstance(a.value, Scalar) and isinstance(b.value, Scalar):
        return Composition(Scalar(a.value.a + b.value.a, a.value.b + b.value.b), family, exact, reasons, notes)
    x, y = _as_convs(a.value, b.value)
    return Composition(A.add(x, y), family, exact, reasons, notes)


def _channels(graph: AffineGraph, node: Node) -> tuple[int | None, int]:
    """The channel count (axis 1) of a concatenated tensor, and its number of spatial dims."""
    shape = graph.shape(node)
    channels = static(shape[1]) if shape is not None and len(shape) > 1 else None
    return channels, (len(shape) - 2 if shape is not None and len(shape) > 2 else 0)


def _concat(a: Composition, b: Composition, label: str, channels: tuple[int | None, int]) -> Composition:
    family = _family(a.family, b.family, label)
    reasons, notes = _merged_notes(a, b)
    if isinstance(a.value, Scalar) and isinstance(b.value, Scalar):
        count, nd = channels
        if count is None:
            raise NotContractibleError(f"{label}: channel count unknown")
        a_value, b_value = _as_conv(a.value, count, nd), _as_conv(b.value, count, nd)
    else:
        a_value, b_value = _as_convs(a.value, b.value)
    return Composition(A.concat(a_value, b_value), family, a.exact and b.exact, reasons, notes)


def _as_convs(x, y) -> tuple[A.AffineConv, A.AffineConv]:
    ref = x if isinstance(x, A.AffineConv) else y
    return tuple(_as_conv(v, ref.in_channels, ref.ndim) if isinstance(v, Scalar) else v for v in (x, y))


def check_shape(region: Region, c: Composition) -> None:
    if not isinstance(c.value, A.AffineConv):
        return
    op = c.value
    in_shape, out_shape = region.graph.shape(region.entry), region.graph.shape(region.exit)
    if in_shape is None or out_shape is None:
        return
    axis = c.family[1] if c.family else 1
    if static(out_shape[axis]) != op.out_channels or static(in_shape[axis]) != op.in_channels:
        raise NotContractibleError(f"{region.name}: composed channels do not match the traced shapes")
    if op.ndim:
        spatial_in = [static(d) for d in in_shape[-op.ndim:]]
        spatial_out = [static(d) for d in out_shape[-op.ndim:]]
        if None not in spatial_in and op.output_size(spatial_in) != tuple(spatial_out):
            raise NotContractibleError(f"{region.name}: composed operator changes the output size")
