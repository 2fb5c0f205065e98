"""expand(): chain structure, and that every chain is exactly one layer of the original's shape.

The exactness check here does not use the converter: it reads the merged kernel and bias of
an expanded chain off its Jacobian in float64 (the chain is affine), then requires the chain
to equal F.conv2d / F.linear with the ORIGINAL layer's stride, padding, dilation and groups on
random inputs. A chain that put padding or stride in the wrong place, or mixed groups, has no
such kernel and fails.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactify.errors import BadInputError
from compactify.models import applicable_modes, create_model, expand, expandable_layers, list_models, model_entry
from compactify.models.expand import normalize_mode

from .tiny import TINY_KWARGS


def merged_conv(chain: nn.Module, conv: nn.Conv2d, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel [n, m, kh, kw] and bias [n] of the affine map ``chain`` computes, read off at one
    output pixel, assuming the geometry (stride, padding, dilation) of ``conv``."""
    m, n = conv.in_channels, conv.out_channels
    kh, kw = conv.kernel_size
    (sh, sw), (dh, dw) = conv.stride, conv.dilation
    ph, pw = conv.padding
    x = torch.zeros(1, m, *size, dtype=torch.float64, requires_grad=True)
    out = chain(x)
    bias = out[0, :, 0, 0].detach().clone()
    # an output pixel whose whole receptive field lies inside the input
    oy, ox = -(-ph // sh), -(-pw // sw)
    assert sh * oy - ph + dh * (kh - 1) < size[0] and sw * ox - pw + dw * (kw - 1) < size[1]
    kernel = torch.zeros(n, m, kh, kw, dtype=torch.float64)
    for o in range(n):
        (grad,) = torch.autograd.grad(out[0, o, oy, ox], x, retain_graph=True)
        ys = sh * oy - ph + dh * torch.arange(kh)
        xs = sw * ox - pw + dw * torch.arange(kw)
        kernel[o] = grad[0][:, ys][:, :, xs]
    return kernel, bias


def assert_chain_is_conv(conv: nn.Conv2d, chain: nn.Module, size=(13, 12)) -> None:
    conv, chain = conv.double(), chain.double()
    kernel, bias = merged_conv(chain, conv, size)
    g = conv.groups
    m, n = conv.in_channels, conv.out_channels
    # per-group structure: output group j only sees input group j
    for j in range(g if g > 1 else 0):
        outside = torch.ones(m, dtype=torch.bool)
        outside[j * (m // g):(j + 1) * (m // g)] = False
        assert kernel[j * (n // g):(j + 1) * (n // g), outside].abs().max() == 0
    gen = torch.Generator().manual_seed(0)
    for shape in ((2, m, *size), (1, m, size[0] + 3, size[1] + 1)):
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        ref = F.conv2d(x, kernel, bias, conv.stride, conv.padding, conv.dilation)
        got = chain(x)
        assert got.shape == ref.shape == conv(x).shape
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 3), n=st.integers(1, 3), g=st.sampled_from([1, 2, "dw"]),
    kh=st.integers(2, 5), kw=st.integers(1, 5), stride=st.integers(1, 3), dilation=st.integers(1, 2),
    ph=st.integers(0, 3), pw=st.integers(0, 3), bias=st.booleans(), rate=st.integers(1, 3),
)
def test_cl_chain_is_one_conv_of_the_original_shape(m, n, g, kh, kw, stride, dilation, ph, pw, bias, rate):
    groups = m * 2 if g == "dw" else g
    cin, cout = (m * 2, m * 2) if g == "dw" else (m * groups, n * groups)
    conv = nn.Conv2d(cin, cout, (kh, kw), stride, (ph, pw), dilation, groups, bias)
    chain = expand(nn.Sequential(conv), "cl", rate=rate)[0]
    assert [c.kernel_size for c in chain] == [(1, 1), (kh, kw), (1, 1)]
    assert [c.groups for c in chain] == [groups] * 3
    assert [c.out_channels for c in chain] == [rate * cin, rate * cout, cout]
    assert all(c.bias is not None for c in chain)
    assert chain[0].padding == (ph, pw) and chain[1].padding == chain[2].padding == (0, 0)
    assert chain[1].stride == (stride, stride) and chain[0].stride == chain[2].stride == (1, 1)
    assert_chain_is_conv(conv, chain)


@settings(max_examples=15, deadline=None)
@given(
    m=st.integers(1, 3), n=st.integers(1, 3), g=st.sampled_from([1, 2, "dw"]), k=st.sampled_from([5, 7]),
    stride=st.integers(1, 3), dilation=st.integers(1, 2), p=st.integers(0, 3), rate=st.integers(1, 2),
)
def test_ck_chain_is_one_conv_of_the_original_shape(m, n, g, k, stride, dilation, p, rate):
    groups = m * 2 if g == "dw" else g
    cin, cout = (m * 2, m * 2) if g == "dw" else (m * groups, n * groups)
    conv = nn.Conv2d(cin, cout, k, stride, p, dilation, groups)
    chain = expand(nn.Sequential(conv), "ck", rate=rate)[0]
    depth = (k - 1) // 2
    assert len(chain) == depth and all(c.kernel_size == (3, 3) for c in chain)
    widths = [c.in_channels for c in chain] + [chain[-1].out_channels]
    assert widths == [cin, rate * cin] + [rate * cout] * (depth - 2) + [cout]
    assert [c.padding for c in chain] == [(p, p)] + [(0, 0)] * (depth - 1)
    assert [c.stride for c in chain] == [(1, 1)] * (depth - 1) + [(stride, stride)]
    assert_chain_is_conv(conv, chain, size=(17, 16))


def test_fc_chain_is_one_linear():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3).double()
    chain = expand(nn.Sequential(lin), "fc", rate=4)[0].double()
    assert [(c.in_features, c.out_features) for c in chain] == [(5, 20), (20, 12), (12, 3)]
    x = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    bias = chain(x)[0].detach()
    jac = torch.autograd.functional.jacobian(lambda v: chain(v)[0], x)[:, 0, :]
    y = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(chain(y), F.linear(y, jac, bias), rtol=1e-12, atol=1e-12)


def test_same_padding_and_padding_modes():
    conv = nn.Conv2d(2, 3, 5, padding="same", dilation=2)
    chain = expand(nn.Sequential(conv), "cl")[0]
    assert chain[0].padding == (4, 4)
    assert_chain_is_conv(nn.Conv2d(2, 3, 5, padding=4, dilation=2), chain, size=(19, 19))

    # a non-zero padding mode stays on the first layer: pad the input once, then the chain
    conv = nn.Conv2d(2, 3, 5, padding=2, padding_mode="reflect").double()
    chain = expand(nn.Sequential(conv), "ck")[0].double()
    assert chain[0].padding_mode == "reflect" and chain[1].padding_mode == "zeros"
    unpadded = copy.deepcopy(chain)
    unpadded[0].padding, unpadded[0].padding_mode = (0, 0), "zeros"
    x = torch.randn(2, 2, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(chain(x), unpadded(F.pad(x, (2, 2, 2, 2), mode="reflect")))

    # asymmetric 'same' padding has no symmetric form: skipped with a reason
    model = nn.Sequential(nn.Conv2d(2, 3, 4, padding="same"), nn.Conv2d(3, 3, 3))
    out = expand(model, "cl")
    assert out.compactify_expansion["layers"] == ["1"]
    assert "asymmetric" in out.compactify_expansion["skipped"]["0"]


def test_smallnet7_chains_match_the_paper():
    base = create_model("smallnet7")
    cl = expand(base, "cl")
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in cl.conv2] == [
        (8, 32, 1, 3), (32, 64, 7, 0), (64, 16, 1, 0)]
    ck = expand(base, "ck")
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.padding[0]) for c in ck.conv3] == [
        (16, 64, 3, 3), (64, 128, 3, 0), (128, 32, 3, 0)]
    ckfc = create_model("smallnet7-ck+fc")
    assert [(c.in_features, c.out_features) for c in ckfc.fc1] == [(512, 2048), (2048, 256), (256, 64)]
    assert ckfc.compactify_expansion["layers"] == ["conv1", "conv2", "conv3", "fc1", "fc2"]
    assert isinstance(base.conv1, nn.Conv2d), "expand must not modify its input"


