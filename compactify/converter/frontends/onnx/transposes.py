"""Cancel the layout transposes that NHWC exporters (tf2onnx, Keras) wrap around every conv.

tf2onnx writes ``Transpose(0,3,1,2) -> Conv -> Transpose(0,2,3,1)`` per layer, so two convs in
a row are separated by a pair of transposes that undo each other, often with a bias add, a
BatchNorm written as Mul+Add or an activation in between. This pass moves a transpose below
the elementwise ops that follow it (permuting their constant operand) and removes each pair
that composes to the identity, so the convs meet and the region finder sees the chain. Every
rewrite is exact (a permutation of where the same numbers go).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compactify.converter.frontends.onnx.constants import constant_value

# Elementwise ops a transpose commutes with: unary ones, and binary ones with a constant operand.
_UNARY = frozenset({"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "HardSigmoid", "HardSwish", "Softplus",
                    "Identity", "Neg", "Abs", "Exp", "Log", "Sqrt", "Erf", "Gelu", "Mish", "Celu"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div"})


def cancel_transposes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The model with inverse transpose pairs removed (edited in place); returns it and the
    number of pairs removed."""
    graph = model.graph
    removed = 0
    for _ in range(10 * max(1, len(graph.node))):  # each round removes a pair or moves a transpose down
        changed = _cancel_pair(graph)
        if changed:
            removed += 1
            continue
        if not _sink_one(graph):
            break
    return model, removed


def _perm(node: onnx.NodeProto) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None  # the default (reverse all axes) needs the rank: left alone


def _consumers(graph, name: str) -> list[onnx.NodeProto]:
    return [n for n in graph.node if name in n.input]


def _is_output(graph, name: str) -> bool:
    return any(o.name == name for o in graph.output)


def _transposes_with_one_reader(graph):
    """``(transpose, its only reader)`` for each transpose with a known perm whose output nothing
    else reads (not even the graph's outputs)."""
    for t in list(graph.node):
        if t.op_type != "Transpose" or _perm(t) is None:
            continue
        mid = t.output[0]
        users = _consumers(graph, mid)
        if len(users) == 1 and not _is_output(graph, mid):
            yield t, users[0]


def _cancel_pair(graph) -> bool:
    for first, second in _transposes_with_one_reader(graph):
        if second.op_type != "Transpose" or _perm(second) is None:
            continue
        p1, p2 = _perm(first), _perm(second)
        if len(p1) != len(p2) or [p1[i] for i in p2] != list(range(len(p1))):
            continue
        source, out = first.input[0], second.output[0]
        if _is_output(graph, out):
            # The output keeps its name: one Identity stands where the pair was.
            index = list(graph.node).index(second)
            graph.node.remove(first)
            graph.node.remove(second)
            graph.node.insert(index - 1, helper.make_node("Identity", [source], [out], name=second.name or out))
            return True
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == out:
                    node.input[i] = source
        graph.node.remove(first)
        graph.node.remove(second)
        return True
    return False


def _sink_one(graph) -> bool:
    """Move one transpose below the elementwise op that is its only reader, when that op is
    followed (eventually) by another transpose: only then can the move end in a cancellation."""
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for t, op in _transposes_with_one_reader(graph):
        mid = t.output[0]
        if op.op_type not in _UNARY | _BINARY or not _leads_to_transpose(graph, op.output[0]):
            continue
        perm = _perm(t)
        if op.op_type in _BINARY:
            if len(op.input) != 2 or list(op.input).count(mid) != 1:
                continue
            other = op.input[1] if op.input[0] == mid else op.input[0]
            value = _constant(other, inits, consts)
            if value is None or value.ndim > len(perm):
                continue
            aligned = value.reshape((1,) * (len(perm) - value.ndim) + value.shape)
            moved = np.ascontiguousarray(np.transpose(aligned, np.argsort(perm)))
            name = _fresh(graph, f"{other}_perm")
            graph.initializer.append(numpy_helper.from_array(moved.astype(value.dtype), name))
            op.input[list(op.input).index(other)] = name
        elif len(op.input) > 1 and any(op.input[1:]):  # a unary op with extra inputs (Clip bounds): scalars only
            continue
        # x -> T -> op -> y   becomes   x -> op -> T -> y
        y = op.output[0]
        inner = _fresh(graph, f"{y}_pre_transpose")
        op.input[list(op.input).index(mid)] = t.input[0]
        op.output[0] = inner
        t.input[0] = inner
        t.output[0] = y
        nodes = list(graph.node)
        graph.node.remove(t)
        graph.node.insert(nodes.index(op), t)  # right after op (op moved up one place by the removal)
        return True
    return False


def _leads_to_transpose(graph, name: str, depth: int = 8) -> bool:
    for _ in range(depth):
        users = _consumers(graph, name)
        if len(users) != 1:
            return False
        user = users[0]
        if user.op_type == "Transpose":
            return True
        if user.op_type not in _UNARY | _BINARY:
            return False
        name = user.output[0]
    return False


def _constant(name: str, inits, consts) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    return constant_value(consts[name]) if name in consts else None


def _fresh(graph, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    taken |= {i.name for i in graph.input}
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name
