"""The fx front-end's op table: one handler per ATen overload, a second one refused, and the ops
outside it left as region boundaries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactify.converter.frontends.fx.capture import capture_graph
from compactify.converter.frontends.fx.classify import FX_OPS, classify
from compactify.converter.frontends.fx.constants import Constants
from compactify.registry import DuplicateRegistration

aten = torch.ops.aten


def test_a_second_handler_for_an_op_is_refused():
    handler = FX_OPS[aten.conv2d.default]
    with pytest.raises(DuplicateRegistration, match="conv2d"):
        FX_OPS.register(aten.conv2d.default)(lambda node, data, consts: None)
    assert FX_OPS[aten.conv2d.default] is handler


class ConvReluScale(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return 2.0 * torch.relu(self.conv(x)) - 1.0


def test_each_node_gets_the_step_of_its_handler_and_relu_none():
    gm = capture_graph(ConvReluScale().eval(), torch.randn(2, 3, 8, 8))
    consts = Constants(gm)
    kinds = {n.target: (step.kind if (step := classify(n, consts)) else None)
             for n in gm.graph.nodes if n.op == "call_function"}
    assert kinds[aten.conv2d.default] == "conv"
    assert kinds[aten.relu.default] is None
    assert kinds[aten.mul.Tensor] == "scale" and kinds[aten.sub.Tensor] == "scale"