def _tiny_cases():
    for name in list_models():
        for mode in applicable_modes(name, **TINY_KWARGS[name]):
            yield name, mode


@pytest.mark.parametrize("name,mode", list(_tiny_cases()))
def test_every_registry_model_and_mode(name, mode):
    kwargs = TINY_KWARGS[name]
    torch.manual_seed(0)
    base = create_model(name, **kwargs).eval()
    out = expand(base, mode, rate=2).eval()
    x = torch.randn(2, *model_entry(name).input_shape(**kwargs)[1:])
    assert out(x).shape == base(x).shape
    expected = {n for kind in mode.split("+") for n in expandable_layers(base, kind)}
    assert set(out.compactify_expansion["layers"]) == expected
    for lname in expected:
        orig, chain = base.get_submodule(lname), out.get_submodule(lname)
        assert isinstance(chain, nn.Sequential) and all(layer.bias is not None for layer in chain)
        if isinstance(orig, nn.Conv2d):
            assert all(c.groups == orig.groups for c in chain)
            assert chain[0].in_channels == orig.in_channels and chain[-1].out_channels == orig.out_channels
            assert chain[0].in_channels * 2 == chain[0].out_channels
        else:
            assert chain[0].in_features == orig.in_features and chain[-1].out_features == orig.out_features
    assert sum(p.numel() for p in out.parameters()) > sum(p.numel() for p in base.parameters())


