"""Decide, per region, whether to merge it into one layer, remove it, or leave it as it is.

Merging is done only when it is exact (or the user allowed approximation) and when the
merged layer costs no more FLOPs than the region it replaces (``engine.cost``, counted as
torch.utils.flop_counter counts layers): a narrow bottleneck or a pointwise conv before a
depthwise one is cheaper left alone. A decision holds the merged operator; a back-end
writes it as a layer of its format.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Hashable

from compactify.converter.engine import algebra as A
from compactify.converter.engine.cost import operator_flops, operator_params
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.regions import (
    IDENTITY,
    Composition,
    Region,
    check_shape,
    compose_region,
    extend,
    find_regions,
    spatial_size,
)
from compactify.converter.engine.steps import Scalar
from compactify.errors import NotContractibleError


@dataclass
class Decision:
    region: Region
    kind: str  # "dense", "keep" or "removed"
    reason: str
    exact: bool
    composition: Composition | None = None
    # The merged operator (trimmed of all-zero edge taps), for a back-end to write as one layer.
    operator: A.AffineConv | None = None
    # For kind "factored" (rank truncation): the two operators a back-end writes in its place.
    factors: tuple[A.AffineConv, A.AffineConv] | None = None
    # The layer as a back-end wrote it (an nn.Module on the PyTorch path); low-rank truncation
    # replaces it with its factored form.
    module: Any = None
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    warnings: list[str] = field(default_factory=list)
    # For a region left unmerged, what stopped it: "not contractible", "not exact",
    # "not exact at every input size" (--dynamic-hw), "not cheaper" or "nothing to merge".
    stopped_by: str | None = None
    # What ends the region on either side (the ops that are not affine, or not read as such),
    # taken from the graph before it is rewritten.
    bounds: dict = field(default_factory=dict)
    # The affine a fold moved here from before the region's entry (a BatchNorm before a transpose,
    # engine.fold): the merged layer computes the region applied to ``lead(entry)``.
    lead: A.AffineConv | None = None
    # A region removed because its operator went into the layers that read it: their names.
    folded_into: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.bounds:
            region, graph = self.region, self.region.graph
            readers = {graph.op_name(u) for u in graph.users.get(region.exit, ()) if u not in region.steps}
            self.bounds = {"after": graph.op_name(region.entry), "read_by": sorted(readers)}

    @property
    def size_notes(self) -> list[str]:
        """Why a merged operator holds only at the traced input size (empty: at every size)."""
        if self.kind not in ("dense", "factored") or self.composition is None:
            return []
        return list(self.composition.size_notes)

    def as_dict(self) -> dict:
        entry = {
            "name": self.region.name,
            "ops": self.region.ops,
            "layers": self.region.layers,
            "decision": self.kind,
            "reason": self.reason,
            "exact": self.exact,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
        }
        if self.kind == "keep":
            entry["stopped_by"] = self.stopped_by
        if self.folded_into:
            entry["folded_into"] = list(self.folded_into)
        entry.update(self.bounds)
        if self.kind in ("dense", "factored"):
            entry["exact_at"] = "traced input size only" if self.size_notes else "every input size"
            if self.size_notes:
                entry["size_notes"] = self.size_notes
        return entry


def _region_params(region: Region, param_sizes: dict[str, int]) -> int:
    return sum(param_sizes.get(name, 0) for name in region.params)


def decide(
    region: Region,
    allow_approximate: bool = False,
    composition: Composition | NotContractibleError | None = None,
    dynamic_hw: bool = False,
) -> Decision:
    """Plan one region; ``composition`` is the region already composed (or why it cannot be).
    With ``dynamic_hw`` only what is exact at every input size is merged."""
    graph = region.graph
    flops_before = sum(graph.flops.get(n, 0) for n in region.nodes)
    params_before = _region_params(region, graph.param_sizes)
    base = dict(params_before=params_before, params_after=params_before,
                flops_before=flops_before, flops_after=flops_before)

    def keep(reason, stopped_by, comp=None, exact=True, warnings=()):
        return Decision(region, "keep", reason, exact, comp, warnings=list(warnings), stopped_by=stopped_by, **base)

    try:
        if isinstance(composition, NotContractibleError):
            raise composition
        comp = composition if composition is not None else compose_region(region)
    except NotContractibleError as exc:
        return keep(f"not contractible: {exc}", "not contractible", exact=False)
    if isinstance(comp.value, Scalar):
        if comp.value.is_identity and _same_shape(graph, region.entry, region.exit):
            return Decision(region, "removed", "identity at inference (dropout in eval, clone, ...)", True, comp,
                            params_before=params_before, flops_before=flops_before)
        return keep("elementwise scale/shift or reshape with nothing to merge into", "nothing to merge", comp)
    substantive = [n for n in region.nodes if region.steps[n].kind not in ("identity", "reshape")]
    if len(substantive) == 1 and len(region.nodes) == 1:
        return keep("a single layer: nothing to merge", "nothing to merge", comp)
    warnings = []
    if not comp.exact:
        detail = "; ".join(comp.reasons)
        if not allow_approximate:
            msg = f"region {region.name} ({', '.join(region.layers)}) left unmerged: not exact: {detail}"
            return keep(f"not exact: {detail}", "not exact", comp, False, [msg])
        warnings.append(f"region {region.name} merged approximately (--allow-approximate): {detail}")
    unwritable = A.unwritable(comp.value)
    if unwritable:
        return keep(unwritable, "not contractible", comp, comp.exact)
    if dynamic_hw and comp.size_notes:
        return keep(f"exact only at the traced input size (--dynamic-hw): {'; '.join(comp.size_notes)}",
                    "not exact at every input size", comp, comp.exact)
    operator = A.trim(comp.value)
    entry_shape = graph.example_shapes.get(region.entry)
    if entry_shape is None:
        return keep("input shape of the region unknown", "not contractible", comp, comp.exact)
    flops_after = operator_flops(operator, entry_shape)
    params_after = operator_params(operator)
    if flops_after > flops_before:
        return keep(f"merging would cost more ({flops_after:,} vs {flops_before:,} FLOPs)", "not cheaper", comp,
                    comp.exact, [w for w in warnings if "approximately" not in w])
    if flops_after == flops_before and params_after > params_before:
        return keep("merging would add parameters at equal FLOPs", "not cheaper", comp, comp.exact)
    reason = "merged exactly" if comp.exact else "merged approximately (--allow-approximate)"
    return Decision(region, "dense", reason, comp.exact, comp, operator=operator, params_before=params_before,
                    params_after=params_after, flops_before=flops_before, flops_after=flops_after, warnings=warnings)


def _same_shape(graph: AffineGraph, a: Hashable, b: Hashable) -> bool:
    sa, sb = graph.shape(a), graph.shape(b)
    return sa is not None and sb is not None and [str(d) for d in sa] == [str(d) for d in sb]


def plan_graph(graph: AffineGraph, allow_approximate: bool = False, dynamic_hw: bool = False) -> list[Decision]:
    """The decisions for every linear region of ``graph``, in graph order (``engine.fold`` then moves
    a region into the layers that read it where that pays)."""
    return [d for r in find_regions(graph) for d in plan_region(r, allow_approximate, dynamic_hw)]


def plan_region(
    region: Region,
    allow_approximate: bool = False,
    dynamic_hw: bool = False,
) -> list[Decision]:
    """The cheapest exact plan for a region: merged whole, or cut at the tensors every path
    through it crosses into the segments that are cheapest merged one by one (so a
    bottleneck too costly to merge whole still has its BatchNorms folded); a block of
    parallel branches that cannot merge has each branch planned on its own (RepGhost's
    depthwise conv and BN summed with a fusion BN, inside a module that cannot merge)."""
    whole = decide(region, allow_approximate, dynamic_hw=dynamic_hw)
    if whole.kind != "keep" or len(region.nodes) < 2:
        return [whole]
    segments = _cheapest_series(region, allow_approximate, dynamic_hw)
    if len(segments) <= 1:
        return [whole]
    for d in segments:
        d.reason = f"{d.reason}; region {region.name} cut in {len(segments)} because: {whole.reason}"
        if d.kind == "keep":  # what kept these layers apart is what stopped the whole merge
            d.stopped_by = whole.stopped_by
    segments[0].warnings = whole.warnings + segments[0].warnings
    return segments


def _cuts(region: Region) -> list[int]:
    """Positions (in ``region.nodes``) of the nodes that every path from the entry to the exit
    passes through; -1 stands for the entry."""
    nodes = region.nodes
    position = {n: i for i, n in enumerate(nodes)}
    position[region.entry] = -1
    earliest = [min(position[d] for d in region.steps[n].data) for n in nodes]
    cuts, reach = [], len(nodes)
    suffix_min = [0] * (len(nodes) + 1)
    suffix_min[len(nodes)] = reach
    for i in range(len(nodes) - 1, -1, -1):
        suffix_min[i] = min(earliest[i], suffix_min[i + 1])
    for i in range(len(nodes)):
        if suffix_min[i + 1] >= i:
            cuts.append(i)
    return [-1] + cuts


def _cheapest_series(region, allow_approximate, dynamic_hw) -> list[Decision]:
    """Dynamic programme over the cut points; cost is (FLOPs, parameters) of each segment's plan."""
    nodes, cuts = region.nodes, _cuts(region)
    at = lambda k: region.entry if cuts[k] < 0 else nodes[cuts[k]]  # noqa: E731
    units = [nodes[cuts[k] + 1: cuts[k + 1] + 1] for k in range(len(cuts) - 1)]
    plans: dict[tuple[int, int], Decision] = {}
    for i in range(len(units)):
        comp: Composition | NotContractibleError = IDENTITY
        in_size = spatial_size(region.graph, at(i))
        for j in range(i + 1, len(units) + 1):
            unit = units[j - 1]
            part = region.part(at(i), at(j), [n for u in units[i:j] for n in u])
            if not isinstance(comp, NotContractibleError):
                try:
                    step = region.steps[unit[0]]
                    if len(unit) == 1 and step.data == (at(j - 1),):
                        comp = extend(comp, step, region.graph.describe(unit[0]), in_size)
                    else:
                        comp = compose_region(region.part(at(j - 1), at(j), unit), comp, in_size)
                    check_shape(part, comp)
                except NotContractibleError as exc:
                    comp = exc
            plans[i, j] = decide(part, allow_approximate, comp, dynamic_hw)
    alone = {j: _unit_plan(plans[j - 1, j], units[j - 1], at(j - 1), region, allow_approximate, dynamic_hw)
             for j in range(1, len(units) + 1)}
    best: list[tuple[tuple[int, int], list[Decision]]] = [((0, 0), [])]
    for j in range(1, len(units) + 1):
        options = []
        for i in range(j):
            if i == j - 1:
                plan = alone[j]
            elif plans[i, j].kind == "keep":
                continue  # an unmerged multi-unit segment is the same as its units one by one
            else:
                plan = [plans[i, j]]
            (flops, params), before = best[i]
            options.append(((flops + sum(d.flops_after for d in plan), params + sum(d.params_after for d in plan)),
                            before + plan))
        best.append(min(options, key=lambda o: o[0]))
    return best[-1][1]


