"""Transposed convs in the algebra, against torch's own transposed convs in float64: the operator
itself, what folds into it after (BatchNorm, scale, 1x1, kxk), what folds into it before (a
bias-free stride-1 layer), chains of them, what is refused, and the layer it is written back as."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from compactify.converter.engine import algebra as A
from compactify.errors import NotContractibleError

SETTINGS = settings(max_examples=int(os.environ.get("STRESS", "40")), deadline=None,
                    derandomize=not os.environ.get("STRESS"))
F64 = torch.float64
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _randn(*shape, seed):
    return torch.randn(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed))


@st.composite
def transposed_specs(draw, nd=None, bias=None):
    """A transposed conv torch accepts: output padding below max(stride, dilation), padding
    within the kernel's reach."""
    nd = draw(st.integers(1, 3)) if nd is None else nd
    axes = []
    for _ in range(nd):
        k, s, d = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2))
        axes.append((k, s, d, draw(st.integers(0, d * (k - 1))), draw(st.integers(0, max(s, d) - 1))))
    k, s, d, p, o = (tuple(a[i] for a in axes) for i in range(5))
    groups = draw(st.sampled_from([1, 2]))
    return {"kernel": k, "stride": s, "dilation": d, "padding": p, "output_padding": o, "groups": groups,
            "bias": draw(st.booleans()) if bias is None else bias}


