"""Group-lasso pruning: units whose weights all went to zero output a constant; they are
removed with the next layer's matching inputs where the path between the two can be followed,
and their constant folded into the next layer's bias (see ``truncate``'s module docstring)."""

from __future__ import annotations

import math

import torch
from torch import fx

from compactify.converter.frontends.fx.profile import GraphProfile
from compactify.converter.lowrank import factor as L
from compactify.converter.lowrank.layers import Layer
from compactify.errors import NotContractibleError

aten = torch.ops.aten

# Elementwise ops a removed unit's constant goes through (evaluated on the constant).
_ACTIVATIONS = {
    aten.relu.default, aten.relu_.default, aten.leaky_relu.default, aten.leaky_relu_.default,
    aten.gelu.default, aten.silu.default, aten.silu_.default, aten.sigmoid.default, aten.tanh.default,
    aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default, aten.elu.default,
    aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default, aten.mish.default,
    aten.clone.default, aten.alias.default, aten.contiguous.default, aten.detach.default,
    aten.dropout.default,
}
# Per-channel ops that map a constant channel to the same constant.
_CONSTANT_KEEPING = {
    aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default,
    aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool3d.default,
}
PRUNING_LIMITS = (
    "units are removed only along conv/linear -> activations / max-pool / adaptive-avg-pool / "
    "spatial mean / flatten(1) -> conv/linear paths whose tensors have no other reader (a sum "
    "inside the next merged region is fine; a concat, a reshape or a second consumer is not), "
    "and only while neither layer gets more expensive; a removed unit's constant goes into the "
    "next layer's bias only when that layer pads nothing"
)


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def follow_constant(start: fx.Node, family: tuple[int, int] | None, profile: GraphProfile):
    """From a layer's output to the next tensor that is not a pass-through op: returns
    ``(node, family, repeat, fns, path)``, where ``repeat`` is how many features each channel
    became (flatten) and ``fns`` map a channel's constant along the way; None when the path
    holds an op this pass cannot follow or a tensor with another user."""
    node, repeat, fns, path = start, 1, [], []
    while True:
        user = _single_user(node)
        if user is None or user.op != "call_function" or user.args[0] is not node:
            return node, family, repeat, fns, path
        if any(isinstance(a, fx.Node) for a in list(user.args[1:]) + list(user.kwargs.values())):
            return node, family, repeat, fns, path
        target = user.target
        if target in _ACTIVATIONS:
            if target is aten.dropout.default and (len(user.args) < 3 or user.args[2]):
                return node, family, repeat, fns, path
            rest, kwargs = tuple(user.args[1:]), dict(user.kwargs)
            fns.append(lambda t, f=target, a=rest, k=kwargs: f(t, *a, **k))
        elif target in _CONSTANT_KEEPING:
            if family is None or family[1] != 1:
                return node, family, repeat, fns, path
        elif target is aten.mean.dim:
            shape = profile.shapes.get(node)
            dims = user.args[1] if len(user.args) > 1 else None
            keep = user.args[2] if len(user.args) > 2 else user.kwargs.get("keepdim", False)
            if family is None or family[1] != 1 or shape is None or not dims:
                return node, family, repeat, fns, path
            dims = {d % len(shape) for d in dims}
            if dims != set(range(2, len(shape))):
                return node, family, repeat, fns, path
            family = family if keep else (0, 1)
        elif target is aten.flatten.using_ints:
            shape = profile.shapes.get(node)
            start_dim = user.args[1] if len(user.args) > 1 else 0
            end_dim = user.args[2] if len(user.args) > 2 else -1
            if family is None or family[1] != 1 or shape is None or start_dim != 1 or end_dim % len(shape) != len(shape) - 1:
                return node, family, repeat, fns, path
            repeat *= math.prod(shape[2:])
            family = (0, 1)
        else:
            return node, family, repeat, fns, path
        path.append(str(getattr(target, "__name__", target)).split(".")[0])
        node = user


def prune_dead_units(layers: list[Layer], profile: GraphProfile) -> list[dict]:
    """Remove dead units along the paths :func:`follow_constant` accepts; updates ``layers`` in place."""
    by_entry: dict[fx.Node, Layer] = {}
    for layer in layers:
        by_entry.setdefault(layer.decision.region.entry, layer)
    notes = []
    for producer in layers:
        p_op = producer.op
        dead = L.zero_units(p_op, 0.0, ignore_bias=True)
        if not bool(dead.any()):
            continue
        found = follow_constant(producer.decision.region.exit, producer.decision.composition.family, profile)
        end, family, repeat, fns, path = found
        consumer = by_entry.get(end)
        note = {"producer": producer.decision.region.name, "dead_units": int(dead.sum()), "removed": 0,
                "consumer": consumer.decision.region.name if consumer else None, "through": path}
        notes.append(note)
        if consumer is None or consumer is producer:
            note["why_not"] = "the next layer is not reached through ops this pass can follow"
            continue
        region = consumer.decision.region
        if any(u not in region.nodes for u in end.users):
            note["why_not"] = "the next layer's input is also used elsewhere"
            continue
        if consumer.decision.composition.family != family or consumer.op.in_channels != p_op.out_channels * repeat:
            note["why_not"] = "the channel layout between the two layers is not one this pass follows"
            continue
        const = p_op.bias.clone()
        with torch.no_grad():
            for fn in fns:
                const = fn(const)
        const = torch.as_tensor(const, dtype=torch.float64)
        padded = any(b or a for b, a in consumer.op.padding)
        removable = dead & ((const == 0) | (not padded))
        if not bool(removable.any()):
            note["why_not"] = "the dead units send a non-zero constant into a zero-padded layer"
            continue
        keep = ~removable
        try:
            new_p = L.drop_outputs(p_op, keep)
            fill = torch.where(removable, const, torch.zeros_like(const)).repeat_interleave(repeat)
            new_c = L.drop_inputs(consumer.op, keep.repeat_interleave(repeat), fill=fill)
        except NotContractibleError as exc:
            note["why_not"] = str(exc)
            continue
        if (L.dense_flops(new_p, producer.in_spatial) > L.dense_flops(p_op, producer.in_spatial)
                or L.dense_flops(new_c, consumer.in_spatial) > L.dense_flops(consumer.op, consumer.in_spatial)):
            note["why_not"] = "removing them would break the group structure and cost more"
            continue
        units = removable.nonzero().flatten().tolist()
        producer.op, consumer.op = new_p, new_c
        producer.units_removed += units
        consumer.inputs_removed += len(units) * repeat
        note["removed"] = len(units)
        if len(units) < int(dead.sum()):
            note["why_not"] = "the other dead units send a non-zero constant into a zero-padded layer"
    return notes
