"""Factored forms, costs and pruning against the original layers run in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from compactify.converter.engine import algebra as A
from compactify.converter.lowrank import factor as L
from compactify.errors import NotContractibleError

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@pytest.fixture(autouse=True)
def _float64():
    # One thread: these tensors are tiny, and on a busy machine thread hand-offs dominate.
    previous, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(previous)
    torch.set_num_threads(threads)


def _reference(x, weight, bias, stride, pads, dilation, groups):
    """The original layer: explicit zero pad, then torch's conv."""
    flat = [p for pair in reversed(pads) for p in pair]
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[weight.dim() - 2]
    return fn(F.pad(x, flat), weight, bias, stride=stride, dilation=dilation, groups=groups)


def _low_rank_weight(form, g, no, mi, kernel, rank, gen):
    """A kernel whose per-group reshaping in ``form`` has rank at most ``rank``."""
    if form == "channel":
        b = torch.randn(g, no, rank, generator=gen)
        a = torch.randn(g, rank, mi, *kernel, generator=gen)
        return torch.einsum("gor,gr...->go...", b, a).reshape(g * no, mi, *kernel)
    kh, kw = kernel
    p = torch.randn(g, rank, mi, kh, generator=gen)
    q = torch.randn(g, no, rank, kw, generator=gen)
    return torch.einsum("grih,gorw->goihw", p, q).reshape(g * no, mi, kh, kw)


def _rel_err(got, ref):
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300)) if ref.numel() else 0.0


conv_spec = st.fixed_dictionaries(
    {
        "kh": st.integers(1, 7),
        "kw": st.integers(1, 7),
        "sh": st.integers(1, 3),
        "sw": st.integers(1, 3),
        "dh": st.integers(1, 2),
        "dw": st.integers(1, 2),
        "pads": st.tuples(*[st.integers(0, 3)] * 4),
        "bias": st.booleans(),
        "groups": st.sampled_from([1, 2]),
        "no": st.integers(1, 4),
        "mi": st.integers(1, 4),
        "true_rank": st.integers(1, 4),
        "extra": st.integers(0, 2),
        "seed": st.integers(0, 10_000),
    }
)


def _setup(spec, form):
    gen = torch.Generator().manual_seed(spec["seed"])
    g, no, mi = spec["groups"], spec["no"], spec["mi"]
    kernel = (spec["kh"], spec["kw"])
    weight = _low_rank_weight(form, g, no, mi, kernel, spec["true_rank"], gen)
    bias = torch.randn(g * no, generator=gen) if spec["bias"] else None
    pt, pb, pl, pr = spec["pads"]
    pads = ((pt, pb), (pl, pr))
    stride, dil = (spec["sh"], spec["sw"]), (spec["dh"], spec["dw"])
    op = A.conv(weight, bias, stride, pads, dil, g)
    span = [d * (k - 1) + 1 for d, k in zip(dil, kernel)]
    size = [max(1, s - a - b) + extra for s, (a, b), extra in zip(span, pads, (3, 5))]
    x = torch.randn(2, g * mi, *size, generator=gen)
    ref = _reference(x, weight, bias, stride, pads, dil, g)
    return op, x, ref


@SETTINGS
@given(spec=conv_spec, form=st.sampled_from(["channel", "spatial"]))
def test_exact_recovery_when_the_true_rank_is_within_the_cut(spec, form):
    op, x, ref = _setup(spec, form)
    rank = spec["true_rank"] + spec["extra"]
    first, second = L.factor(op, rank, form)
    got = A.apply(second, A.apply(first, x))
    assert got.shape == ref.shape
    assert _rel_err(got, ref) < 1e-11
    # The pair is two thin layers: stride, dilation and padding where the form puts them.
    inner = op.groups * min(rank, L.full_rank(op, form))
    assert first.out_channels == inner and second.in_channels == inner
    assert not first.has_bias
    if spec["bias"]:
        torch.testing.assert_close(second.bias, op.bias)
    if form == "channel":
        assert (first.stride, first.dilation, first.padding) == (op.stride, op.dilation, op.padding)
        assert second.kernel == (1, 1) and second.stride == (1, 1)
    else:
        assert first.kernel == (spec["kh"], 1) and second.kernel == (1, spec["kw"])
        assert first.stride == (spec["sh"], 1) and second.stride == (1, spec["sw"])
        assert first.dilation == (spec["dh"], 1) and second.dilation == (1, spec["dw"])
    # The lead's composition sees the pair as exact and gives back the operator.
    c = A.compose(first, second)
    assert c.exact
    assert _rel_err(A.apply(c.op, x), ref) < 1e-11
    # As ordinary torch layers (what the rewrite builds).
    pair = nn.Sequential(L.as_module(first, dtype=torch.float64), L.as_module(second, dtype=torch.float64))
    with torch.no_grad():
        assert _rel_err(pair(x), ref) < 1e-11


