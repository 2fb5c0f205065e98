"""The graph as the engine sees it: values in topological order, their users and shapes, and
which of them a front-end recognised as affine steps.

A front-end (``frontends.fx``, ``frontends.onnx``) builds an ``AffineGraph``; region finding
and planning read nothing else, so they work the same on any source format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Union

from compactify.converter.engine.steps import Layout, Step

# A dimension: an int, or the name of a symbolic one (the batch, a dynamic H).
Dim = Union[int, str]


@dataclass
class AffineGraph:
    nodes: list[Hashable]  # every value, in topological order
    users: dict[Hashable, list[Hashable]]  # the nodes reading each value (graph outputs read by "output")
    steps: dict[Hashable, Step]  # the affine ones, less any a front-end fenced (values written in place)
    shapes: dict[Hashable, tuple[Dim, ...]]  # symbolic where the graph is
    example_shapes: dict[Hashable, tuple[int, ...]]  # concrete, at the example input the plan is costed on
    flops: dict[Hashable, int]  # of each node at the example input (multiply-adds counted twice)
    labels: dict[Hashable, str] = field(default_factory=dict)  # the layer a node came from, as the user named it
    op_names: dict[Hashable, str] = field(default_factory=dict)  # "relu", "input", "output", ...
    param_sizes: dict[str, int] = field(default_factory=dict)  # every parameter a step may name
    layouts: dict[Hashable, Layout] = field(default_factory=dict)  # the nodes that only move data
    shape_reads: set[Hashable] = field(default_factory=set)  # nodes that read only their input's shape

    def describe(self, node: Hashable) -> str:
        return self.labels.get(node, str(node))

    def op_name(self, node: Hashable) -> str:
        return self.op_names.get(node, str(node))

    def shape(self, node: Hashable) -> tuple[Dim, ...] | None:
        return self.shapes.get(node)


def static(dim) -> int | None:
    """A dimension as an int, or None when it is symbolic."""
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None
