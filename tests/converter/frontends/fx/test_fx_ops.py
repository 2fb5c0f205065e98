"""The fx front-end's op table: one handler per ATen overload, a second one refused, and the ops
outside it left as region boundaries."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

from compactify.converter.engine import algebra as A
from compactify.converter.frontends.fx.capture import capture_graph
from compactify.converter.frontends.fx.check import reference_float64
from compactify.converter.frontends.fx.classify import FX_OPS, classify
from compactify.converter.frontends.fx.constants import Constants
from compactify.converter.pipeline.contraction import contract
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


class UpBN(nn.Module):
    """A transposed conv and its BatchNorm, as an upsampling decoder block writes them."""

    def __init__(self, nd, **kwargs):
        super().__init__()
        conv_t = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[nd - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[nd - 1]
        self.up = conv_t(4, 6, **kwargs)
        self.bn = bn(6)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.normal_()
            self.bn.bias.normal_()

    def forward(self, x):
        return torch.relu(self.bn(self.up(x)))


@pytest.mark.parametrize("nd,kwargs,size", [
    (1, {"kernel_size": 4, "stride": 2, "padding": 1, "dilation": 2, "output_padding": 1}, (9,)),
    (2, {"kernel_size": 3, "stride": (2, 3), "padding": 1, "output_padding": (1, 2), "groups": 2}, (5, 6)),
    (3, {"kernel_size": 2, "stride": 2, "bias": False}, (3, 4, 3)),
], ids=["1d-dilated", "2d-grouped", "3d"])
def test_conv_transpose_and_its_batchnorm_become_one_conv_transpose(nd, kwargs, size):
    torch.manual_seed(0)
    model = UpBN(nd, **kwargs).eval()
    r = contract(model, (2, 4, *size))
    assert [d.kind for d in r.decisions] == ["dense"] and r.decisions[0].region.ops == ["conv_transpose", "batchnorm"]
    kinds = [type(m).__name__ for m in r.compact.modules() if not isinstance(m, (fx.GraphModule, nn.Sequential))]
    assert kinds == [f"ConvTranspose{nd}d"]
    assert r.params_after == r.params_before - 2 * 6 + (0 if kwargs.get("bias", True) else 6)  # BN out, maybe a bias in
    assert r.max_rel_error < 1e-6
    x = torch.randn(3, 4, *size)
    with torch.no_grad():
        ref = reference_float64(model)(x.double())
        assert float((r.compact(x).double() - ref).abs().max() / ref.abs().max()) < 1e-6


class Convolution(nn.Module):
    """``aten.convolution`` with ``transposed=True``, the form core-ATen decompositions leave."""

    def __init__(self, padding):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 6, 3, 3))
        self.padding = padding

    def forward(self, x):
        return aten.convolution.default(x, self.weight, None, [2, 2], [self.padding] * 2, [1, 1], True, [1, 1], 1) * 3.0


@pytest.mark.parametrize("padding", [1, 3])
def test_transposed_convolution_step_or_boundary(padding):
    """A crop beyond the kernel's reach (padding 3 on a 3x3) has no conv form here: left as it is."""
    gm = capture_graph(Convolution(padding).eval(), torch.randn(1, 4, 5, 5))
    consts = Constants(gm)
    node = next(n for n in gm.graph.nodes if n.target is aten.convolution.default)
    step = classify(node, consts)
    if padding > 2:
        assert step is None
        return
    assert step.kind == "conv_transpose" and step.op.input_dilation == (2, 2)
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    w = gm.get_parameter(node.args[1].target).double()
    torch.testing.assert_close(A.apply(step.op, x), F.conv_transpose2d(x, w, None, 2, padding, 1))


@pytest.mark.parametrize("width,after,merged", [
    (8, nn.Conv2d(8, 8, 3, padding=1, bias=False), True),  # 4x4 transposed kernel: fewer FLOPs than both
    (2, nn.Conv2d(2, 16, 1), False),  # a 2-channel bottleneck costs less than its 16x16 product
], ids=["then-3x3", "bottleneck"])
def test_transposed_conv_chain_merges_only_when_cheaper(width, after, merged):
    torch.manual_seed(0)
    model = nn.Sequential(nn.ConvTranspose2d(16, width, 2, 2, bias=False), after, nn.ReLU()).eval()
    r = contract(model, (1, 16, 6, 7))
    assert [d.kind for d in r.decisions] == (["dense"] if merged else ["keep", "keep"])  # kept: cut in two
    assert r.flops_after <= r.flops_before and r.max_rel_error < 1e-6
    assert merged or all(d.stopped_by == "not cheaper" for d in r.decisions)
