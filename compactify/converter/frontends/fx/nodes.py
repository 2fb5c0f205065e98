"""What a node of a captured graph says about itself: its shape, an argument given by position
or by name, and the layer it came from."""

from __future__ import annotations

import torch
from torch import fx


def shape_of(node: fx.Node) -> tuple | None:
    val = node.meta.get("val")
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def known_size(dim) -> int | None:
    """The dimension as an int, or None when it is symbolic (``int()`` of a SymInt would give
    the example's value, the batch of 2 the graph was traced with)."""
    if isinstance(dim, torch.SymInt):
        return dim.node.maybe_as_int()
    try:
        return int(dim)
    except (TypeError, ValueError):
        return None


def example_size(dim) -> int:
    """The dimension at the example input the graph was captured with (a symbolic one's hint, the
    batch of 2); TypeError where the capture kept none."""
    if isinstance(dim, int):
        return dim
    hint = getattr(getattr(dim, "node", None), "hint", None)
    if hint is None:
        raise TypeError(f"no example value for {dim}")
    return int(hint)


def engine_dims(shape) -> tuple:
    """A shape as the engine states it: ints, and names for symbolic dims."""
    return tuple(known_size(d) if known_size(d) is not None else str(d) for d in shape)


def arg(node: fx.Node, index: int, name: str, default):
    """An ATen argument, which the capture passes by position or by keyword."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def describe(node: fx.Node) -> str:
    """The layer a node came from, as the user named it (``features.3``), else the node name."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, _ = list(stack.values())[-1]
        path = path.replace("L['self'].", "").replace("L__self___", "")
        if path:
            return f"{path} ({node.name})"
    return node.name
