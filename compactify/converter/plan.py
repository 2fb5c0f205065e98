"""Decide, per region, whether to merge it into one layer, remove it, or leave it as it is.

Merging is done only when it is exact (or the user allowed approximation) and when the
merged layer costs no more FLOPs than the region it replaces, counted by
torch.utils.flop_counter on the real modules: a narrow bottleneck or a pointwise conv
before a depthwise one is cheaper left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from compactify.converter import algebra as A
from compactify.converter.graph_ops import Scalar
from compactify.converter.lowrank import module_flops
from compactify.converter.regions import (
    IDENTITY,
    Composition,
    Region,
    check_shape,
    compose_region,
    extend,
    spatial_size,
)
from compactify.errors import NotContractibleError


@dataclass
class Decision:
    region: Region
    kind: str  # "dense", "keep" or "removed"
    reason: str
    exact: bool
    composition: Composition | None = None
    module: nn.Module | None = None
    params_before: int = 0
    params_after: int = 0
    flops_before: int = 0
    flops_after: int = 0
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
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


@dataclass
class GraphProfile:
    """Per-node FLOPs and concrete shapes from one run of the captured graph."""

    flops: dict[fx.Node, int]
    shapes: dict[fx.Node, tuple[int, ...]]


def profile_graph(gm: fx.GraphModule, example: torch.Tensor) -> GraphProfile:
    flops: dict[fx.Node, int] = {}
    shapes: dict[fx.Node, tuple[int, ...]] = {}
    mode = FlopCounterMode(display=False)

    class _Recorder(fx.Interpreter):
        def run_node(self, node):
            before = mode.get_total_flops()
            out = super().run_node(node)
            flops[node] = mode.get_total_flops() - before
            if isinstance(out, torch.Tensor):
                shapes[node] = tuple(out.shape)
            return out

    with torch.no_grad(), mode:
        _Recorder(gm).run(example)
    return GraphProfile(flops, shapes)


def count_flops(module: nn.Module, example: torch.Tensor) -> int:
    mode = FlopCounterMode(display=False)
    with torch.no_grad(), mode:
        module(example)
    return int(mode.get_total_flops())


def to_module(op: A.AffineConv) -> nn.Module:
    """The standard layer computing ``op``, in float32 (cast once, from float64)."""
    layer = _linear_layer(op) if op.ndim == 0 else _conv_layer(op)
    extra = [(b - min(b, a), a - min(b, a)) for b, a in op.padding]
    if any(b or a for b, a in extra):  # asymmetric padding: convs only pad symmetrically
        pad_cls = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[op.ndim]
        layer = nn.Sequential(pad_cls(tuple(p for pair in reversed(extra) for p in pair), 0.0), layer)
    return layer.eval()


def _linear_layer(op: A.AffineConv) -> nn.Linear:
    weight = A.dense_weight(op)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=op.has_bias)
    layer.weight.data = weight.to(torch.float32)
    if op.has_bias:
        layer.bias.data = op.bias.to(torch.float32)
    return layer


def _conv_layer(op: A.AffineConv) -> nn.Module:
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[op.ndim]
    layer = cls(op.in_channels, op.out_channels, op.kernel, stride=op.stride,
                padding=tuple(min(b, a) for b, a in op.padding), dilation=op.dilation,
                groups=op.groups, bias=op.has_bias)
    layer.weight.data = op.weight.to(torch.float32).contiguous()
    if op.has_bias:
        layer.bias.data = op.bias.to(torch.float32)
    return layer


def _region_params(region: Region, param_sizes: dict[str, int]) -> int:
    return sum(param_sizes.get(name, 0) for name in region.params)


def decide(
    region: Region,
    profile: GraphProfile,
    param_sizes: dict[str, int],
    allow_approximate: bool = False,
    composition: Composition | NotContractibleError | None = None,
) -> Decision:
    """Plan one region; ``composition`` is the region already composed (or why it cannot be)."""
    flops_before = sum(profile.flops.get(n, 0) for n in region.nodes)
    params_before = _region_params(region, param_sizes)
    base = dict(params_before=params_before, params_after=params_before,
                flops_before=flops_before, flops_after=flops_before)
    try:
        if isinstance(composition, NotContractibleError):
            raise composition
        comp = composition if composition is not None else compose_region(region)
    except NotContractibleError as exc:
        return Decision(region, "keep", f"not contractible: {exc}", False, **base)
    if isinstance(comp.value, Scalar):
        if comp.value.is_identity:
            return Decision(region, "removed", "identity at inference (dropout in eval, clone, ...)", True, comp,
                            params_before=params_before, flops_before=flops_before)
        return Decision(region, "keep", "elementwise scale/shift with nothing to merge into", True, comp, **base)
    substantive = [n for n in region.nodes if region.steps[n].kind != "identity"]
    if len(substantive) == 1 and len(region.nodes) == 1:
        return Decision(region, "keep", "a single layer: nothing to merge", True, comp, **base)
    warnings = []
    if not comp.exact:
        detail = "; ".join(comp.reasons)
        if not allow_approximate:
            msg = f"region {region.name} ({', '.join(region.layers)}) left unmerged: not exact: {detail}"
            return Decision(region, "keep", f"not exact: {detail}", False, comp, warnings=[msg], **base)
        warnings.append(f"region {region.name} merged approximately (--allow-approximate): {detail}")
    module = to_module(comp.value)
    entry_shape = profile.shapes.get(region.entry)
    if entry_shape is None:
        return Decision(region, "keep", "input shape of the region unknown", comp.exact, comp, **base)
    flops_after = module_flops(module, entry_shape)
    params_after = sum(p.numel() for p in module.parameters())
    if flops_after > flops_before:
        return Decision(
            region, "keep", f"merging would cost more ({flops_after:,} vs {flops_before:,} FLOPs)", comp.exact, comp,
            warnings=[w for w in warnings if "approximately" not in w], **base,
        )
    if flops_after == flops_before and params_after > params_before:
        return Decision(region, "keep", "merging would add parameters at equal FLOPs", comp.exact, comp, **base)
    reason = "merged exactly" if comp.exact else "merged approximately (--allow-approximate)"
    return Decision(region, "dense", reason, comp.exact, comp, module, params_before, params_after,
                    flops_before, flops_after, warnings)


def plan_region(
    region: Region,
    profile: GraphProfile,
    param_sizes: dict[str, int],
    allow_approximate: bool = False,
) -> list[Decision]:
    """The cheapest exact plan for a region: merged whole, or, for a chain, cut into the
    segments that are cheapest merged one by one (so a bottleneck too costly to merge whole
    still has its BatchNorms folded)."""
    whole = decide(region, profile, param_sizes, allow_approximate)
    if whole.kind != "keep" or len(region.nodes) < 2 or not _is_chain(region):
        return [whole]
    segments = _cheapest_segments(region, profile, param_sizes, allow_approximate)
    if len(segments) == 1:
        return [whole]
    for d in segments:
        d.reason = f"{d.reason}; region {region.name} cut in {len(segments)} because: {whole.reason}"
    segments[0].warnings = whole.warnings + segments[0].warnings
    return segments


def _is_chain(region: Region) -> bool:
    previous = region.entry
    for node in region.nodes:
        step = region.steps[node]
        if step.kind == "sum" or step.data != (previous,):
            return False
        previous = node
    return True


def _cheapest_segments(region, profile, param_sizes, allow_approximate) -> list[Decision]:
    """Dynamic programme over cut points; cost is (FLOPs, parameters) of each segment's plan."""
    nodes = region.nodes
    entries = [region.entry] + nodes[:-1]
    # plans[i][j]: segment nodes[i:j] planned on its own; compositions grow one step at a time.
    plans: dict[tuple[int, int], Decision] = {}
    for i in range(len(nodes)):
        comp: Composition | NotContractibleError = IDENTITY
        for j in range(i + 1, len(nodes) + 1):
            node = nodes[j - 1]
            part = Region(entries[i], node, nodes[i:j], {n: region.steps[n] for n in nodes[i:j]})
            if not isinstance(comp, NotContractibleError):
                try:
                    comp = extend(comp, region.steps[node], node, spatial_size(entries[i]))
                    check_shape(part, comp)
                except NotContractibleError as exc:
                    comp = exc
            plans[i, j] = decide(part, profile, param_sizes, allow_approximate, comp)
    best: list[tuple[tuple[int, int], list[Decision]]] = [((0, 0), [])]
    for j in range(1, len(nodes) + 1):
        options = []
        for i in range(j):
            d = plans[i, j]
            if d.kind == "keep" and j - i > 1:
                continue  # an unmerged multi-layer segment is the same as single-layer ones
            (flops, params), plan = best[i]
            options.append(((flops + d.flops_after, params + d.params_after), plan + [d]))
        best.append(min(options, key=lambda o: o[0]))
    return best[-1][1]
