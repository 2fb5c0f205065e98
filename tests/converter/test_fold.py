"""A BatchNorm before a layout op that hands its channels whole to the last axis folds into the
Linears after it, as Next-ViT's ``merge_pre_bn`` does (issue 23); a layer read only by layers that
start from it goes into them where that pays (engine.fold). Each construct is checked against the
source run in float64 on random inputs, from a PyTorch source and from its ONNX export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compactify.converter.engine.exactness import RegionCheck, withdraw_failed
from compactify.converter.engine.op_semantics import permuted_axes, reshaped_axes
from compactify.converter.pipeline.contraction import (
    contract,
    contract_onnx,
    plan_contraction,
)

from .frontends.onnx.test_onnx_exports import export, fresh_runs
from .test_constructs import _bn, _error, _exact


def _bn1d(c: int, seed: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(c)
    bn.load_state_dict({k: v for k, v in _bn(c, seed).state_dict().items()})
    return bn


class Tokens(nn.Module):
    """conv -> ReLU -> BatchNorm2d -> a layout op -> one Linear or q, k and v."""

    def __init__(self, layout: str, readers: int = 1, c: int = 8, bias: bool = True):
        super().__init__()
        self.layout = layout
        self.conv, self.bn = nn.Conv2d(3, c, 3, padding=1), _bn(c, 1)
        self.heads = nn.ModuleList(nn.Linear(c, c, bias=bias) for _ in range(readers))

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(x)))
        b, c, h, w = x.shape
        if self.layout == "flatten_transpose":
            t = x.flatten(2).transpose(1, 2)
        elif self.layout == "reshape_permute":
            t = x.reshape(b, c, -1).permute(0, 2, 1)
        elif self.layout == "nhwc":
            t = x.permute(0, 2, 3, 1)
        else:  # einops' rearrange("b c h w -> b (h w) c") as it lowers
            t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        out = self.heads[0](t)
        for head in self.heads[1:]:
            out = out * head(t)
        return out


class Tokens1d(nn.Module):
    """A 3D token tensor: BatchNorm1d on [B, C, N], then transpose to [B, N, C] and a Linear."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.fc0, self.bn, self.fc = nn.Linear(c, c), _bn1d(c, 2), nn.Linear(c, 5)

    def forward(self, x):
        t = torch.relu(self.fc0(x)).transpose(1, 2)
        return self.fc(self.bn(t).transpose(1, 2))


class ReducedAttention(nn.Module):
    """Next-ViT's NTB: norm1 -> reshape -> transpose to tokens, read by q and by the spatial
    reduction (transpose, AvgPool1d, BatchNorm1d, transpose) that feeds k and v."""

    def __init__(self, c: int = 8, sr: int = 2):
        super().__init__()
        self.conv, self.norm1 = nn.Conv2d(3, c, 3, padding=1), _bn(c, 3)
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.sr, self.norm = nn.AvgPool1d(sr * sr, sr * sr), _bn1d(c, 4)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        b, c, _, _ = x.shape
        t = self.norm1(x).reshape(b, c, -1).transpose(-1, -2)
        q = self.q(t)
        r = self.norm(self.sr(t.transpose(1, 2))).transpose(1, 2)
        return q @ (self.k(r) * self.v(r)).transpose(1, 2)


class SplitHeads(nn.Module):
    """The channels split into heads before the Linear: the BatchNorm's channels are no longer
    one axis, so it must not fold."""

    def __init__(self, c: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.conv, self.bn, self.fc = nn.Conv2d(3, c, 3, padding=1), _bn(c, 5), nn.Linear(c // heads, 4)

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(x)))
        b, c, h, w = x.shape
        return self.fc(x.reshape(b, self.heads, c // self.heads, h * w).transpose(2, 3))


class AlsoReadElsewhere(Tokens):
    """The tokens also go through a ReLU: the BatchNorm's output is needed as it is."""

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(x)))
        t = x.flatten(2).transpose(1, 2)
        return self.heads[0](t) + torch.relu(t)