@SETTINGS
@given(spec=conv_spec)
def test_spatial_column_padding_on_either_factor(spec):
    """Padding the columns before a one-column, bias-free ``kh x 1`` conv equals padding its
    output, so the column padding may move to the ``1 x kw`` factor."""
    op, x, ref = _setup(spec, "spatial")
    rank = spec["true_rank"] + spec["extra"]
    a1, a2 = L.factor(op, rank, "spatial", column_padding="first")
    b1, b2 = L.factor(op, rank, "spatial", column_padding="second")
    assert b1.padding[1] == (0, 0) and b2.padding == ((0, 0), op.padding[1])
    mid_a, mid_b = A.apply(a1, x), A.apply(b1, x)
    # The padded intermediate is the intermediate of the padded input, column by column.
    pl, pr = op.padding[1]
    torch.testing.assert_close(mid_a, F.pad(mid_b, (pl, pr, 0, 0)), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(A.apply(b2, mid_b), A.apply(a2, mid_a), rtol=1e-12, atol=1e-12)
    assert _rel_err(A.apply(b2, mid_b), ref) < 1e-11
    if pl + pr:
        in_size = x.shape[2:]
        assert L.factored_flops(op, rank, "spatial", in_size, column_padding="second") < L.factored_flops(
            op, rank, "spatial", in_size, column_padding="first"
        )


def _reshape_reference(weight, groups, form):
    """Independent of lowrank.py: the per-group matrices, built with numpy."""
    w = weight.numpy()
    n, mi = w.shape[:2]
    no = n // groups
    mats = []
    for j in range(groups):
        wj = w[j * no : (j + 1) * no]
        if form == "channel":
            mats.append(wj.reshape(no, -1))
        else:
            kh, kw = wj.shape[2:]
            mats.append(wj.transpose(1, 2, 0, 3).reshape(mi * kh, no * kw))
    return mats


def _unreshape_reference(mats, shape, groups, form):
    n, mi = shape[:2]
    no = n // groups
    out = np.zeros(shape)
    for j, m in enumerate(mats):
        if form == "channel":
            out[j * no : (j + 1) * no] = m.reshape(no, *shape[1:])
        else:
            kh, kw = shape[2:]
            out[j * no : (j + 1) * no] = m.reshape(mi, kh, no, kw).transpose(2, 0, 1, 3)
    return torch.from_numpy(out)


@SETTINGS
@given(spec=conv_spec, form=st.sampled_from(["channel", "spatial"]), cut=st.integers(1, 6))
def test_truncation_is_the_best_approximation(spec, form, cut):
    """Below the true rank: the pair computes the conv with the Eckart-Young truncated kernel."""
    gen = torch.Generator().manual_seed(spec["seed"])
    g, no, mi = spec["groups"], spec["no"], spec["mi"]
    kernel = (spec["kh"], spec["kw"])
    weight = torch.randn(g * no, mi, *kernel, generator=gen)
    op = A.conv(weight, None, (spec["sh"], spec["sw"]), ((1, 0), (0, 2)), (spec["dh"], spec["dw"]), g)
    mats = _reshape_reference(weight, g, form)
    truncated, tail = [], 0.0
    for m in mats:
        u, s, vh = np.linalg.svd(m, full_matrices=False)
        truncated.append((u[:, :cut] * s[:cut]) @ vh[:cut])
        tail += float((s[cut:] ** 2).sum())
    w_ref = _unreshape_reference(truncated, tuple(weight.shape), g, form)
    x = torch.randn(1, g * mi, 17, 19, generator=gen)
    ref = _reference(x, w_ref, None, op.stride, op.padding, op.dilation, g)
    first, second = L.factor(op, cut, form)
    assert _rel_err(A.apply(second, A.apply(first, x)), ref) < 1e-10
    t = L.truncate(op, cut, form)
    torch.testing.assert_close(t.weight, w_ref, rtol=1e-10, atol=1e-10)
    assert float(((t.weight - weight) ** 2).sum()) == pytest.approx(tail, rel=1e-9, abs=1e-12)
    torch.testing.assert_close(A.compose(first, second).op.weight.reshape(-1), t.weight.reshape(-1), rtol=1e-10, atol=1e-10)


@SETTINGS
@given(
    m=st.integers(1, 12), n=st.integers(1, 12), true_rank=st.integers(1, 5), extra=st.integers(0, 3),
    bias=st.booleans(), seed=st.integers(0, 1000),
)
def test_linear_m_r_n(m, n, true_rank, extra, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    lin = nn.Linear(m, n, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n, true_rank, generator=gen) @ torch.randn(true_rank, m, generator=gen))
    op = A.linear(lin.weight, lin.bias)
    first, second = L.factor(op, true_rank + extra)
    r = min(true_rank + extra, m, n)
    assert first.weight.shape == (r, m) and second.weight.shape == (n, r)
    x = torch.randn(7, m, generator=gen)
    ref = lin(x)
    assert _rel_err(A.apply(second, A.apply(first, x)), ref) < 1e-11
    assert _rel_err(nn.Sequential(L.as_module(first, dtype=torch.float64), L.as_module(second, dtype=torch.float64))(x), ref) < 1e-11


@pytest.mark.parametrize("ndim", [1, 3])
def test_channel_form_in_1d_and_3d(ndim):
    gen = torch.Generator().manual_seed(ndim)
    kernel = (3,) * ndim
    weight = _low_rank_weight("channel", 2, 3, 4, kernel, 2, gen)
    bias = torch.randn(6, generator=gen)
    op = A.conv(weight, bias, 2, ((1, 2),) * ndim, 2, 2)
    x = torch.randn(2, 8, *([9] * ndim), generator=gen)
    ref = _reference(x, weight, bias, op.stride, op.padding, op.dilation, 2)
    first, second = L.factor(op, 2)
    assert first.out_channels == 4
    assert _rel_err(A.apply(second, A.apply(first, x)), ref) < 1e-11
    with pytest.raises(ValueError, match="2-D"):
        L.factor(op, 2, "spatial")
    assert L.forms_for(op) == ("channel",)


def test_spectrum_per_group_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 2, 3, 2, generator=gen)
    op = A.conv(weight, None, groups=3)
    for form in ("channel", "spatial"):
        s = L.spectrum(op, form)
        ref = np.stack([np.linalg.svd(m, compute_uv=False) for m in _reshape_reference(weight, 3, form)])
        assert s.dtype == torch.float64 and s.shape == ref.shape
        np.testing.assert_allclose(s.numpy(), ref, rtol=1e-12)
    assert L.full_rank(op, "channel") == 2 and L.full_rank(op, "spatial") == 2 * 2


