"""Find the maximal linear regions of a captured graph and compose each into one operator.

A region runs from one entry tensor to one exit tensor through affine steps only; its
inner tensors are used nowhere else. Fan-out that rejoins inside the region (parallel
branches summed, identity shortcuts) stays inside; a tensor that is also needed outside,
or by two different exits, becomes an exit of its own (it is *materialized*), and the
steps after it start a new region.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import fx

from compactify.converter import algebra as A
from compactify.converter.functionalize import mutated_aliases
from compactify.converter.graph_ops import Constants, Scalar, Step, classify, describe, shape_of, static
from compactify.errors import NotContractibleError


@dataclass
class Region:
    entry: fx.Node
    exit: fx.Node
    nodes: list[fx.Node]  # topological order, exit last
    steps: dict[fx.Node, Step]

    @property
    def name(self) -> str:
        """The exit's layer path where it has one (``features.3``), else its node name."""
        label = describe(self.exit)
        return label.split(" (")[0] if " (" in label else label

    @property
    def layers(self) -> list[str]:
        return [describe(n) for n in self.nodes]

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


def classify_steps(gm: fx.GraphModule, consts: Constants) -> dict[fx.Node, Step]:
    """The affine steps of the graph, less any that reads or makes a tensor written in place."""
    steps: dict[fx.Node, Step] = {}
    for node in gm.graph.nodes:
        step = classify(node, consts)
        if step is not None:
            steps[node] = step
    absorbed = {n for step in steps.values() for n in step.absorbs}
    fenced = mutated_aliases(gm, ignore=absorbed)
    for node in list(steps):
        if node in absorbed or node in fenced or any(d in fenced for d in steps[node].data):
            del steps[node]
    return steps


def find_regions(gm: fx.GraphModule, consts: Constants) -> list[Region]:
    steps = classify_steps(gm, consts)
    materialized: set[fx.Node] = set()
    while True:
        entry = _entries(gm, steps, materialized)
        if entry is None:  # a multi-entry sum was dropped from the affine set: recompute
            continue
        grew = _materialize(gm, steps, entry, materialized)
        if not grew:
            break
    regions = []
    for node in gm.graph.nodes:
        if node in materialized and node in steps:
            regions.append(_collect(node, steps, entry, materialized))
    return regions


def _entries(gm, steps, materialized) -> dict[fx.Node, fx.Node] | None:
    entry: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
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


def _users(node: fx.Node, steps) -> list[fx.Node]:
    """Users as the steps see them: a node that only feeds steps reading ``node`` (decomposed
    BatchNorm's ``getitem``, the ``stack`` of a stacked sum) is looked through, and the nodes a
    step absorbs (the border writes of a BN-and-pad) are part of it."""
    found = []
    absorbed = steps[node].absorbs if node in steps else ()
    for u in node.users:
        if u in absorbed:
            continue
        live = [v for v in u.users if v.users or v in steps]  # unused getitems do not count
        if u not in steps and live and all(v in steps and node in steps[v].data for v in live):
            found.extend(live)
        else:
            found.append(u)
    return found


def _materialize(gm, steps, entry, materialized) -> bool:
    grew = False
    for node in steps:
        if node not in materialized and any(u not in steps for u in _users(node, steps)):
            materialized.add(node)
            grew = True
    exits: dict[fx.Node, set[fx.Node]] = {}
    for node in reversed(list(gm.graph.nodes)):
        if node not in steps:
            continue
        if node in materialized:
            exits[node] = {node}
            continue
        reach = set()
        for u in _users(node, steps):
            reach |= exits.get(u, set())
        if len(reach) > 1:
            materialized.add(node)
            reach = {node}
            grew = True
        exits[node] = reach
    return grew


def _collect(exit_node, steps, entry, materialized) -> Region:
    start = entry[exit_node]
    members = {exit_node}
    stack = [exit_node]
    while stack:
        node = stack.pop()
        for d in steps[node].data:
            if d in steps and d not in materialized and d not in members and entry[d] is start:
                members.add(d)
                stack.append(d)
    order = [n for n in exit_node.graph.nodes if n in members]
    return Region(start, exit_node, order, {n: steps[n] for n in order})