class ConvT:
    """One transposed conv with random parameters: run by torch, and as an operator."""

    def __init__(self, spec, cin, cout, seed):
        self.spec = spec
        g = spec["groups"]
        self.weight = _randn(cin, cout // g, *spec["kernel"], seed=seed)
        self.bias = _randn(cout, seed=seed + 1) if spec["bias"] else None

    def __call__(self, x):
        s = self.spec
        size = [(n - 1) * st - 2 * p + d * (k - 1) + o + 1 for n, st, p, d, k, o in
                zip(x.shape[2:], s["stride"], s["padding"], s["dilation"], s["kernel"], s["output_padding"])]
        if min(size) < 1:
            assume(False)  # a crop that leaves nothing: not a case to test
        return CONV_T[x.dim() - 2](x, self.weight, self.bias, s["stride"], s["padding"], s["output_padding"],
                                   s["groups"], s["dilation"])

    @property
    def op(self):
        s = self.spec
        return A.conv_transpose(self.weight, self.bias, s["stride"], s["padding"], s["output_padding"],
                                s["dilation"], s["groups"])


def _bn_op(c, nd, seed):
    mean, var = _randn(c, seed=seed), _randn(c, seed=seed + 1).abs() + 0.5
    gamma, beta = _randn(c, seed=seed + 2), _randn(c, seed=seed + 3)
    op = A.batchnorm(mean, var, gamma, beta, 1e-5, nd)
    return op, lambda y: F.batch_norm(y, mean, var, gamma, beta, False, 0.0, 1e-5)


def _written(op: A.AffineConv, x: torch.Tensor) -> torch.Tensor:
    """``op`` run as the layer a back-end writes for it."""
    if not op.dilates_input:
        return A.apply(op, x)
    layer = A.transposed_layer(op)
    x = F.pad(x, [p for pair in reversed(layer.input_pad) for p in pair])
    y = CONV_T[op.ndim](x, layer.weight, layer.bias, layer.stride, layer.padding, layer.output_padding,
                        layer.groups, layer.dilation)
    return F.pad(y, [-c for pair in reversed(layer.output_crop) for c in pair])


def _differs(got, ref) -> bool:
    """Decided, not guessed: an operator flagged inexact differs at the borders, unless every
    output reads only the zeros a transposed conv inserted (the output is then its bias alone,
    and the rule, decided one axis at a time, cannot see that)."""
    constant = bool((ref.flatten(2).std(-1) < 1e-12).all()) if ref[0, 0].numel() > 1 else False
    return bool((got - ref).abs().max() > 1e-6) or constant


def _input(nd, channels, seed, low=2, high=6):
    sizes = torch.randint(low, high + 1, (nd,), generator=torch.Generator().manual_seed(seed)).tolist()
    return _randn(2, channels, *sizes, seed=seed + 7)


@SETTINGS
@given(spec=transposed_specs(), seed=st.integers(0, 1000))
def test_transposed_conv_is_a_conv_on_its_spread_input(spec, seed):
    layer = ConvT(spec, 4, 2 * spec["groups"], seed)
    x = _input(len(spec["kernel"]), 4, seed)
    ref = layer(x)
    op = layer.op
    torch.testing.assert_close(A.apply(op, x), ref, rtol=1e-10, atol=1e-10)
    assert op.output_size(x.shape[2:]) == tuple(ref.shape[2:])
    assert op.dilates_input == any(s > 1 for s in spec["stride"])  # stride 1: a plain conv
    torch.testing.assert_close(_written(op, x), ref, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(spec=transposed_specs(), affine=st.sampled_from(["bn", "scale"]), seed=st.integers(0, 1000))
def test_batchnorm_or_channel_affine_after_a_transposed_conv_folds_exactly(spec, affine, seed):
    nd, cout = len(spec["kernel"]), 2 * spec["groups"]
    layer = ConvT(spec, 4, cout, seed)
    if affine == "bn":
        after_op, after = _bn_op(cout, nd, seed + 10)
    else:
        scale, shift = _randn(cout, seed=seed + 10), _randn(cout, seed=seed + 11)
        after_op = A.channel_affine(scale, shift, nd)
        shape = (1, -1, *[1] * nd)

        def after(y):
            return y * scale.reshape(shape) + shift.reshape(shape)
    x = _input(nd, 4, seed)
    c = A.compose(layer.op, after_op, tuple(x.shape[2:]))
    assert c.exact and c.all_sizes
    ref = after(layer(x))
    torch.testing.assert_close(A.apply(c.op, x), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_written(A.trim(c.op), x), ref, rtol=1e-10, atol=1e-10)
    assert c.op.kernel == tuple(spec["kernel"])  # the same layer, nothing grown


@SETTINGS
@given(spec=transposed_specs(nd=2), bias=st.booleans(), seed=st.integers(0, 1000))
def test_pointwise_conv_after_a_transposed_conv_folds_exactly(spec, bias, seed):
    cout = 2 * spec["groups"]
    layer = ConvT(spec, 4, cout, seed)
    w, b = _randn(3, cout, 1, 1, seed=seed + 20), _randn(3, seed=seed + 21) if bias else None
    x = _input(2, 4, seed)
    c = A.compose(layer.op, A.conv(w, b))
    assert c.exact
    ref = F.conv2d(layer(x), w, b)
    torch.testing.assert_close(A.apply(c.op, x), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_written(A.trim(c.op), x), ref, rtol=1e-10, atol=1e-10)


@SETTINGS
@given(spec=transposed_specs(nd=2), k=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 2),
       bias=st.booleans(), seed=st.integers(0, 1000))
def test_spatial_conv_after_a_transposed_conv_is_exact_where_decided(spec, k, stride, pad, bias, seed):
    """Padding on the conv after is exact only where the transposed conv answers zero there:
    no bias, and windows that miss the input (decided at this size, never assumed)."""
    cout = 2 * spec["groups"]
    layer = ConvT(spec, 4, cout, seed)
    w, b = _randn(3, cout, k, k, seed=seed + 30), _randn(3, seed=seed + 31) if bias else None
    x = _input(2, 4, seed, low=3)
    try:
        ref = F.conv2d(layer(x), w, b, stride, pad)
    except RuntimeError:
        return  # the chain shrinks below one pixel
    c = A.compose(layer.op, A.conv(w, b, stride, pad), tuple(x.shape[2:]))
    got = A.apply(c.op, x)
    assert got.shape == ref.shape
    if c.exact:
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
    else:
        assert pad > 0 and _differs(got, ref)
    if c.op.dilates_input and stride > 1:
        assert A.unwritable(c.op)  # a strided conv on a spread input: no one layer does that
    elif c.exact:
        torch.testing.assert_close(_written(A.trim(c.op), x), ref, rtol=1e-9, atol=1e-9)


def test_transposed_conv_then_same_padded_conv_exact_only_without_bias():
    """YOLO's Proto: ConvTranspose(k=2, s=2) then a 3x3 conv with padding 1. The 3x3 reads the
    transposed conv's output one pixel outside it, where the merged layer would see its bias."""
    spec = {"kernel": (2, 2), "stride": (2, 2), "dilation": (1, 1), "padding": (0, 0), "output_padding": (0, 0),
            "groups": 1}
    w = _randn(4, 4, 3, 3, seed=1)
    x = _randn(1, 4, 5, 6, seed=3)
    for bias in (False, True):
        layer = ConvT({**spec, "bias": bias}, 4, 4, 5)
        c = A.compose(layer.op, A.conv(w, None, 1, 1), tuple(x.shape[2:]))
        assert c.exact is not bias and c.all_sizes is not bias
        if not bias:
            torch.testing.assert_close(_written(c.op, x), F.conv2d(layer(x), w, None, 1, 1), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(spec=transposed_specs(bias=True), k=st.integers(1, 3), pad=st.booleans(), seed=st.integers(0, 1000))
def test_bias_free_stride_one_conv_before_a_transposed_conv_folds_where_decided(spec, k, pad, seed):
    """A bias-free 1x1 always passes the spreading; a kxk does too, but then the transposed conv's
    own padding of its spread input meets the usual border rule."""
    nd = len(spec["kernel"])
    layer = ConvT(spec, 4, 2 * spec["groups"], seed)
    w = _randn(4, 3, *[k] * nd, seed=seed + 40)
    padding = (k - 1) // 2 if pad else 0
    x = _input(nd, 3, seed, low=3)
    ref = layer(CONV[nd](x, w, None, 1, padding))
    c = A.compose(A.conv(w, None, 1, padding), layer.op, tuple(x.shape[2:]))
    got = A.apply(c.op, x)
    assert c.exact or k > 1
    if c.exact:
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(_written(A.trim(c.op), x), ref, rtol=1e-9, atol=1e-9)
    else:
        assert _differs(got, ref)


@SETTINGS
@given(first=transposed_specs(nd=2, bias=False), second=transposed_specs(nd=2), seed=st.integers(0, 1000))
def test_chain_of_transposed_convs_composes_when_the_first_has_no_bias(first, second, seed):
    a = ConvT(first, 4, 2 * first["groups"], seed)
    b = ConvT(second, 2 * first["groups"], 2 * second["groups"], seed + 50)
    x = _input(2, 4, seed)
    ref = b(a(x))
    c = A.compose(a.op, b.op, tuple(x.shape[2:]))
    got = A.apply(c.op, x)
    assert got.shape == ref.shape
    if c.exact:
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(_written(A.trim(c.op), x), ref, rtol=1e-9, atol=1e-9)
    else:  # the second pads its spread input where the first's windows still read the input
        assert _differs(got, ref)


def test_what_cannot_pass_a_transposed_conv_is_refused():
    up = A.conv_transpose(_randn(4, 4, 2, 2, seed=0), None, 2)
    biased = A.conv(_randn(4, 4, 1, 1, seed=1), _randn(4, seed=2))
    with pytest.raises(NotContractibleError, match="bias"):
        A.compose(biased, up)  # the bias would land on the inserted zeros too
    bn, _ = _bn_op(4, 2, 3)
    with pytest.raises(NotContractibleError, match="bias"):
        A.compose(bn, up)
    with pytest.raises(NotContractibleError, match="strided"):
        A.compose(A.conv(_randn(4, 4, 1, 1, seed=4), None, 2), up)
    with pytest.raises(NotContractibleError, match="spread"):
        A.add(up, A.conv_transpose(_randn(4, 4, 2, 2, seed=5), None, (2, 1)))
    with pytest.raises(NotContractibleError, match="padding"):
        A.conv_transpose(_randn(4, 4, 2, 2, seed=6), None, 2, padding=2)  # crops beyond its kernel
    # A stride-1 transposed conv is a plain conv: a bias before it meets the usual border rule.
    plain = A.conv_transpose(_randn(4, 4, 3, 3, seed=7), None, 1)
    assert not plain.dilates_input and not A.compose(biased, plain).exact


@SETTINGS
@given(spec=transposed_specs(nd=2), seed=st.integers(0, 1000))
def test_summed_transposed_conv_branches_add_into_one(spec, seed):
    cout = 2 * spec["groups"]
    a = ConvT(spec, 4, cout, seed)
    # A kernel two taps longer whose extra padding crops it back to the same output size.
    other = {**spec, "kernel": tuple(k + 2 for k in spec["kernel"]),
             "padding": tuple(p + d for p, d in zip(spec["padding"], spec["dilation"]))}
    b = ConvT(other, 4, cout, seed + 60)
    x = _input(2, 4, seed)
    ya, yb = a(x), b(x)
    assert ya.shape == yb.shape
    merged = A.add(a.op, b.op)
    torch.testing.assert_close(A.apply(merged, x), ya + yb, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_written(A.trim(merged), x), ya + yb, rtol=1e-10, atol=1e-10)
