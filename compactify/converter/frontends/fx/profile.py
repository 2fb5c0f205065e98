"""FLOPs and concrete shapes of a captured graph, from one run of it on the example input.

A real float32 run of an expanded network at its input size costs as much as one of the conversion's
checks, so a graph whose convs and matmuls add up to more than FAKE_RUN_FLOPS runs on fake tensors
(shapes, no data: FLOPs and shapes follow from shapes alone, at a cost per node rather than per
FLOP). A smaller graph runs for real, which is quicker there, as is a graph that needs real values
to run (an ``item()``, a shape read off data)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from compactify.converter.frontends.fx.nodes import example_size


@dataclass
class GraphProfile:
    """Per-node FLOPs and concrete shapes from one run of the captured graph, and the values of
    the nodes that compute a number rather than a tensor (``sym_size`` of the batch, ...), which
    a part of the graph run on its own needs when it reads them from outside."""

    flops: dict[fx.Node, int]
    shapes: dict[fx.Node, tuple[int, ...]]
    scalars: dict[fx.Node, int | float | bool] = field(default_factory=dict)


# Above this many FLOPs (convs and matmuls, from the shapes the capture recorded) a real run costs
# more than a fake one: MobileNetV2-CL at 64x64 (0.28 GFLOPs at batch 2) ran in 0.05 s, on fake tensors in 0.13 s.
FAKE_RUN_FLOPS = 2e9
_MATMULS = {torch.ops.aten.convolution.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default,
            torch.ops.aten.conv3d.default, torch.ops.aten.linear.default, torch.ops.aten.mm.default,
            torch.ops.aten.addmm.default, torch.ops.aten.matmul.default, torch.ops.aten.bmm.default}


def profile_graph(gm: fx.GraphModule, example: torch.Tensor) -> GraphProfile:
    if _estimated_flops(gm) < FAKE_RUN_FLOPS:
        return _run(gm, example)
    try:
        fake = FakeTensorMode(allow_non_fake_inputs=True)  # the graph's own weights become fake as read
        with fake:
            return _run(gm, fake.from_tensor(example))
    except Exception:  # an op fake tensors cannot answer without data
        return _run(gm, example)


def _estimated_flops(gm: fx.GraphModule) -> float:
    """Two per multiply-add of the graph's convs and matmuls, from the output shapes the capture
    recorded and the weights' (or right-hand sides') inner sizes; infinite where a shape is missing."""
    total = 0.0
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in _MATMULS:
            continue
        out, weight = node.meta.get("val"), node.args[1] if len(node.args) > 1 else None
        weight = weight.meta.get("val") if isinstance(weight, fx.Node) else None
        if not isinstance(out, torch.Tensor) or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            return float("inf")
        try:
            dims = [example_size(d) for d in out.shape]
            inner = math.prod(example_size(d) for d in weight.shape[1:]) if "conv" in str(node.target) \
                else example_size(weight.shape[-2])
        except TypeError:  # a size the capture left without an example value
            return float("inf")
        total += 2.0 * math.prod(dims) * inner
    return total


def _run(gm: fx.GraphModule, example: torch.Tensor) -> GraphProfile:
    flops: dict[fx.Node, int] = {}
    shapes: dict[fx.Node, tuple[int, ...]] = {}
    scalars: dict[fx.Node, int | float | bool] = {}
    mode = FlopCounterMode(display=False)

    class _Recorder(fx.Interpreter):
        def run_node(self, node):
            before = mode.get_total_flops()
            out = super().run_node(node)
            flops[node] = mode.get_total_flops() - before
            if isinstance(out, torch.Tensor):
                shapes[node] = tuple(out.shape)
            elif isinstance(out, (bool, int, float)):
                scalars[node] = out
            return out

    with torch.no_grad(), mode:
        _Recorder(gm).run(example)
    return GraphProfile(flops, shapes, scalars)


def count_flops(module: nn.Module, example: torch.Tensor) -> int:
    mode = FlopCounterMode(display=False)
    with torch.no_grad(), mode:
        module(example)
    return int(mode.get_total_flops())


# Ops the fx rewrite adds that compute no FLOPs: the input-size guard and the reshape that gives a
# merged linear layer's output its exit's shape back.
_FREE_TARGETS = ("check_spatial_size", "reshape")


def compact_flops(compact: fx.GraphModule, profile: GraphProfile, merged: dict[int, int]) -> int | None:
    """FLOPs of the rewritten graph at the example input without running it: a node the rewrite kept
    costs what it cost in ``profile`` (the rewrite edits the captured graph in place, so the nodes are
    the same objects), a merged layer what its decision counted (``merged``: id of the layer module ->
    its FLOPs). None when the graph holds a node that neither accounts for."""
    total = 0
    for node in compact.graph.nodes:
        if node in profile.flops:
            total += profile.flops[node]
        elif node.op == "call_module":
            layer = merged.get(id(compact.get_submodule(node.target)))
            if layer is None:
                return None
            total += layer
        elif node.op == "call_function" and not any(t in str(node.target) for t in _FREE_TARGETS):
            return None
    return int(total)