# ---------------------------------------------------------------------------------------
# Composition of a region into one operator


IDENTITY = Composition(Scalar(), None, True)


def compose_region(region: Region, start: Composition = IDENTITY,
                   in_size: tuple[int, ...] | None = None) -> Composition:
    """The region as one operator; with ``start``, the operator from an earlier tensor whose
    spatial size is ``in_size`` (the region's entry is then ``start`` applied to it)."""
    values: dict[fx.Node, Composition] = {region.entry: start}
    if start is IDENTITY:
        in_size = spatial_size(region.entry)
    for node in region.nodes:
        step = region.steps[node]
        if step.kind == "sum":
            parts = [_scaled(values[d], c) for d, c in zip(step.data, step.coeffs)]
            values[node] = _fold(parts, node, _sum)
        elif step.kind == "concat":
            values[node] = _fold([values[d] for d in step.data], node, _concat)
        else:
            values[node] = extend(values[step.data[0]], step, node, in_size)
    result = values[region.exit]
    if start is IDENTITY:
        check_shape(region, result)
    return result


def _fold(parts: list[Composition], node: fx.Node, combine) -> Composition:
    result = parts[0]
    for part in parts[1:]:
        result = combine(result, part, node)
    return result


def _scaled(c: Composition, factor: float) -> Composition:
    if factor == 1.0:
        return c
    if isinstance(c.value, Scalar):
        return Composition(Scalar(c.value.a * factor, c.value.b * factor), None, c.exact, c.reasons, c.size_notes)
    return Composition(A.scale(c.value, factor), c.family, c.exact, c.reasons, c.size_notes)


def _family(a, b, node) -> tuple[int, int] | None:
    """The layout both sides agree on. Linear layouts (features on the last axis) agree
    whatever their rank, since a reshape that keeps the last axis may sit between them."""
    if a is not None and b is not None and a != b and not (a[0] == 0 and b[0] == 0):
        raise NotContractibleError(f"{describe(node)} mixes channel layouts {a} and {b}")
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


def spatial_size(node: fx.Node) -> tuple[int, ...] | None:
    """The static spatial sizes of a conv-layout tensor (channels on axis 1), else None."""
    shape = shape_of(node)
    if shape is None or len(shape) < 3:
        return None
    dims = tuple(static(d) for d in shape[2:])
    return None if None in dims else dims


def extend(prev: Composition, step: Step, node: fx.Node, in_size: tuple[int, ...] | None = None) -> Composition:
    """``prev`` (from the region entry, whose spatial size is ``in_size``) then one more step."""
    op = step.op
    family = _family(prev.family, step.family, node)
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
        reasons.append(f"{describe(node)}: {composed.reason}")
    elif not composed.all_sizes:
        notes.append(f"{describe(node)}: {composed.reason}")
    return Composition(composed.op, family, exact, reasons, notes)


def _sum(a: Composition, b: Composition, node: fx.Node) -> Composition:
    family = _family(a.family, b.family, node)
    reasons, notes = _merged_notes(a, b)
    exact = a.exact and b.exact
    if isinstance(a.value, Scalar) and isinstance(b.value, Scalar):
        return Composition(Scalar(a.value.a + b.value.a, a.value.b + b.value.b), family, exact, reasons, notes)
    x, y = _as_convs(a.value, b.value)
    return Composition(A.add(x, y), family, exact, reasons, notes)


def _concat(a: Composition, b: Composition, node: fx.Node) -> Composition:
    family = _family(a.family, b.family, node)
    reasons, notes = _merged_notes(a, b)
    if isinstance(a.value, Scalar) and isinstance(b.value, Scalar):
        shape = shape_of(node.args[0][0])
        channels = static(shape[1]) if shape is not None and len(shape) > 1 else None
        if channels is None:
            raise NotContractibleError(f"{describe(node)}: channel count unknown")
        nd = len(shape) - 2 if len(shape) > 2 else 0
        a_value, b_value = _as_conv(a.value, channels, nd), _as_conv(b.value, channels, nd)
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
    in_shape, out_shape = shape_of(region.entry), shape_of(region.exit)
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
