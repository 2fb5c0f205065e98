"""The contraction engine on whole models: regions found in the graph, exactness decided."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compactify.converter.pipeline.contraction import contract

from compactify.converter.frontends.fx.check import example_input, reference_float64


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def _decisions(result):
    return {d.region.name: d.kind for d in result.decisions}


def _error64(model, compact, shape):
    x = example_input(shape, seed=123)
    ref = reference_float64(model)(x.double())
    return ((compact(x).double() - ref).abs().max() / ref.abs().max()).item()


class BiasThenNoBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1, padding=1, bias=True)
        self.b = nn.Conv2d(12, 12, 3, bias=False)
        self.c = nn.Conv2d(12, 5, 1, bias=False)

    def forward(self, x):
        return F.relu(self.c(self.b(self.a(x))))


def test_first_layer_bias_is_kept_when_later_layers_have_none():
    model = BiasThenNoBias().eval()
    with torch.no_grad():
        model.a.bias.normal_()
    r = contract(model, (2, 3, 10, 10))
    assert [d.kind for d in r.decisions] == ["dense"]
    merged = [m for m in r.compact.modules() if isinstance(m, nn.Conv2d)]
    assert len(merged) == 1 and merged[0].bias is not None
    assert r.max_rel_error < 1e-6


class DepthwiseChain(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.chain = nn.Sequential(
            nn.Conv2d(c, c, 1, padding=1, groups=c), nn.Conv2d(c, c, 3, groups=c), nn.BatchNorm2d(c),
            nn.Conv2d(c, c, 1, groups=c),
        )

    def forward(self, x):
        return self.chain(x).relu()


def test_depthwise_chain_with_biases_stays_depthwise():
    model = _randomize_bn(DepthwiseChain())
    r = contract(model, (2, 8, 9, 9))
    convs = [m for m in r.compact.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].groups == 8
    assert r.max_rel_error < 1e-6


class SamePaddingAfterBiased1x1(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(4, 8, 1)
        self.kxk = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return self.kxk(self.pw(x)).relu()


def test_same_padding_after_biased_1x1_is_not_merged_silently():
    model = SamePaddingAfterBiased1x1().eval()
    r = contract(model, (2, 4, 8, 8))
    assert {d.kind for d in r.decisions} == {"keep"}
    assert "not exact" in r.decisions[0].reason
    assert r.warnings and "kxk" in r.warnings[0] and "pw" in r.warnings[0] and "border" in r.warnings[0]
    assert r.max_rel_error < 1e-6  # left as it was: still the same function

    approx = contract(model, (2, 4, 8, 8), allow_approximate=True)
    assert [d.kind for d in approx.decisions] == ["dense"]
    assert approx.max_rel_error > 1e-3  # and the report says how far off it is


class CKPaddedEverywhere(nn.Module):
    def __init__(self):
        super().__init__()
        self.ck = nn.Sequential(*[nn.Conv2d(4, 4, 3, padding=1) for _ in range(3)])

    def forward(self, x):
        return self.ck(x).relu()


def test_ck_with_padding_on_every_3x3_is_not_merged_silently():
    r = contract(CKPaddedEverywhere().eval(), (2, 4, 12, 12))
    assert {d.kind for d in r.decisions} == {"keep"}
    assert r.warnings and "ck.1" in r.warnings[0]


class SharedConvTwoSites(nn.Module):
    """One conv module called twice, with BatchNorm on one path only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)

    def forward(self, x):
        a = self.bn(self.conv(x)).relu()
        b = self.conv(x * 2.0).relu()
        return a + b


def test_module_called_at_two_sites_with_batchnorm_on_one_path():
    model = _randomize_bn(SharedConvTwoSites())
    r = contract(model, (2, 3, 8, 8))
    assert "dense" in _decisions(r).values()
    assert r.max_rel_error < 1e-6
    assert _error64(model, r.compact, (3, 3, 8, 8)) < 1e-6


class StrideFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.b = nn.Conv2d(16, 16, 3)
        self.c = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        return self.c(self.b(self.a(x))).relu()


def test_stride_on_first_layer_of_a_chain():
    r = contract(StrideFirst().eval(), (2, 3, 17, 17))
    conv = next(m for m in r.compact.modules() if isinstance(m, nn.Conv2d))
    assert conv.stride == (2, 2) and conv.kernel_size == (7, 7)
    assert r.max_rel_error < 1e-6


