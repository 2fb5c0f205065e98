"""FLOPs and concrete shapes of a captured graph, from one run of it on the example input."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode


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
