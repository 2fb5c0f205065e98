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
from compactify.converter.regions import Composition, Region, compose_region
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
) -> Decision:
    flops_before = sum(profile.flops.get(n, 0) for n in region.nodes)
    params_before = _region_params(region, param_sizes)
    base = dict(params_before=params_before, params_after=params_before,
                flops_before=flops_before, flops_after=flops_before)
    try:
        comp = compose_region(region)
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
    flops_after = count_flops(module, torch.zeros(entry_shape))
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
