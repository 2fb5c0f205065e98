"""The ONNX front-end: an ONNX graph as the engine's ``AffineGraph``.

Nodes are tensor names: each ONNX node stands for its first output (the others, such as
Dropout's mask, must be unread for the node to be a step). Graph inputs are nodes of their
own, and one sink, ``GRAPH_OUTPUT``, reads every graph output. FLOPs are counted as
torch.utils.flop_counter counts them (two per multiply-add of Conv, Gemm and MatMul).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from compactify.converter.engine.graph import AffineGraph
from compactify.converter.frontends.onnx.classify import Context, classify, label, layout_of
from compactify.converter.frontends.onnx.constants import OnnxConstants
from compactify.converter.frontends.onnx.read import default_opset


class _Sink:
    def __repr__(self) -> str:
        return "<graph output>"


GRAPH_OUTPUT = _Sink()


@dataclass
class OnnxGraph:
    """What the back-end needs besides the engine's view: the model it was built from."""

    model: onnx.ModelProto
    consts: OnnxConstants
    producers: dict[str, onnx.NodeProto]  # a node's first output -> the node


def affine_graph(model: onnx.ModelProto, symbolic: dict, concrete: dict) -> tuple[AffineGraph, OnnxGraph]:
    """The graph as the engine sees it; ``symbolic`` and ``concrete`` are tensor shapes
    (``frontends.onnx.shapes``), the latter at the example input the plan is costed on."""
    graph = model.graph
    consts = OnnxConstants(model)
    ctx = Context(consts, symbolic, default_opset(model))
    inits = {t.name for t in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    nodes: list = list(inputs)
    users: dict = {name: [] for name in inputs}
    producers: dict[str, onnx.NodeProto] = {}
    steps, flops, labels, op_names, layouts = {}, {}, {}, {}, {}
    shape_reads: set[str] = set()
    owner: dict[str, str] = {}  # every output of a node -> the node's handle
    for name in inputs:
        labels[name], op_names[name] = name, "input"
    for node in graph.node:
        if not node.output or node.output[0] in consts:
            continue
        handle = node.output[0]
        producers[handle] = node
        nodes.append(handle)
        users.setdefault(handle, [])
        for out in node.output:
            if out:
                owner[out] = handle
        for name in _reads(node):
            source = owner.get(name, name if name in users else None)
            if source is not None and handle not in users[source]:
                users[source].append(handle)
        labels[handle] = label(node)
        op_names[handle] = node.op_type
        flops[handle] = _flops(node, concrete, consts)
        step = classify(node, ctx)
        if step is not None:
            steps[handle] = step
        if node.op_type in ("Shape", "Size"):
            shape_reads.add(handle)
        layout = layout_of(node, ctx)
        if layout is not None and len(node.output) == 1:
            layouts[handle] = layout
    nodes.append(GRAPH_OUTPUT)
    labels[GRAPH_OUTPUT], op_names[GRAPH_OUTPUT] = "output", "output"
    for out in graph.output:
        source = owner.get(out.name, out.name if out.name in users else None)
        if source is not None:
            users[source].append(GRAPH_OUTPUT)
    # A node whose other outputs are read (BatchNormalization's running statistics, Dropout's mask)
    # does more than its step says: it stays.
    for handle in list(steps):
        node = producers[handle]
        if any(out and _read_anywhere(graph, out) for out in node.output[1:]):
            del steps[handle]
    params = {name: int(np.asarray(consts.values[name]).size) for name in consts.params
              if name in consts.values and np.asarray(consts.values[name]).dtype.kind == "f"}
    engine_graph = AffineGraph(
        nodes=nodes, users=users, steps=steps,
        shapes={k: v for k, v in symbolic.items()},
        example_shapes={k: v for k, v in concrete.items()},
        flops=flops, labels=labels, op_names=op_names, param_sizes=params, layouts=layouts,
        shape_reads=shape_reads,
    )
    return engine_graph, OnnxGraph(model, consts, producers)


def _reads(node: onnx.NodeProto) -> list[str]:
    """The tensors a node reads, including those its subgraphs (If, Loop) read from outside."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else (
            list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else [])
        for sub in subgraphs:
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer}
            for inner in sub.node:
                local |= set(inner.output)
            for inner in sub.node:
                names += [n for n in _reads(inner) if n not in local]
    return names


def _read_anywhere(graph: onnx.GraphProto, name: str) -> bool:
    return any(name in _reads(n) for n in graph.node) or any(o.name == name for o in graph.output)


def _flops(node: onnx.NodeProto, shapes: dict, consts: OnnxConstants) -> int:
    out = shapes.get(node.output[0])
    if out is None:
        return 0
    if node.op_type == "Conv":
        weight = shapes.get(node.input[1])
        return 2 * math.prod(out) * math.prod(weight[1:]) if weight else 0
    if node.op_type == "ConvTranspose":  # per input sample: weight [in, out/groups, *kernel]
        weight, x = shapes.get(node.input[1]), shapes.get(node.input[0])
        return 2 * math.prod(x) * math.prod(weight[1:]) if weight and x else 0
    if node.op_type in ("Gemm", "MatMul"):
        a = shapes.get(node.input[0])
        if not a:
            return 0
        transposed = node.op_type == "Gemm" and any(x.name == "transA" and x.i for x in node.attribute)
        k = a[0] if transposed else a[-1]
        return 2 * math.prod(out) * k
    return 0
