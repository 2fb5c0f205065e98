"""The nodes of a captured graph that do not depend on its inputs, evaluated once, in float64.

Weights are ``get_attr`` nodes; anything computed from weights alone (``W.t()``, a BN shift
broadcast to a border) is folded here, so that a front-end handler sees a constant operand as a
tensor whatever the graph did to it.

A weight is held as the graph holds it (no copy) and a layout op of weights alone (``W.t()``) as a
view of it: ``tensor`` hands out the float64 value when asked, so that the float64 weights of a
layer exist while its region is composed and never for the whole network at once (for a large
checkpoint that copy was twice the model's size). Anything that computes new values from weights
computes them in float64.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten

# Ops that make a tensor from nothing but literals: constant although they have no input node.
_CONSTRUCTORS = {aten.ones.default, aten.zeros.default, aten.full.default, aten.scalar_tensor.default, aten.tensor.default}
# Ops that only rearrange their input's values: exact in any dtype, so they run on the weights as held.
_LAYOUT_OPS = {aten.t.default, aten.transpose.int, aten.permute.default, aten.view.default, aten.reshape.default,
               aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.flatten.using_ints,
               aten.expand.default, aten.alias.default, aten.detach.default}
F64 = torch.float64


class Constants:
    """Values of the nodes that do not depend on the graph's inputs: the graph's own weights (and
    views of them) as held, anything computed from them in float64."""

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
                self.values[node] = value.detach()
                self.sources[node] = frozenset({node.target}) & self.param_names
            return
        if node.op != "call_function" or _is_random(node):
            return
        deps = node.all_input_nodes
        if any(d not in self.values for d in deps):
            return
        if not deps and node.target not in _CONSTRUCTORS:
            return
        layout = node.target in _LAYOUT_OPS
        args, kwargs = fx.node.map_arg((node.args, node.kwargs),
                                       lambda n: self.values[n] if layout else _float64(self.values[n]))
        try:
            value = node.target(*args, **kwargs)
        except Exception:  # a constant we cannot evaluate simply stays a graph node
            return
        if not layout:
            value = _float64(value)
        self.values[node] = value
        self.sources[node] = frozenset().union(*(self.sources.get(d, frozenset()) for d in deps))

    def __contains__(self, node) -> bool:
        return isinstance(node, fx.Node) and node in self.values

    def tensor(self, arg) -> torch.Tensor | None:
        """The constant ``arg`` in float64 (a copy of a float32 weight, for the caller to keep or drop)."""
        value = self.held(arg)
        return None if value is None else _float64(value)

    def held(self, arg) -> torch.Tensor | None:
        """The constant ``arg`` as held (a float32 weight stays the graph's own tensor): for its shape and
        dtype, without a float64 copy."""
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


def _float64(value):
    return value.to(F64) if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _is_random(node: fx.Node) -> bool:
    name = str(node.target)
    return any(word in name for word in ("rand", "normal", "bernoulli", "dropout", "uniform"))


def _fetch_attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