def test_low_rank_spectrum_shows_the_rank():
    gen = torch.Generator().manual_seed(1)
    op = A.conv(_low_rank_weight("channel", 1, 8, 5, (3, 3), 3, gen))
    s = L.spectrum(op)[0]
    assert s.shape == (8,) and s[2] > 1e-3 and s[3] < 1e-12 * s[0]


def test_rank_below_one_and_clamping():
    op = A.conv(torch.randn(4, 3, 3, 3))
    with pytest.raises(ValueError):
        L.factor(op, 0)
    with pytest.raises(ValueError):
        L.factored_flops(op, 0)
    first, _ = L.factor(op, 99)
    assert first.out_channels == 4
    assert L.factored_flops(op, 99, "channel", (5, 5)) == L.factored_flops(op, 4, "channel", (5, 5))


# ---------------------------------------------------------------------------------------
# Costs


@SETTINGS
@given(
    m=st.integers(1, 16), n=st.integers(1, 16), kh=st.integers(1, 5), kw=st.integers(1, 5),
    stride=st.integers(1, 2), pad=st.integers(0, 2), h=st.integers(6, 12),
)
def test_flops_and_break_even_rank(m, n, kh, kw, stride, pad, h):
    op = A.conv(torch.randn(n, m, kh, kw), torch.randn(n), stride, pad)
    size = (h, h + 1)
    out = op.output_size(size)
    k = kh * kw
    dense = L.dense_flops(op, size)
    # Cross-check of the counter, not the source of truth.
    assert dense == 2 * n * m * k * out[0] * out[1]
    per = L.factored_flops(op, 1, "channel", size)
    p = L.full_rank(op)
    for r in {min(2, p), p}:
        assert L.factored_flops(op, r, "channel", size) == r * per
    for r in range(1, p + 1):
        # The textbook break-even rank for the channel form.
        assert (r * per < dense) == (r < n * m * k / (n + m * k))
    assert L.break_even_rank(op, "channel", size) == min(p, max(0, -(-n * m * k // (n + m * k)) - 1))
    per_spatial = L.factored_flops(op, 1, "spatial", size)
    r = L.full_rank(op, "spatial")
    assert L.factored_flops(op, r, "spatial", size) == r * per_spatial


def test_linear_flops_and_grouped_flops():
    op = A.linear(torch.randn(7, 5))
    assert L.dense_flops(op) == 2 * 7 * 5
    assert L.dense_flops(op, (3,)) == 3 * 2 * 7 * 5  # three tokens
    assert L.factored_flops(op, 2) == 2 * (2 * 5 + 7 * 2)
    grouped = A.conv(torch.randn(8, 3, 3, 3), None, 1, 1, 1, 2)
    # Per group rank 2 is four inner channels.
    assert L.factored_flops(grouped, 2, "channel", (5, 5)) == 2 * 25 * (4 * 3 * 9 + 8 * 2)


def test_module_flops_leaves_the_module_where_it_was():
    layer = nn.Conv2d(3, 4, 3)
    assert L.module_flops(layer, (1, 3, 8, 8)) == 2 * 4 * 3 * 9 * 36
    assert layer.weight.device.type == "cpu"


def test_candidate_carries_spectrum_and_costs():
    op = A.conv(torch.randn(6, 4, 3, 3), None, 1, 1)
    c = L.candidate("conv1", op, "spatial", (8, 8))
    assert c.name == "conv1" and c.form == "spatial"
    torch.testing.assert_close(c.singular_values, L.spectrum(op, "spatial"))
    assert c.dense_flops == L.dense_flops(op, (8, 8))
    assert c.flops_per_rank == L.factored_flops(op, 1, "spatial", (8, 8))


def test_as_module_with_asymmetric_padding():
    op = A.conv(torch.randn(4, 2, 3, 2), torch.randn(4), (2, 1), ((0, 2), (1, 0)), (1, 2), 2)
    x = torch.randn(1, 4, 9, 8)
    module = L.as_module(op, dtype=torch.float64)
    assert isinstance(module, nn.Sequential)
    torch.testing.assert_close(module(x), A.apply(op, x), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------
# Group lasso pruning


def _net(ops, x, between=F.relu):
    for i, op in enumerate(ops):
        x = A.apply(op, x)
        if i < len(ops) - 1 and between is not None:
            x = between(x)
    return x


def test_prune_pair_removes_dead_units_and_the_matching_inputs():
    gen = torch.Generator().manual_seed(0)
    w1, b1 = torch.randn(8, 3, 3, 3, generator=gen), torch.randn(8, generator=gen)
    dead = [1, 4, 5]
    w1[dead], b1[dead] = 0, 0
    producer = A.conv(w1, b1, 1, 1)
    consumer = A.conv(torch.randn(5, 8, 3, 3, generator=gen), torch.randn(5, generator=gen), 2, 1)
    p2, c2, removed = L.prune_pair(producer, consumer)
    assert removed == dead
    assert p2.out_channels == 5 and c2.in_channels == 5
    x = torch.randn(2, 3, 11, 11, generator=gen)
    torch.testing.assert_close(_net([p2, c2], x), _net([producer, consumer], x), rtol=1e-12, atol=1e-12)


def test_zero_units_tolerance_and_bias():
    w = torch.randn(4, 2, 3, 3)
    b = torch.randn(4)
    w[0] *= 1e-9
    b[0] = 0
    w[1] = 0  # zero weights, live bias: a constant output, not a zero unit
    op = A.conv(w, b)
    assert L.zero_units(op).tolist() == [False, False, False, False]
    assert L.zero_units(op, 1e-6).tolist() == [True, False, False, False]
    assert L.zero_units(op, 1e-6, ignore_bias=True).tolist() == [True, True, False, False]
    assert L.zero_units(A.conv(torch.zeros(3, 2, 1, 1))).all()


def test_uneven_drops_in_grouped_layers_coarsen_the_groups():
    gen = torch.Generator().manual_seed(2)
    producer = A.conv(torch.randn(8, 2, 3, 3, generator=gen), torch.randn(8, generator=gen), 1, 0, 1, 2)
    consumer = A.conv(torch.randn(8, 2, 1, 1, generator=gen), torch.randn(8, generator=gen), 1, 0, 1, 4)
    keep = [0, 2, 3, 5, 6, 7]  # 3 of group 0 and 3 of group 1 for the producer; 1,2,1,2 for the consumer
    p2 = L.drop_outputs(producer, keep)
    c2 = L.drop_inputs(consumer, keep)
    assert p2.groups == 2 and c2.groups == 2  # 1+2 and 1+2: equal blocks of two old groups
    x = torch.randn(1, 4, 8, 8, generator=gen)
    y = F.relu(A.apply(producer, x))
    torch.testing.assert_close(A.apply(p2, x), A.apply(producer, x)[:, keep])
    dropped = torch.ones(8, dtype=torch.bool)
    dropped[keep] = False
    y0 = y.masked_fill(dropped[None, :, None, None], 0.0)  # what the consumer sees after pruning
    torch.testing.assert_close(A.apply(c2, y[:, keep]), A.apply(consumer, y0), rtol=1e-12, atol=1e-12)
    c3 = L.drop_inputs(consumer, [0, 1, 2])  # 2,1,0,0: only one block works
    assert c3.groups == 1
    torch.testing.assert_close(A.apply(c3, y[:, :3]), A.apply(consumer, torch.cat([y[:, :3], 0 * y[:, 3:]], 1)))


def test_batchnorm_between_is_dropped_channelwise_and_its_constant_folded():
    gen = torch.Generator().manual_seed(3)
    w1 = torch.randn(6, 3, 3, 3, generator=gen)
    w1[[2, 3]] = 0
    producer = A.conv(w1, None, 1, 1)
    bn = A.batchnorm(torch.randn(6, generator=gen), torch.rand(6, generator=gen) + 0.5,
                     torch.randn(6, generator=gen), torch.randn(6, generator=gen) + 1.0, 1e-5, 2)
    consumer = A.conv(torch.randn(4, 6, 3, 3, generator=gen), torch.randn(4, generator=gen), 1, 0)
    x = torch.randn(2, 3, 10, 10, generator=gen)
    ref = A.apply(consumer, F.relu(A.apply(bn, A.apply(producer, x))))
    dead = L.zero_units(producer)
    keep = ~dead
    # What the removed channels carried: the BatchNorm shift through the ReLU.
    fill = F.relu(bn.bias) * dead
    p2, bn2 = L.drop_outputs(producer, keep), L.drop_channels(bn, keep)
    c2 = L.drop_inputs(consumer, keep, fill=fill)
    assert bn2.groups == 4 and c2.in_channels == 4
    got = A.apply(c2, F.relu(A.apply(bn2, A.apply(p2, x))))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    # Without the fill the constant is lost: the test above can fail.
    assert (A.apply(L.drop_inputs(consumer, keep), F.relu(A.apply(bn2, A.apply(p2, x)))) - ref).abs().max() > 1e-3
    padded = A.conv(consumer.weight, consumer.bias, 1, 1)
    with pytest.raises(NotContractibleError, match="padded"):
        L.drop_inputs(padded, keep, fill=fill)


def test_depthwise_with_multiplier_keeps_each_groups_outputs():
    dw = A.conv(torch.randn(8, 1, 3, 3), torch.randn(8), 1, 1, 1, 4)  # multiplier 2
    d2 = L.drop_channels(dw, [1, 3])
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(A.apply(d2, x[:, [1, 3]]), A.apply(dw, x)[:, [2, 3, 6, 7]])
    with pytest.raises(ValueError):
        L.drop_channels(A.conv(torch.randn(4, 2, 1, 1)), [0])


def test_removing_everything_is_refused():
    op = A.conv(torch.zeros(3, 2, 1, 1))
    with pytest.raises(NotContractibleError):
        L.prune_pair(op, A.conv(torch.randn(2, 3, 1, 1)))
