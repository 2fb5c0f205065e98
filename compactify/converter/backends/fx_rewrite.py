"""Apply the plan to the captured graph: merged regions become one layer, the rest is dropped.

The pass edits a GraphModule: each merged region's exit is replaced by a call to its new
layer reading the region's entry, then dead code elimination removes every node no
declared output needs (training-only heads and branches included), and parameters and
buffers no remaining node reads are deleted.
"""

from __future__ import annotations

import torch
from torch import fx

from compactify.converter.frontends.fx.nodes import known_size, shape_of
from compactify.converter.engine.plan import Decision
from compactify.converter.backends.names import fresh_name
from compactify.converter.backends.size_guard import check_spatial_size


def rewrite(gm: fx.GraphModule, decisions: list[Decision],
            input_size: tuple[int, ...] | None = None) -> tuple[fx.GraphModule, bool]:
    """Returns the rewritten module (edited in place) and whether anything changed. With
    ``input_size`` (the spatial size the graph was captured and its merges proved at) the
    module checks its input against it first."""
    changed = False
    taken = set(dict(gm.named_modules()))
    replaced: dict[fx.Node, fx.Node] = {}  # an earlier region's exit is a later region's entry
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for d in decisions:
        region = d.region
        entry = replaced.get(region.entry, region.entry)
        absorbed = {n for step in region.steps.values() for n in step.absorbs}
        if d.kind in ("dense", "factored"):
            name = fresh_name(f"merged_{region.exit.name}", taken)
            gm.add_submodule(name, d.module)
            with gm.graph.inserting_before(region.exit):
                new = gm.graph.call_module(name, (entry,))
                if d.composition is not None and getattr(d.composition.value, "ndim", None) == 0:
                    new = _restore_shape(gm, new, region.entry, region.exit)
            new.meta.update({k: v for k, v in region.exit.meta.items() if k in ("val", "tensor_meta")})
            region.exit.replace_all_uses_with(new, delete_user_cb=lambda u: u not in absorbed)
            replaced[region.exit] = new
            changed = True
        elif d.kind == "removed":
            region.exit.replace_all_uses_with(entry, delete_user_cb=lambda u: u not in absorbed)
            replaced[region.exit] = entry
            changed = True
        else:
            continue
        # Explicitly: DCE keeps ops it deems impure, such as dropout even in eval mode, and
        # the border writes a BN-and-pad step absorbed.
        for node in sorted(set(region.nodes) | absorbed, key=order.__getitem__, reverse=True):
            if not node.users:
                gm.graph.erase_node(node)
    if input_size:
        notes = [n for d in decisions for n in d.size_notes] or ["the graph was captured at this size"]
        changed |= _guard_input(gm, input_size, notes)
    changed |= gm.graph.eliminate_dead_code()
    changed |= _drop_unused_attributes(gm)
    gm.graph.lint()
    gm.recompile()
    return gm, changed


def _restore_shape(gm: fx.GraphModule, new: fx.Node, entry: fx.Node, exit: fx.Node) -> fx.Node:
    """A merged linear region may span a reshape that keeps the last axis (LeViT's
    ``flatten(0, 1)`` around BatchNorm1d); the merged layer keeps the entry's leading axes,
    so give its output the exit's shape back."""
    a, b = shape_of(entry), shape_of(exit)
    if a is None or b is None or [str(d) for d in a[:-1]] == [str(d) for d in b[:-1]]:
        return new
    target = [known_size(d) if known_size(d) is not None else -1 for d in b]
    return gm.graph.call_function(torch.ops.aten.reshape.default, (new, target))


def _guard_input(gm: fx.GraphModule, input_size: tuple[int, ...], notes: list[str]) -> bool:
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not inputs:
        return False
    x = inputs[0]
    why = notes[0] + (f" and {len(notes) - 1} more" if len(notes) > 1 else "")
    with gm.graph.inserting_after(inputs[-1]):
        guard = gm.graph.call_function(check_spatial_size, (x, tuple(input_size), why))
    guard.meta.update(x.meta)
    x.replace_all_uses_with(guard, delete_user_cb=lambda u: u is not guard)
    return True


def _drop_unused_attributes(gm: fx.GraphModule) -> bool:
    used = {n.target for n in gm.graph.nodes if n.op in ("get_attr", "call_module")}

    def needed(name: str) -> bool:
        return name in used or any(name.startswith(u + ".") for u in used)

    dropped = False
    names = [n for n, _ in gm.named_parameters(remove_duplicate=False)]
    names += [n for n, _ in gm.named_buffers(remove_duplicate=False)]
    for name in names:
        if needed(name):
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if hasattr(owner, leaf):
            delattr(owner, leaf)
            dropped = True
    gm.delete_all_unused_submodules()
    return dropped
