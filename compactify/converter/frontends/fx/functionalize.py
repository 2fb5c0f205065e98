"""In-place ops in a captured graph: rewrite the safe ones as pure ops, fence off the rest.

Real model code sums branches in place (``out += branch(x)`` in MobileOne, DBB, RepLKNet;
``x += identity`` in RepVGG) and uses ``ReLU(inplace=True)``; torch.export keeps them as
``aten.add_``/``aten.relu_``. An in-place op is its pure form when nothing else can see the
mutation: the mutated tensor is a fresh result (no view, no input, no parameter) and every
other reader of it runs before the mutation and is not a view. The mutations that stay
(writes into views, into inputs) are reported so that no region reads across them.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten


def _schema(node: fx.Node):
    target = node.target
    return target._schema if node.op == "call_function" and isinstance(target, torch._ops.OpOverload) else None


def is_view(node: fx.Node) -> bool:
    """The node's result aliases one of its inputs (slice, view, transpose, an in-place op)."""
    schema = _schema(node)
    return bool(schema and schema.returns and schema.returns[0].alias_info is not None)


def written_args(node: fx.Node) -> list[fx.Node]:
    schema = _schema(node)
    if schema is None:
        return []
    found = []
    for i, arg in enumerate(schema.arguments):
        if arg.alias_info is None or not arg.alias_info.is_write:
            continue
        value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name)
        if isinstance(value, fx.Node):
            found.append(value)
    return found


def _pure_form(node: fx.Node):
    """``aten.add.Tensor`` for ``aten.add_.Tensor``, or None when there is none."""
    target = node.target
    name = target._schema.name.split("::")[-1]
    if not name.endswith("_") or name.startswith("_"):
        return None
    packet = getattr(aten, name[:-1], None)
    if packet is None:
        return None
    pure = getattr(packet, target._overloadname, None)
    if pure is None or pure._schema.returns[0].alias_info is not None:
        return None
    return pure


def functionalize_inplace(gm: fx.GraphModule) -> tuple[fx.GraphModule, bool]:
    """Replace every in-place op whose mutation no other reader can see by its pure form."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed = False
    for node in list(gm.graph.nodes):
        written = written_args(node)
        if len(written) != 1 or node.args[:1] != (written[0],):
            continue
        pure = _pure_form(node)
        target = written[0]
        if pure is None or target.op != "call_function" or is_view(target):
            continue
        others = [u for u in target.users if u is not node]
        if any(order[u] > order[node] or is_view(u) for u in others):
            continue
        node.target = pure
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm, changed


def mutated_aliases(gm: fx.GraphModule, ignore: set[fx.Node] = frozenset()) -> set[fx.Node]:
    """Every node that aliases a tensor some op (outside ``ignore``) still writes in place:
    the written tensor, the tensors it is a view of, and every view of those. No region may
    read or produce one of them, since moving a read across the write changes what it sees."""
    bases = set()
    for node in gm.graph.nodes:
        if node in ignore:
            continue
        for arg in written_args(node):
            while is_view(arg) and isinstance(arg.args[0], fx.Node):
                bases.add(arg)
                arg = arg.args[0]
            bases.add(arg)
    aliases, stack = set(), list(bases)
    while stack:
        node = stack.pop()
        if node in aliases:
            continue
        aliases.add(node)
        stack.extend(u for u in node.users if is_view(u) and u.args and u.args[0] is node)
    return aliases
