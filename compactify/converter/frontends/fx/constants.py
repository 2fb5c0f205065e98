"""The nodes of a captured graph that do not depend on its inputs, evaluated once in float64.

Weights are ``get_attr`` nodes; anything computed from weights alone (``W.t()``, a BN shift
broadcast to a border) is folded here, so that a front-end handler sees a constant operand as a
tensor whatever the graph did to it.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten

# Ops that make a tensor from nothing but literals: constant although they have no input node.
_CONSTRUCTORS = {aten.ones.default, aten.zeros.default, aten.full.default, aten.scalar_tensor.default, aten.tensor.default}


class Constants:
    """Values of the nodes that do not depend on the graph's inputs, in float64."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.values: dict[fx.Node, object] = {}
        self.sources: dict[fx.Node, frozenset[str]] = {}
        self.param_names = {name for name, _ in gm.named_parameters()}
        for node in gm.graph.nodes:
            self._visit(node)

    def _visit(self, node: fx.Node) -> None:
        if node.op == "get_attr":
            value = _fetch_attr(self.gm, node.target)
            if isinstance(value, torch.Tensor):
                self.values[node] = value.detach().to(torch.float64) if value.is_floating_point() else value.detach()
                self.sources[node] = frozenset({node.target}) & self.param_names
            return
        if node.op != "call_function" or _is_random(node):
            return
        deps = node.all_input_nodes
        if any(d not in self.values for d in deps):
            return
        if not deps and node.target not in _CONSTRUCTORS:
            return
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self.values[n])
        try:
            value = node.target(*args, **kwargs)
        except Exception:  # a constant we cannot evaluate simply stays a graph node
            return
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value = value.to(torch.float64)
        self.values[node] = value
        self.sources[node] = frozenset().union(*(self.sources.get(d, frozenset()) for d in deps))

    def __contains__(self, node) -> bool:
        return isinstance(node, fx.Node) and node in self.values

    def tensor(self, arg) -> torch.Tensor | None:
        if isinstance(arg, fx.Node):
            value = self.values.get(arg)
            return value if isinstance(value, torch.Tensor) else None
        return None

    def params_of(self, args) -> frozenset[str]:
        names: set[str] = set()
        for a in args:
            if isinstance(a, fx.Node):
                names |= self.sources.get(a, frozenset())
        return frozenset(names)


def _is_random(node: fx.Node) -> bool:
    name = str(node.target)
    return any(word in name for word in ("rand", "normal", "bernoulli", "dropout", "uniform"))


def _fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
