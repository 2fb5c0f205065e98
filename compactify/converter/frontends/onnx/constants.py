"""The values of an ONNX graph that do not depend on its inputs: initializers, Constant nodes,
and every node computed from those alone (exporters write ``W.T`` or a reshaped bias as such
nodes), evaluated once with onnx.reference."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

# Nodes whose value is not a function of their inputs.
_NONDETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})
# Folding a node that makes a huge tensor from a small one (ConstantOfShape, Expand, Tile) would only
# waste memory: such values stay in the graph.
_MAX_FOLDED = 1 << 24


class OnnxConstants:
    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.values: dict[str, np.ndarray] = {}
        self.params: set[str] = set()  # names of the stored weights (initializers, Constant nodes)
        for init in graph.initializer:
            self.values[init.name] = numpy_helper.to_array(init)
            self.params.add(init.name)
        inputs = {i.name for i in graph.input}
        for name in inputs & set(self.values):
            # An initializer listed as a graph input is a default the caller may override: not constant.
            del self.values[name]
            self.params.discard(name)
        self._opsets = list(model.opset_import)
        for node in graph.node:
            self._visit(node)

    def __contains__(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str) -> np.ndarray | None:
        return self.values.get(name) if name else None

    def _visit(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_value(node)
            if value is not None:
                self.values[node.output[0]] = value
                self.params.add(node.output[0])
            return
        if node.op_type in _NONDETERMINISTIC or node.domain not in ("", "ai.onnx") or not node.input:
            return
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            return
        if not all(name == "" or name in self.values for name in node.input):
            return
        try:
            outputs = _evaluate(node, [self.values.get(n) for n in node.input], self._opsets)
        except Exception:  # an op onnx.reference cannot run: the value stays in the graph
            return
        for name, value in zip(node.output, outputs):
            if name and isinstance(value, np.ndarray) and value.size <= _MAX_FOLDED:
                self.values[name] = value


def constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    return None  # sparse or string constants are not folded


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None], opsets) -> list[np.ndarray]:
    names = [f"in{i}" if n else "" for i, n in enumerate(node.input)]
    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for name, v in zip(names, values) if name]
    outs = [f"out{i}" if n else "" for i, n in enumerate(node.output)]
    copy = helper.make_node(node.op_type, names, outs, domain=node.domain)
    copy.attribute.extend(node.attribute)
    graph = helper.make_graph([copy], "fold", inputs, [helper.make_value_info(o, onnx.TypeProto()) for o in outs if o])
    model = helper.make_model(graph, opset_imports=opsets)
    feeds = {name: v for name, v in zip(names, values) if name}
    return ReferenceEvaluator(model).run(None, feeds)