def _unit_plan(decision, unit, entry, region, allow_approximate, dynamic_hw) -> list[Decision]:
    """One unit planned alone: its decision, or, for a block of parallel branches that stays
    unmerged, each branch planned as a region of its own with the final sum or concat kept."""
    if decision.kind != "keep" or len(unit) < 2:
        return [decision]
    last = unit[-1]
    step = region.steps[last]
    if not step.merges:
        return [decision]
    members = set(unit[:-1])
    owner: dict[Hashable, int] = {}
    for b, head in enumerate(step.data):
        stack = [head] if head in members else []
        while stack:
            n = stack.pop()
            if owner.setdefault(n, b) != b:
                return [decision]  # branches share a tensor: no clean split
            stack.extend(d for d in region.steps[n].data if d in members and owner.get(d) != b)
    if set(owner) != members:
        return [decision]
    plan: list[Decision] = []
    for b, head in enumerate(step.data):
        branch = [n for n in unit if owner.get(n) == b]
        if not branch or head in step.data[:b]:
            continue
        plan += plan_region(region.part(entry, head, branch), allow_approximate, dynamic_hw)
    if not any(d.kind != "keep" for d in plan):
        return [decision]
    joint = region.part(entry, last, [last])
    flops = region.graph.flops.get(last, 0)
    plan.append(Decision(joint, "keep", f"the {step.kind} of the branches stays: {decision.reason}", True,
                         flops_before=flops, flops_after=flops,
                         stopped_by=decision.stopped_by))
    return plan


def withdraw(decision: Decision, why: str) -> Decision:
    """A new decision that keeps the region's own layers in place of a merge its check refused."""
    return dataclasses.replace(
        decision, kind="keep", module=None, operator=None, factors=None, stopped_by="withdrawn", lead=None,
        folded_into=(),
        params_after=decision.params_before, flops_after=decision.flops_before,
        reason=f"merge withdrawn: {why}; the region keeps its own layers (a bug in compactify: please report it "
               "with the model)",
        warnings=list(decision.warnings))


class PlanSummary:
    """What any conversion result reports of its plan; mixed into a result that holds
    ``decisions`` and ``params_before/after``, ``flops_before/after``."""

    @property
    def regions(self) -> list[dict]:
        return [d.as_dict() for d in self.decisions]

    @property
    def size_notes(self) -> list[str]:
        """Why the compact model holds only at the traced input size (empty: at every size)."""
        return [n for d in self.decisions for n in d.size_notes]

    def summary(self) -> dict:
        return {
            "regions": len(self.decisions),
            "merged": sum(d.kind == "dense" for d in self.decisions),
            "factored": sum(d.kind == "factored" for d in self.decisions),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
        }
