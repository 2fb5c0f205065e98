"""The fx front-end: a captured ``torch.export`` graph as the engine's ``AffineGraph``."""

from __future__ import annotations

import torch
from torch import fx

from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.steps import Step
from compactify.converter.frontends.fx.classify import classify, layout_of
from compactify.converter.frontends.fx.constants import Constants
from compactify.converter.frontends.fx.functionalize import mutated_aliases
from compactify.converter.frontends.fx.nodes import describe, engine_dims, shape_of
from compactify.converter.frontends.fx.profile import GraphProfile, profile_graph


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


def affine_graph(gm: fx.GraphModule, example: torch.Tensor) -> tuple[AffineGraph, GraphProfile]:
    """The graph as the engine sees it, and the run on ``example`` its costs come from."""
    profile = profile_graph(gm, example)
    nodes = list(gm.graph.nodes)
    shapes = {}
    for node in nodes:
        shape = shape_of(node)
        if shape is not None:
            shapes[node] = engine_dims(shape)
    consts = Constants(gm)
    graph = AffineGraph(
        nodes=nodes,
        users={n: list(n.users) for n in nodes},
        steps=classify_steps(gm, consts),
        shapes=shapes,
        example_shapes=dict(profile.shapes),
        flops=dict(profile.flops),
        labels={n: describe(n) for n in nodes},
        op_names={n: _op_name(n) for n in nodes},
        param_sizes={name: p.numel() for name, p in gm.named_parameters()},
        layouts={n: layout for n in nodes if (layout := layout_of(n, consts)) is not None},
        shape_reads={n for n in nodes if n.target in _SHAPE_READS},
    )
    return graph, profile


_SHAPE_READS = (torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default, torch.ops.aten.sym_stride.int)


def _op_name(node: fx.Node) -> str:
    if node.op == "placeholder":
        return "input"
    if node.op == "output":
        return "output"
    if node.op == "call_module":
        return "merged layer"
    target = node.target
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]