class Functional(nn.Module):
    """Written like the official ExpandNets code: functional calls and raw parameters."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w1 = nn.Parameter(torch.randn(16, 3, 1, 1, generator=g))
        self.b1 = nn.Parameter(torch.randn(16, generator=g))
        self.w2 = nn.Parameter(torch.randn(16, 16, 3, 3, generator=g) * 0.1)
        self.fc1 = nn.Parameter(torch.randn(64, 16 * 6 * 6, generator=g) * 0.05)
        self.fc2 = nn.Parameter(torch.randn(64, 10, generator=g) * 0.1)
        self.scale = nn.Parameter(torch.rand(10, generator=g) + 0.5)

    def forward(self, x):
        h = F.conv2d(x, self.w1, self.b1, padding=1)
        h = F.conv2d(h, self.w2)
        h = F.relu(h).flatten(1)
        h = F.linear(h, self.fc1)
        h = F.dropout(h, 0.5, training=self.training)
        return (h @ self.fc2) * self.scale + 1.0


def test_functional_calls_are_found_and_merged():
    model = Functional().eval()
    r = contract(model, (2, 3, 6, 6))
    kinds = sorted(_decisions(r).values())
    assert kinds == ["dense", "dense"]
    assert r.params_after < r.params_before
    assert r.max_rel_error < 1e-6


class RepBlock(nn.Module):
    """RepVGG-style training block, plus a ResNet-style add that joins two regions."""

    def __init__(self, c=6):
        super().__init__()
        self.k3 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.k1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c))
        self.kx = nn.Sequential(nn.Conv2d(c, c, (1, 3), padding=(0, 1), bias=False), nn.BatchNorm2d(c))
        self.id = nn.BatchNorm2d(c)
        self.pool = nn.AvgPool2d(3, 1, 1)
        self.short = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c))
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x):
        y = (self.k3(x) + self.k1(x) + self.kx(x) + self.id(x) + self.pool(x)).relu()
        return (self.body(y) + self.short(x)).relu()


def test_summed_branches_merge_and_a_join_of_two_regions_stays_an_add():
    model = _randomize_bn(RepBlock())
    r = contract(model, (2, 6, 7, 7))
    convs = [m for m in r.compact.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3  # the five branches, the body, the shortcut
    assert all(not isinstance(m, nn.BatchNorm2d) for m in r.compact.modules())
    assert r.max_rel_error < 1e-6


class Bottleneck(nn.Module):
    def __init__(self, m=64, b=4):
        super().__init__()
        self.a = nn.Conv2d(m, b, 1)
        self.k = nn.Conv2d(b, b, 3, padding=0)
        self.c = nn.Conv2d(b, m, 1)
        self.pw = nn.Conv2d(m, m, 1, bias=False)
        self.dw = nn.Conv2d(m, m, 3, groups=m)

    def forward(self, x):
        return self.dw(self.pw(self.c(self.k(self.a(x)).relu()).relu())).relu()


def test_merging_that_would_cost_more_is_left_alone():
    r = contract(Bottleneck().eval(), (2, 64, 10, 10))
    costly = [d for d in r.decisions if d.kind == "keep" and "cost more" in d.reason]
    assert costly, [d.reason for d in r.decisions]
    assert r.flops_after <= r.flops_before
    assert r.max_rel_error < 1e-6


class SeparableWithBatchNorm(nn.Module):
    """dw 3x3 + BN + pw 1x1 + BN: merging whole costs more, but each BN still folds."""

    def __init__(self, c=32, n=48):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), nn.BatchNorm2d(c),
                                  nn.Conv2d(c, n, 1, bias=False), nn.BatchNorm2d(n))

    def forward(self, x):
        return self.body(x).relu()


def test_a_chain_too_costly_to_merge_whole_is_cut_and_its_batchnorms_folded():
    model = _randomize_bn(SeparableWithBatchNorm())
    r = contract(model, (2, 32, 8, 8))
    assert not [n for n in r.compact.graph.nodes if n.op == "call_function" and "batch_norm" in str(n.target)]
    # The first BN's shift rides through the 1x1 (no padding there), so the dw conv needs no bias.
    assert r.params_after == 32 * 9 + 32 * 48 + 48
    assert r.max_rel_error < 1e-6


class WithAuxiliary(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 4)
        self.aux = nn.Sequential(nn.Conv2d(8, 32, 1), nn.Flatten(), nn.LazyLinear(4))

    def forward(self, x):
        h = self.body(x)
        main = self.head(h.mean((2, 3)))
        return main, self.aux(h)


def test_declared_outputs_drop_training_only_heads():
    from compactify.converter.frontends.fx.capture import select_outputs

    model = WithAuxiliary().eval()
    model(torch.randn(1, 3, 8, 8))  # materialise the lazy layer
    only_main = select_outputs(model, "0", torch.randn(1, 3, 8, 8))
    r = contract(only_main, (2, 3, 8, 8))
    names = [n for n, _ in r.compact.named_parameters()]
    assert not any("aux" in n for n in names)
    assert r.params_after < sum(p.numel() for p in model.body.parameters()) + 40
    assert r.max_rel_error < 1e-6


@pytest.mark.parametrize("mode", ["cl", "ck", "fc", "ck+fc"])
def test_smallnet7_expansions_contract_to_the_compact_net(mode):
    """Issue 2's end-to-end bar: no larger than SmallNet-7 (66,186) and rel error <= 1e-6."""
    from compactify.models import create_model

    torch.manual_seed(0)
    model = _randomize_bn(create_model(f"smallnet7-{mode}"))
    r = contract(model, (1, 3, 32, 32))
    assert r.params_after <= 66_186
    assert r.max_rel_error <= 1e-6
    assert all(d.kind in ("dense", "keep") for d in r.decisions)
    assert _error64(model, r.compact, (4, 3, 32, 32)) <= 1e-6


