"""The conv and linear layers of a contraction plan that truncation and pruning work on: each
merged region's operator and each single conv or linear layer left as it is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from compactify.converter.engine.algebra import AffineConv
from compactify.converter.engine.plan import Decision
from compactify.converter.frontends.fx.profile import GraphProfile


@dataclass
class Layer:
    index: int  # position in the decision list
    decision: Decision
    op: AffineConv  # after pruning
    entry_shape: tuple[int, ...]
    units_removed: list[int] = dataclasses.field(default_factory=list)
    inputs_removed: int = 0
    pruned_reason: str = ""

    @property
    def key(self) -> str:
        return self.decision.region.exit.name  # node names are unique; layer paths need not be

    @property
    def in_spatial(self) -> tuple[int, ...]:
        # conv: [N, C, *S] -> S; linear on [N, *T, C] -> T (the leading token dims)
        return self.entry_shape[2:] if self.op.ndim else self.entry_shape[1:-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The entry shape with as many channels as the (pruned) operator reads."""
        s = list(self.entry_shape)
        s[1 if self.op.ndim else -1] = self.op.in_channels
        return tuple(s)

    @property
    def changed(self) -> bool:
        return bool(self.units_removed or self.inputs_removed)


def _is_layer(d: Decision) -> bool:
    comp = d.composition
    if comp is None or not isinstance(comp.value, AffineConv):
        return False
    kinds = {d.region.steps[n].kind for n in d.region.nodes if n in d.region.steps}
    if not kinds & {"conv", "linear"} or comp.value.dilates_input:
        return False  # a folded BatchNorm or pad on its own, or a transposed conv: no factored form here
    if d.kind == "dense":
        return True
    return d.kind == "keep" and len(d.region.nodes) == 1 and comp.exact


def conv_layers(decisions: list[Decision], profile: GraphProfile) -> list[Layer]:
    out = []
    for i, d in enumerate(decisions):
        if not _is_layer(d):
            continue
        shape = profile.shapes.get(d.region.entry)
        if shape is None:
            continue
        out.append(Layer(i, d, d.composition.value, tuple(int(s) for s in shape)))
    return out