def test_applicable_modes():
    assert applicable_modes("smallnet7") == ["fc", "cl", "ck", "cl+fc", "ck+fc"]
    assert applicable_modes("smallnet3") == ["fc", "cl", "cl+fc"]
    assert "ck" in applicable_modes("resnet18") and "ck" not in applicable_modes("mobilenetv2")


def test_bad_modes_and_rates():
    model = create_model("smallnet3")
    with pytest.raises(BadInputError, match="'ck' does not apply.*kernel"):
        expand(model, "ck")
    with pytest.raises(BadInputError, match="'ck' does not apply"):
        expand(model, "ck+fc")
    with pytest.raises(BadInputError, match="unknown expansion mode"):
        expand(model, "xx")
    with pytest.raises(BadInputError, match="unknown expansion mode"):
        expand(model, "cl+ck")
    for rate in (0, -1, 1.5, True):
        with pytest.raises(BadInputError, match="rate"):
            expand(model, "cl", rate=rate)
    assert normalize_mode("FC+CK") == "ck+fc"


def test_layer_selection():
    model = create_model("smallnet7")
    out = expand(model, "ck+fc", layers=["conv2", "fc*"])
    assert out.compactify_expansion["layers"] == ["conv2", "fc1", "fc2"]
    assert isinstance(out.conv1, nn.Conv2d)
    with pytest.raises(BadInputError, match="match no layer"):
        expand(model, "cl", layers=["conv9"])
    with pytest.raises(BadInputError, match="does not apply"):
        expand(model, "ck+fc", layers=["conv1"])  # nothing left for fc
    with pytest.raises(BadInputError, match="list of module names"):
        expand(model, "cl", layers="conv1")


def test_module_shared_by_two_sites_stays_shared():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3, padding=1)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    out = expand(Twice(), "cl")
    assert out.a is out.b and isinstance(out.a, nn.Sequential)
    assert out(torch.randn(1, 3, 8, 8)).shape == (1, 3, 8, 8)


def test_expanded_model_exports():
    model = create_model("smallnet7-ck+fc", width=0.5, input_size=16).eval()
    x = torch.randn(1, 3, 16, 16)
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), model(x))
