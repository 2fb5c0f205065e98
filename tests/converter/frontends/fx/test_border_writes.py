"""A pad whose border is overwritten through slices: padding with the written value when the
writes cover exactly the border with one value per channel, and not affine otherwise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compactify.converter.frontends.fx.border_writes import border_fill
from compactify.converter.frontends.fx.capture import capture_graph
from compactify.converter.frontends.fx.classify import classify
from compactify.converter.frontends.fx.constants import Constants

aten = torch.ops.aten
C = 3
STRIPS = [(slice(None), slice(None), slice(0, 1), slice(None)),
          (slice(None), slice(None), slice(-1, None), slice(None)),
          (slice(None), slice(None), slice(None), slice(0, 1)),
          (slice(None), slice(None), slice(None), slice(-1, None))]


class PadThenWrite(nn.Module):
    """Pads by one, then writes ``values[i]`` (one number per channel) into strip ``i``."""

    def __init__(self, values: list[torch.Tensor]):
        super().__init__()
        for i, v in enumerate(values):
            self.register_buffer(f"v{i}", v.reshape(1, C, 1, 1))
        self.n = len(values)

    def forward(self, x):
        y = F.pad(x, [1, 1, 1, 1])
        for i in range(self.n):
            y[STRIPS[i]] = getattr(self, f"v{i}")
        return y


def _pad_step(model: nn.Module):
    gm = capture_graph(model.eval(), torch.randn(2, C, 5, 5))
    pad = next(n for n in gm.graph.nodes if n.target in (aten.pad.default, aten.constant_pad_nd.default))
    consts = Constants(gm)
    return pad, consts, classify(pad, consts)


def test_writes_of_one_value_per_channel_over_the_whole_border_are_padding_with_it():
    value = torch.tensor([0.5, -1.0, 2.0])
    pad, consts, step = _pad_step(PadThenWrite([value] * 4))
    fill = border_fill(pad, pad.args[0], ((1, 1), (1, 1)), C, consts)
    assert torch.equal(fill.values, value.double())
    assert fill.size_specific is None
    assert sum(n.target is aten.copy_.default for n in fill.absorbs) == 4
    assert step is not None and step.kind == "pad" and step.absorbs == fill.absorbs


def test_a_pad_nothing_writes_into_has_no_border_fill():
    pad, consts, step = _pad_step(PadThenWrite([]))
    assert border_fill(pad, pad.args[0], ((1, 1), (1, 1)), C, consts) is None
    assert step is not None and step.absorbs == ()


def test_a_border_left_partly_unwritten_is_not_padding():
    _, _, step = _pad_step(PadThenWrite([torch.ones(C)] * 3))
    assert step is None


def test_different_values_in_different_strips_are_not_padding():
    _, _, step = _pad_step(PadThenWrite([torch.ones(C)] * 3 + [torch.zeros(C)]))
    assert step is None