class PaddedAfter(nn.Module):
    """A BatchNorm carried through NHWC and back into a padded 3x3 conv: its shift would reach the
    zero border, the trap of design.md, so it must not fold."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.conv, self.bn, self.conv2 = nn.Conv2d(3, c, 3, padding=1), _bn(c, 6), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        x = self.bn(torch.relu(self.conv(x)))
        return self.conv2(x.permute(0, 2, 3, 1).permute(0, 3, 1, 2))


class Projection(nn.Module):
    """A Linear (c -> width) read only by q, k and v (width -> c): it merges into them only when
    three composed layers cost less than the four, i.e. when it is wide enough."""

    def __init__(self, c: int = 16, width: int = 16):
        super().__init__()
        self.proj = nn.Linear(c, width)
        self.q, self.k, self.v = nn.Linear(width, c), nn.Linear(width, c), nn.Linear(width, c)

    def forward(self, x):
        t = self.proj(torch.relu(x))
        return self.q(t) * self.k(t) + self.v(t)


def _batchnorms(r) -> int:
    return sum(n.op == "call_function" and "batch_norm" in str(n.target) for n in r.compact.graph.nodes)


def _folded(r) -> list[str]:
    return [d.region.name for d in r.decisions if d.folded_into]


@pytest.mark.parametrize("layout", ["flatten_transpose", "reshape_permute", "nhwc", "rearrange"])
@pytest.mark.parametrize("readers", [1, 3])
def test_batchnorm_before_a_layout_op_folds_into_the_linears(layout, readers):
    model = Tokens(layout, readers)
    r = _exact(model, (2, 3, 6, 6))
    assert _batchnorms(r) == 0 and _folded(r) == ["bn"]
    assert r.params_after == sum(p.numel() for p in model.parameters()) - 2 * 8


def test_batchnorm1d_on_tokens_folds_past_the_transpose():
    r = _exact(Tokens1d(), (2, 7, 8))
    assert _batchnorms(r) == 0


def test_next_vit_attention_folds_both_batchnorms_through_the_average_pool():
    r = _exact(ReducedAttention(), (2, 3, 4, 4))
    assert _batchnorms(r) == 0
    assert sorted(_folded(r)) == ["norm", "norm1"]
    leads = {d.region.name for d in r.decisions if d.lead is not None}
    assert leads == {"q", "k", "v"}


@pytest.mark.parametrize("model", [SplitHeads(), AlsoReadElsewhere("flatten_transpose"), PaddedAfter()],
                         ids=["split", "shared", "padded"])
def test_batchnorm_stays_where_it_cannot_fold(model):
    r = _exact(model, (2, 3, 6, 6))
    assert _batchnorms(r) == 1 and not _folded(r)


def test_batchnorm_stays_where_the_readers_would_need_more_biases_than_it_holds():
    # Three bias-free Linears would each need a bias (3c) to take a BatchNorm of 2c parameters.
    r = _exact(Tokens("flatten_transpose", 3, bias=False), (2, 3, 6, 6))
    assert _batchnorms(r) == 1
    r = _exact(Tokens("flatten_transpose", 2, bias=False), (2, 3, 6, 6))
    assert _batchnorms(r) == 0


@pytest.mark.parametrize("width,merges", [(24, True), (16, True), (4, False)])
def test_linear_before_q_k_v_merges_only_where_it_pays(width, merges):
    model = Projection(width=width)
    r = _exact(model, (2, 5, 16))
    assert ("proj" in _folded(r)) is merges
    before = sum(p.numel() for p in model.parameters())
    assert r.params_after == (3 * (16 * 16 + 16) if merges else before)
    assert r.flops_after <= r.flops_before
    rows = {row["region"]: row for row in r.check["regions"]}
    if merges:  # each merged layer reads the projection's input: checked at that shape
        assert all(rows[n]["passed"] and rows[n]["input_shape"][-1] == 16 for n in "qkv")


def test_a_folded_batchnorm_is_checked_in_the_layers_it_went_into():
    r = _exact(Tokens("flatten_transpose", 3), (2, 3, 6, 6))
    rows = {row["region"]: row for row in r.check["regions"]}
    assert "folded into" in rows["bn"]["skipped"]
    assert all(rows[n]["passed"] for n in ("heads.0", "heads.1", "heads.2"))


# ---------------------------------------------------------------------------------------
# The same constructs as ONNX files


def _onnx_exact(model: nn.Module, shape):
    torch.manual_seed(0)
    src = export(model.eval(), shape, dynamo=False)
    r = contract_onnx(src)
    assert r.max_rel_error <= 1e-6
    for _, truth, got in fresh_runs(src, r.compact, shape):
        assert np.abs(got - truth).max() / np.abs(truth).max() <= 1e-6
    return r, src


def _onnx_batchnorms(model: onnx.ModelProto) -> int:
    return sum(n.op_type == "BatchNormalization" for n in model.graph.node)


@pytest.mark.parametrize("model,shape", [
    (Tokens("flatten_transpose", 3), (2, 3, 6, 6)),
    (Tokens("nhwc", 1), (2, 3, 6, 6)),
    (Tokens1d(), (2, 7, 8)),
    (ReducedAttention(), (2, 3, 4, 4)),
], ids=["flatten_transpose_qkv", "nhwc", "tokens1d", "next_vit_attention"])
def test_onnx_batchnorm_before_a_transpose_folds(model, shape):
    r, src = _onnx_exact(model, shape)
    assert _onnx_batchnorms(src) >= 1 and _onnx_batchnorms(r.compact) == 0


def test_onnx_batchnorm_stays_before_split_heads():
    r, src = _onnx_exact(SplitHeads(), (2, 3, 6, 6))
    assert _onnx_batchnorms(r.compact) == _onnx_batchnorms(src) == 1


def test_the_fold_holds_at_every_size_with_dynamic_hw():
    model = ReducedAttention().eval()
    r = contract(model, (2, 3, 4, 4), dynamic_hw=True)
    assert _batchnorms(r) == 0 and sorted(_folded(r)) == ["norm", "norm1"]
    assert _error(model, r.compact, (3, 3, 8, 12)) <= 1e-6


@pytest.mark.parametrize("before,after,channels,kept", [
    (("B", 8, 4, 4), ("B", 8, 16), 1, 1),  # flatten(2)
    (("B", 8, "H", "W"), ("B", 8, "H*W"), 1, 1),
    ((2, 8, 4, 4), (2, 8 * 16), 1, None),  # flatten(1): channels merged with the pixels
    ((2, 8, 4, 4), (2, 2, 4, 16), 1, None),  # channels split into heads
    (("B", 16, 8), ("B", 16, 2, 4), 2, None),
    (("B", 16, 8), ("B", 4, 4, 8), 2, 3),  # tokens regrouped, features whole
])
def test_a_reshape_keeps_an_axis_only_where_it_stays_whole(before, after, channels, kept):
    assert reshaped_axes(before, after)[channels] == kept


def test_a_permute_moves_each_axis_whole():
    assert permuted_axes([0, 2, 3, 1]) == (0, 3, 1, 2)  # NCHW -> NHWC: channels go last


def test_a_fold_is_withdrawn_whole_when_one_reader_fails_its_check():
    planned = plan_contraction(ReducedAttention(), (2, 3, 4, 4))
    failed = RegionCheck("k", "dense", [1, 4, 8], max_rel_error=1.0)
    plan, told = withdraw_failed(planned.decisions, [failed])
    kinds = {d.region.name: d.kind for d in plan}
    assert all(kinds[n] == "keep" for n in ("norm1", "norm", "q", "k", "v")), kinds
    assert not any(d.lead is not None or d.folded_into for d in plan) and len(told) == 5
