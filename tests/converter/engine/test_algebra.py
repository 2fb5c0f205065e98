"""Each algebraic identity against the original layers run in float64."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compactify.converter.engine import algebra as A

# A fixed, reproducible sample in the suite; STRESS=N runs N fresh random examples instead.
SETTINGS = settings(max_examples=int(os.environ.get("STRESS", 60)), deadline=None,
                    derandomize=not os.environ.get("STRESS"))


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _conv_layer(cin, cout, k, stride, pad, dil, groups, bias, seed):
    g = torch.Generator().manual_seed(seed)
    layer = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(cout, generator=g))
    return layer.double()


def _as_op(layer: nn.Conv2d) -> A.AffineConv:
    return A.conv(layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)


def _bn(c, seed):
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c).double().eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
    return bn


def _bn_op(bn):
    return A.batchnorm(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, 2)


def _fold(ops, in_size=None):
    out, exact, reasons = ops[0], True, []
    for op in ops[1:]:
        c = A.compose(out, op, in_size)
        out, exact = c.op, exact and c.exact
        reasons.append(c.reason)
    return out, exact


layer_spec = st.fixed_dictionaries(
    {
        "k": st.integers(1, 7),
        "stride": st.integers(1, 3),
        "dil": st.integers(1, 2),
        "bias": st.booleans(),
        "gsel": st.sampled_from(["dense", "grouped", "depthwise"]),
    }
)


@SETTINGS
@given(
    specs=st.lists(layer_spec, min_size=2, max_size=3),
    pad_at=st.sampled_from(["none", "first", "later"]),
    bn_at=st.sampled_from(["none", "before", "inside", "after"]),
    seed=st.integers(0, 10_000),
)
def test_chain_composition_matches_layers(specs, pad_at, bn_at, seed):
    channels = 4
    layers, ops = [], []
    if bn_at == "before":
        bn = _bn(channels, seed + 99)
        layers.append(bn)
        ops.append(_bn_op(bn))
    for i, s in enumerate(specs):
        groups = {"dense": 1, "grouped": 2, "depthwise": channels}[s["gsel"]]
        pad = 0
        if (pad_at == "first" and i == 0) or (pad_at == "later" and i == len(specs) - 1):
            pad = s["dil"] * (s["k"] - 1) // 2 + 1
        layer = _conv_layer(channels, channels, s["k"], s["stride"], pad, s["dil"], groups, s["bias"], seed + i)
        layers.append(layer)
        ops.append(_as_op(layer))
        if bn_at == "inside" and i == 0:
            bn = _bn(channels, seed + 50)
            layers.append(bn)
            ops.append(_bn_op(bn))
    if bn_at == "after":
        bn = _bn(channels, seed + 77)
        layers.append(bn)
        ops.append(_bn_op(bn))
    net = nn.Sequential(*layers).eval()
    size = 40
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(seed))
    try:
        ref = net(x)
    except RuntimeError:  # the chain shrinks below one pixel: not a case to test
        return
    op, exact = _fold(ops, (size, size))
    got = A.apply(op, x)
    assert got.shape == ref.shape
    if exact:
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    else:
        # Decided, not guessed: flagged inexact only where the borders really differ.
        assert pad_at != "none"
        assert (got - ref).abs().max() > 1e-6
    # Without the input size the rule is conservative: it may flag more, never fewer.
    assert _fold(ops)[1] <= exact


@SETTINGS
@given(
    k1=st.integers(1, 7), k2=st.integers(1, 7), s1=st.integers(1, 3), s2=st.integers(1, 3),
    d1=st.integers(1, 2), d2=st.integers(1, 2), bias1=st.booleans(), bias2=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_two_dense_convs_any_hyperparameters(k1, k2, s1, s2, d1, d2, bias1, bias2, seed):
    a = _conv_layer(3, 5, k1, s1, k1 // 2, d1, 1, bias1, seed)
    b = _conv_layer(5, 2, k2, s2, 0, d2, 1, bias2, seed + 1)
    x = torch.randn(1, 3, 30, 31, generator=torch.Generator().manual_seed(seed))
    try:
        ref = b(a(x))
    except RuntimeError:
        return
    c = A.compose(_as_op(a), _as_op(b))
    assert c.exact
    torch.testing.assert_close(A.apply(c.op, x), ref, rtol=1e-9, atol=1e-9)


def test_first_layer_bias_survives_when_second_has_none():
    """The official ExpandNets helpers drop the first bias when the second layer has none."""
    a = _conv_layer(3, 6, 1, 1, 0, 1, 1, True, 0)
    b = _conv_layer(6, 4, 3, 1, 0, 1, 1, False, 1)
    c = A.compose(_as_op(a), _as_op(b))
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(A.apply(c.op, x), b(a(x)), rtol=1e-10, atol=1e-10)
    assert torch.any(c.op.bias != 0)


def test_depthwise_chain_with_biases():
    """The depthwise case, where the official helpers ignore biases."""
    layers = [_conv_layer(8, 8, k, 1, 0, 1, 8, True, i) for i, k in enumerate((1, 3, 1))]
    layers[0].padding = (1, 1)
    c = _fold([_as_op(l) for l in layers])
    x = torch.randn(2, 8, 12, 12)
    ref = layers[2](layers[1](layers[0](x)))
    assert c[1] and c[0].groups == 8
    torch.testing.assert_close(A.apply(c[0], x), ref, rtol=1e-10, atol=1e-10)


def test_same_padding_after_biased_pointwise_is_flagged():
    a = _conv_layer(4, 4, 1, 1, 0, 1, 1, True, 0)
    b = _conv_layer(4, 4, 3, 1, 1, 1, 1, True, 1)
    c = A.compose(_as_op(a), _as_op(b))
    assert not c.exact and "bias" in c.reason
    x = torch.randn(1, 4, 10, 10)
    err = (A.apply(c.op, x) - b(a(x))).abs()
    assert err[..., 1:-1, 1:-1].max() < 1e-10  # interior exact
    assert err.max() > 1e-3  # borders are not: merging it silently would be wrong


def test_same_padding_after_unbiased_pointwise_is_exact():
    a = _conv_layer(4, 6, 1, 2, 0, 1, 1, False, 0)
    b = _conv_layer(6, 4, 3, 1, 1, 1, 1, True, 1)
    c = A.compose(_as_op(a), _as_op(b))
    assert c.exact
    x = torch.randn(1, 4, 11, 11)
    torch.testing.assert_close(A.apply(c.op, x), b(a(x)), rtol=1e-10, atol=1e-10)


def test_ck_padding_on_every_3x3_is_flagged():
    layers = [_conv_layer(4, 4, 3, 1, 1, 1, 1, True, i) for i in range(3)]
    op, exact = _fold([_as_op(l) for l in layers])
    assert not exact
    x = torch.randn(1, 4, 12, 12)
    ref = layers[2](layers[1](layers[0](x)))
    assert (A.apply(op, x) - ref).abs().max() > 1e-3


def test_stride_on_first_layer_of_chain():
    a = _conv_layer(3, 8, 3, 2, 1, 1, 1, True, 0)
    b = _conv_layer(8, 8, 3, 1, 0, 1, 1, True, 1)
    d = _conv_layer(8, 5, 1, 1, 0, 1, 1, True, 2)
    op, exact = _fold([_as_op(a), _as_op(b), _as_op(d)])
    assert exact and op.stride == (2, 2) and op.kernel == (7, 7)
    x = torch.randn(2, 3, 17, 16)
    torch.testing.assert_close(A.apply(op, x), d(b(a(x))), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(
    kernels=st.lists(st.sampled_from([1, 3, 5, (1, 3), (3, 1)]), min_size=1, max_size=3),
    identity=st.booleans(), avg=st.booleans(), with_bn=st.booleans(), seed=st.integers(0, 1000),
    stride=st.sampled_from([1, 2]),
)
def test_sum_of_branches(kernels, identity, avg, with_bn, stride, seed):
    """RepVGG/ACNet/DBB style: parallel branches of different kernels, identity and avg-pool."""
    c = 6
    branches, ops = [], []
    for i, k in enumerate(kernels):
        kk = (k, k) if isinstance(k, int) else k
        pad = tuple(x // 2 for x in kk)
        layer = nn.Conv2d(c, c, kk, stride=stride, padding=pad, bias=True).double()
        with torch.no_grad():
            layer.weight.normal_(generator=torch.Generator().manual_seed(seed + i))
        op = A.conv(layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, 1)
        if with_bn:
            bn = _bn(c, seed + 10 + i)
            layer = nn.Sequential(layer, bn)
            op = A.compose(op, _bn_op(bn)).op
        branches.append(layer)
        ops.append(op)
    if identity and stride == 1:
        branches.append(nn.Identity())
        ops.append(A.identity(c, 2))
    if avg:
        branches.append(nn.AvgPool2d(3, stride, 1, count_include_pad=True))
        ops.append(A.avg_pool(c, (3, 3), (stride, stride), (1, 1)))
    x = torch.randn(2, c, 11, 12, generator=torch.Generator().manual_seed(seed))
    ref = sum(b.eval()(x) for b in branches)
    total = ops[0]
    for op in ops[1:]:
        total = A.add(total, op)
    torch.testing.assert_close(A.apply(total, x), ref, rtol=1e-9, atol=1e-9)


def test_sum_of_branches_with_different_strides_is_refused():
    with pytest.raises(A.NotContractibleError):
        A.add(A.identity(4, 2), A.avg_pool(4, (2, 2), (2, 2), (0, 0)))


def test_pad_then_conv_then_avgpool():
    c = 3
    conv = _conv_layer(c, c, 3, 1, 0, 1, 1, True, 3)
    ops = [A.zero_pad(c, ((2, 1), (0, 3))), _as_op(conv), A.avg_pool(c, (2, 2), (2, 2), (0, 0))]
    op, exact = _fold(ops)
    assert exact
    x = torch.randn(1, c, 9, 8)
    ref = F.avg_pool2d(conv(F.pad(x, (0, 3, 2, 1))), 2)
    torch.testing.assert_close(A.apply(op, x), ref, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(widths=st.lists(st.integers(1, 9), min_size=3, max_size=5), seed=st.integers(0, 1000))
def test_linear_chain_and_batchnorm1d(widths, seed):
    g = torch.Generator().manual_seed(seed)
    layers, ops = [], []
    for i, (m, n) in enumerate(zip(widths, widths[1:])):
        lin = nn.Linear(m, n, bias=bool(i % 2)).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(n, m, generator=g))
        layers.append(lin)
        ops.append(A.linear(lin.weight, lin.bias))
    bn = nn.BatchNorm1d(widths[-1]).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_(generator=g)
        bn.running_var.uniform_(0.5, 2, generator=g)
        bn.bias.normal_(generator=g)
    layers.append(bn)
    ops.append(A.batchnorm(bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, 0))
    op, exact = _fold(ops)
    assert exact and op.ndim == 0
    x = torch.randn(5, widths[0], generator=g)
    torch.testing.assert_close(A.apply(op, x), nn.Sequential(*layers)(x), rtol=1e-10, atol=1e-10)


def test_conv1d_chain():
    a = nn.Conv1d(3, 4, 3, padding=2, dilation=2).double()
    b = nn.Conv1d(4, 2, 5, stride=2).double()
    c = A.compose(
        A.conv(a.weight, a.bias, a.stride, a.padding, a.dilation),
        A.conv(b.weight, b.bias, b.stride, b.padding, b.dilation),
    )
    x = torch.randn(2, 3, 29)
    torch.testing.assert_close(A.apply(c.op, x), b(a(x)), rtol=1e-10, atol=1e-10)


def test_dilation_is_kept_when_both_layers_share_it():
    a = _conv_layer(2, 2, 3, 1, 2, 2, 1, False, 0)
    b = _conv_layer(2, 2, 3, 1, 0, 2, 1, False, 1)
    c = A.compose(_as_op(a), _as_op(b))
    assert c.op.dilation == (2, 2) and c.op.kernel == (5, 5)
    x = torch.randn(1, 2, 15, 15)
    torch.testing.assert_close(A.apply(c.op, x), b(a(x)), rtol=1e-10, atol=1e-10)
    assert math.prod(c.op.kernel) == 25


def _random_op(kind: str, channels: int, k: int, stride: int, dil: int, groups: int, pad: int, seed: int) -> A.AffineConv:
    g = torch.Generator().manual_seed(seed)
    if kind == "scale":  # a BatchNorm or affine
        return A.channel_affine(torch.randn(channels, generator=g), torch.randn(channels, generator=g), 2)
    if kind == "pad":  # DBB's BN-and-pad: padding with one value per channel
        return A.pad(channels, ((pad, pad + 1), (pad + 1, pad)), torch.randn(channels, generator=g))
    groups = channels if kind == "depthwise" else groups
    if kind == "pointwise":
        k, dil, pad = 1, 1, 0
    weight = torch.randn(channels, channels // groups, k, k, generator=g)
    return A.conv(weight, torch.randn(channels, generator=g), stride, pad, dil, groups)


@SETTINGS
@given(kinds=st.tuples(*[st.sampled_from(["scale", "pad", "pointwise", "depthwise", "dense"])] * 2),
       k=st.integers(1, 4), stride=st.integers(1, 2), dil=st.integers(1, 2), groups=st.sampled_from([1, 2, 6]),
       pad=st.integers(0, 2), seed=st.integers(0, 10_000))
def test_shortcuts_give_the_general_product(kinds, k, stride, dil, groups, pad, seed):
    """A per-channel scale on either side, or a depthwise layer after a pointwise one, is composed
    without the dense C x C product: the same operator, field by field."""
    first, second = (_random_op(kind, 6, k, stride, dil, groups, pad, seed + i) for i, kind in enumerate(kinds))
    got = A._normalise_dilation(A.composed_operator(first, second))
    want = A._normalise_dilation(A._product(first, second))
    for field in ("stride", "padding", "dilation", "groups", "in_dilation"):
        assert getattr(got, field) == getattr(want, field), field
    torch.testing.assert_close(got.weight, want.weight, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(got.bias, want.bias, rtol=1e-13, atol=1e-13)
    assert (got.pad_value is None) == (want.pad_value is None)
    if got.pad_value is not None:
        torch.testing.assert_close(got.pad_value, want.pad_value)


def test_a_batchnorm_after_a_wide_layer_is_never_a_dense_matrix():
    wide = A.conv(torch.randn(4096, 8, 3, 3), None, 1, 1)
    bn = A.channel_affine(torch.rand(4096) + 0.5, torch.randn(4096), 2)
    before = A.regroup
    calls = []
    A.regroup = lambda op, groups: calls.append(groups) or before(op, groups)
    try:
        c = A.compose(wide, bn)
    finally:
        A.regroup = before
    assert calls == [] and c.op.groups == 1 and c.op.weight.shape == (4096, 8, 3, 3)
    x = torch.randn(1, 8, 9, 9)
    torch.testing.assert_close(A.apply(c.op, x), A.apply(bn, A.apply(wide, x)), rtol=1e-12, atol=1e-12)
