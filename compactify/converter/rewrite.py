"""Apply the plan to the captured graph: merged regions become one layer, the rest is dropped.

The pass edits a GraphModule: each merged region's exit is replaced by a call to its new
layer reading the region's entry, then dead code elimination removes every node no
declared output needs (training-only heads and branches included), and parameters and
buffers no remaining node reads are deleted.
"""

from __future__ import annotations

from torch import fx

from compactify.converter.plan import Decision


def rewrite(gm: fx.GraphModule, decisions: list[Decision]) -> tuple[fx.GraphModule, bool]:
    """Returns the rewritten module (edited in place) and whether anything changed."""
    changed = False
    taken = set(dict(gm.named_modules()))
    replaced: dict[fx.Node, fx.Node] = {}  # an earlier region's exit is a later region's entry
    for d in decisions:
        region = d.region
        entry = replaced.get(region.entry, region.entry)
        if d.kind in ("dense", "factored"):
            name = _unique(f"merged_{region.exit.name}", taken)
            gm.add_submodule(name, d.module)
            with gm.graph.inserting_before(region.exit):
                new = gm.graph.call_module(name, (entry,))
            new.meta.update({k: v for k, v in region.exit.meta.items() if k in ("val", "tensor_meta")})
            region.exit.replace_all_uses_with(new)
            replaced[region.exit] = new
            changed = True
        elif d.kind == "removed":
            region.exit.replace_all_uses_with(entry)
            replaced[region.exit] = entry
            changed = True
        else:
            continue
        # Explicitly: DCE keeps ops it deems impure, such as dropout even in eval mode.
        for node in reversed(region.nodes):
            if not node.users:
                gm.graph.erase_node(node)
    changed |= gm.graph.eliminate_dead_code()
    changed |= _drop_unused_attributes(gm)
    gm.graph.lint()
    gm.recompile()
    return gm, changed


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        i += 1
        candidate = f"{name}_{i}"
    taken.add(candidate)
    return candidate


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
