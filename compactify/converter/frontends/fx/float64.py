"""Run a captured graph, or a part of it, in float64 without a float64 copy of its weights.

Each constant is cast to float64 when a node reads it and dropped after its last reader, so the
float64 weights alive at once are those of a few layers, not the model's. Code that casts
(``.to(torch.float32)``, DBB's identity kernels) leaves dtype assertions and casts to float32 in
the graph; here they assert nothing and cast to float64 instead (as ``capture.float64_graph``).

``run_part`` runs only what lies between one node and another (a linear region from its entry to
its exit) on an input of the caller's choosing: numbers the part reads from outside (the batch
size a reshape takes from the graph input) come from a profile of the whole graph.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import fx


class NotIsolated(Exception):
    """The part reads a tensor from outside itself, so it cannot run on an input of its own."""


def cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value


class CastingInterpreter(fx.Interpreter):
    """An fx.Interpreter that computes in ``dtype``, casting constants when they are read; with
    ``record``, the values of those nodes (by name) are kept in ``recorded``."""

    def __init__(self, gm: fx.GraphModule, dtype: torch.dtype = torch.float64, record: Iterable[str] = ()):
        super().__init__(gm)  # garbage_collect_values: each value is freed after its last reader
        self.dtype = dtype
        self.record = set(record)
        self.recorded: dict[str, torch.Tensor] = {}

    def fetch_attr(self, target: str):
        return cast(super().fetch_attr(target), self.dtype)

    def call_function(self, target, args, kwargs):
        if target is torch.ops.aten._assert_tensor_metadata.default:
            return None
        if kwargs.get("dtype") in (torch.float32, torch.float64):
            kwargs = {**kwargs, "dtype": self.dtype}
        return super().call_function(target, args, kwargs)

    def run_node(self, node):
        out = super().run_node(node)
        if node.name in self.record and isinstance(out, torch.Tensor):
            self.recorded[node.name] = out.detach().clone()
        return out


def run_graph(gm: fx.GraphModule, x: torch.Tensor, dtype: torch.dtype = torch.float64,
              record: Iterable[str] = ()) -> tuple[Any, dict[str, torch.Tensor]]:
    """The graph's output on ``x`` (cast to ``dtype``), and the recorded values by node name."""
    interp = CastingInterpreter(gm, dtype, record)
    with torch.no_grad():
        out = interp.run(cast(x, dtype))
    return out, interp.recorded


def _upstream(entry: fx.Node, exit: fx.Node, stop: set[fx.Node], inputs_allowed: bool) -> set[fx.Node]:
    """What ``exit`` reads, directly or not, walking back no further than ``entry`` and the ``stop`` nodes."""
    reached: set[fx.Node] = set()
    stack = [exit]
    while stack:
        node = stack.pop()
        if node is entry or node in reached:
            continue
        if node.op == "placeholder" and not inputs_allowed:
            raise NotIsolated(f"{exit.name} reads the graph input {node.name} besides {entry.name}")
        reached.add(node)
        if node not in stop:
            stack.extend(node.all_input_nodes)
    return reached


def _in_place_writers(exit: fx.Node, reached: set[fx.Node]) -> set[fx.Node]:
    """The in-place writes into what ``exit`` reads (DBB's BN-and-pad copies a value into slices of a
    padded tensor): they run before ``exit`` though no data edge leads from them to it."""
    aliases, writers = set(reached), set()
    for node in exit.graph.nodes:
        if node is exit:
            break
        schema = getattr(node.target, "_schema", None)
        if schema is None or not node.args or node.args[0] not in aliases:
            continue
        if schema.is_mutable:  # writes into its first argument
            writers.add(node)
        elif schema.returns and schema.returns[0].alias_info is not None:  # a view of it
            aliases.add(node)
    return writers


def _needed(entry: fx.Node, exit: fx.Node, writers: set[fx.Node], stop: set[fx.Node], inputs_allowed: bool):
    reached = _upstream(entry, exit, stop, inputs_allowed)
    for writer in writers:
        reached |= _upstream(entry, writer, stop, inputs_allowed)
    return reached


def part_nodes(entry: fx.Node, exit: fx.Node, scalars: Mapping[fx.Node, Any]) -> tuple[list[fx.Node], set[fx.Node]]:
    """The nodes ``exit`` needs once ``entry`` is given (with the in-place writes into what it reads),
    in graph order, and those of them whose value is a number taken from ``scalars`` (computed outside
    the part, e.g. the batch size read off the graph input). Raises NotIsolated when the part needs a
    tensor from outside itself."""
    writers = _in_place_writers(exit, _upstream(entry, exit, set(), inputs_allowed=True))
    reached = _needed(entry, exit, writers, set(), inputs_allowed=True)
    ordered = [n for n in exit.graph.nodes if n in reached]
    inside: set[fx.Node] = set()  # what depends on entry is computed from the given input
    for node in ordered:
        if any(a is entry or a in inside for a in node.all_input_nodes):
            inside.add(node)
    outside = {n for n in ordered if n not in inside and n in scalars}
    needed = _needed(entry, exit, writers, outside, inputs_allowed=False)
    return [n for n in ordered if n in needed], outside & needed


def run_part(gm: fx.GraphModule, entry: fx.Node, exit: fx.Node, x: torch.Tensor, dtype: torch.dtype,
             scalars: Mapping[fx.Node, Any]) -> torch.Tensor:
    """``exit``'s value when ``entry`` is ``x``, computed in ``dtype``: only the nodes in between
    run; numbers read from outside come from ``scalars`` (a profile of the whole graph)."""
    nodes, outside = part_nodes(entry, exit, scalars)
    interp = CastingInterpreter(gm, dtype)
    interp.env = {entry: cast(x, dtype)}
    with torch.no_grad():
        for node in nodes:
            interp.env[node] = scalars[node] if node in outside else interp.run_node(node)
    return interp.env[exit]