def test_program_exported_with_core_aten_decompositions():
    """A .pt2 made with run_decompositions: convolution, _native_batch_norm_legit_no_training, addmm."""
    from compactify.converter.frontends.fx.capture import graph_module

    model = _randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 1, padding=1), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.Linear(16, 4)))
    program = torch.export.export(model, (torch.randn(2, 3, 6, 6),)).run_decompositions()
    captured = graph_module(program)
    r = contract(captured, (2, 3, 6, 6))
    assert [d.kind for d in r.decisions] == ["dense", "dense"]
    assert _error64(model, r.compact, (2, 3, 6, 6)) < 1e-6


class Conv1dChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(4, 16, 1, padding=2)
        self.b = nn.Conv1d(16, 16, 5, dilation=2, stride=2)
        self.bn = nn.BatchNorm1d(16)

    def forward(self, x):
        return self.bn(self.b(self.a(x))).relu()


def test_conv1d_chain_with_batchnorm1d():
    model = _randomize_bn(Conv1dChain())
    r = contract(model, (2, 4, 40))
    convs = [m for m in r.compact.modules() if isinstance(m, nn.Conv1d)]
    assert len(convs) == 1 and convs[0].dilation == (2,)
    assert r.max_rel_error < 1e-6


class _PaddedChain(nn.Module):
    """A biased 3x3 "same" conv into another: the merge is not exact on the borders."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x))


@pytest.mark.parametrize("size", [8, 64])
def test_a_wrong_merge_from_a_planted_algebra_fault_is_withdrawn_not_written(monkeypatch, size):
    """Plant a fault in the padding rule (every composition declared exact): the region's float64 check and
    the network's both see the merge is off, so it is withdrawn and the region keeps its two convs. At 64x64
    the region is checked on a smaller input (it claims to be exact at every size), which still has the
    borders where the fault shows."""
    from compactify.converter.engine import algebra

    model = _PaddedChain().eval()
    assert all(d.kind == "keep" for d in contract(model, (1, 3, size, size)).decisions)  # the rule refuses it
    real = algebra.compose
    monkeypatch.setattr(algebra, "compose", lambda *a, **k: dataclasses.replace(real(*a, **k), exact=True,
                                                                                all_sizes=True, reason=""))
    r = contract(model, (1, 3, size, size))
    region = r.check["regions"][0]
    assert region["input_shape"] == [1, 3, min(size, 12), min(size, 12)] and region["max_rel_error"] > 1e-3
    withdrawn = [d for d in r.decisions if d.stopped_by == "withdrawn"]
    assert len(withdrawn) == 1 and withdrawn[0].kind == "keep" and "merge withdrawn" in withdrawn[0].reason
    assert any("merge withdrawn" in w for w in r.warnings)
    assert sum(isinstance(m, nn.Conv2d) for m in r.compact.modules()) == 0  # no merged conv module written
    assert r.params_after == r.params_before and r.max_rel_error < 1e-6
    x = torch.randn(2, 3, size, size)
    ref = reference_float64(model)(x.double())
    assert float((r.compact(x).double() - ref).abs().max() / ref.abs().max()) < 1e-6
