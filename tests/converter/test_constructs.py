"""One test per way real model code writes linear structure (issue 11), each checked against the
source run in float64 on random inputs, and what the converter must merge or refuse there."""

from __future__ import annotations

import functools
import operator

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compactify.converter.pipeline.contraction import contract

from compactify.converter.frontends.fx.check import reference_float64
from compactify.converter.backends.size_guard import InputSizeError
from compactify.tensors import flatten_outputs


def _bn(c: int, seed: int | torch.Generator) -> nn.BatchNorm2d:
    """A BatchNorm far from the identity, as after training."""
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
        bn.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
        bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=g) * 0.5)
    return bn


def _error(model: nn.Module, compact: nn.Module, shape, seed: int = 1) -> float:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        refs = flatten_outputs(reference_float64(model)(x.double()))
        gots = flatten_outputs(compact(x))
    return max(float((g.double() - r).abs().max() / r.abs().max()) for g, r in zip(gots, refs))


def _exact(model: nn.Module, shape, **kwargs):
    torch.manual_seed(0)
    model = model.eval()
    r = contract(model, shape, **kwargs)
    assert r.max_rel_error <= 1e-6
    for seed in (1, 2):
        assert _error(model, r.compact, (3, *shape[1:]), seed) <= 1e-6
    return r


def _merged(r) -> list[list[str]]:
    return [d.region.ops for d in r.decisions if d.kind == "dense"]


def _convs(r) -> list[nn.Module]:
    """The merged layers the compact module holds."""
    return [m for m in r.compact.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


_LAYER_OPS = {torch.ops.aten.conv2d.default, torch.ops.aten.linear.default, torch.ops.aten.convolution.default}


def _layers(r) -> int:
    """Every conv or linear layer the compact graph still runs, merged or left as it was."""
    return len(_convs(r)) + sum(n.op == "call_function" and n.target in _LAYER_OPS for n in r.compact.graph.nodes)


class InPlaceBranches(nn.Module):
    """MobileOne/DBB: ``out += branch(x)``, and RepVGG's ``x += identity``, then ReLU(inplace)."""

    def __init__(self, c=6):
        super().__init__()
        self.k3, self.b3 = nn.Conv2d(c, c, 3, padding=1, bias=False), _bn(c, 1)
        self.k1, self.b1 = nn.Conv2d(c, c, 1, bias=False), _bn(c, 2)
        self.idn = _bn(c, 3)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        out = self.b3(self.k3(x))
        out += self.b1(self.k1(x))
        identity = self.idn(x)
        out += identity
        return self.act(out)


def test_in_place_sums_merge_into_one_conv():
    r = _exact(InPlaceBranches(), (2, 6, 8, 8))
    convs = _convs(r)
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3)
    assert r.params_after == 6 * 6 * 9 + 6


class VisibleMutation(nn.Module):
    """An in-place op whose mutation another reader sees (a view taken before it): it must
    stay as it is, and nothing may be reordered across it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.a(x)
        view = y[:, :2]
        y.mul_(3.0)
        return torch.cat([view, view], 1) + self.b(y)


def test_in_place_op_seen_through_a_view_is_kept_exact():
    _exact(VisibleMutation(), (2, 4, 5, 5))


@pytest.mark.parametrize("how", ["stack", "sum", "reduce", "mean"])
def test_sums_written_as_stack_sum_or_reduce_merge(how):
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(5, 5, k, padding=k // 2) for k in (1, 3, 3)])

        def forward(self, x):
            outs = [c(x) for c in self.convs]
            if how == "stack":
                return torch.stack(outs).sum(0)
            if how == "mean":
                return torch.stack(outs, dim=0).mean(dim=0)
            if how == "sum":
                return sum(outs)
            return functools.reduce(operator.add, outs)

    r = _exact(Branches(), (2, 5, 7, 7))
    assert len(_convs(r)) == 1


class ChannelShuffle(nn.Module):
    """ShuffleNet: view -> transpose -> contiguous -> view between two 1x1 convs."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = nn.Conv2d(8, 8, 1), _bn(8, 4), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.bn(self.a(x))
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.b(y)


def test_contiguous_before_a_view_is_kept():
    r = _exact(ChannelShuffle(), (2, 8, 4, 4))
    assert _merged(r) == [["conv", "batchnorm"]]


class ACNetCrop(nn.Module):
    """ACNet with padding < k//2: the 1xk and kx1 branches read a cropped input."""

    def __init__(self, c=4, k=3, padding=0, crop=None):
        super().__init__()
        crop = k // 2 - padding if crop is None else crop
        self.crop = crop
        self.square, self.sbn = nn.Conv2d(c, c, k, padding=padding, bias=False), _bn(c, 5)
        self.ver, self.vbn = nn.Conv2d(c, c, (k, 1), padding=(padding, 0), bias=False), _bn(c, 6)
        self.hor, self.hbn = nn.Conv2d(c, c, (1, k), padding=(0, padding), bias=False), _bn(c, 7)

    def forward(self, x):
        c = self.crop
        ver_in = x[:, :, :, c:-c] if c else x
        hor_in = x[:, :, c:-c, :] if c else x
        return self.sbn(self.square(x)) + self.vbn(self.ver(ver_in)) + self.hbn(self.hor(hor_in))


def test_acnet_crops_merge_into_one_square_conv_at_every_size():
    r = _exact(ACNetCrop(), (2, 4, 9, 9))
    assert len(_convs(r)) == 1 and _convs(r)[0].kernel_size == (3, 3)
    assert all(d.get("exact_at", "every input size") == "every input size" for d in r.regions)
    model = ACNetCrop().eval()
    r = contract(model, (2, 4, 9, 9), dynamic_hw=True)
    assert len(_convs(r)) == 1
    assert _error(model, r.compact, (2, 4, 12, 7)) <= 1e-6


class CropFromStart(nn.Module):
    """A crop whose end is counted from the start (``x[..., 1:7]``) is a different operator at
    another size: merged, but the compact module refuses other sizes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.b(self.a(x)[:, :, 1:7, 1:7])


def test_size_specific_crop_is_guarded():
    r = _exact(CropFromStart(), (2, 3, 8, 8))
    assert any(d.get("exact_at") == "traced input size only" for d in r.regions)
    with pytest.raises(InputSizeError, match="8x8"):
        r.compact(torch.randn(1, 3, 9, 9))


class StridedThenPadded(nn.Module):
    """conv k2 s2 then conv k3 pad 1: exact at 8x8, wrong at 7x7 (abs error 0.30 before)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 8, 2, stride=2, bias=False)
        self.b = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x))


def test_exact_only_at_the_traced_size_refuses_other_sizes():
    model = StridedThenPadded().eval()
    r = _exact(model, (2, 2, 8, 8))
    assert len(_convs(r)) == 1
    with pytest.raises(InputSizeError, match="proved exact only at input size 8x8"):
        r.compact(torch.randn(1, 2, 7, 7))


def test_dynamic_hw_merges_only_what_holds_at_every_size():
    model = StridedThenPadded().eval()
    r = _exact(model, (2, 2, 8, 8), dynamic_hw=True)
    assert _layers(r) == 2
    kept = [d for d in r.regions if d["decision"] == "keep"]
    assert kept and all(d["stopped_by"] == "not exact" and "at some input sizes" in d["reason"] for d in kept)
    for size in (7, 9, 10):
        assert _error(model, r.compact, (1, 2, size, size)) <= 1e-6


class PadWithValue(nn.Module):
    """``F.pad(..., value=c)`` after a layer whose response to zero input is ``c``."""

    def __init__(self, value, bias):
        super().__init__()
        self.value = value
        self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 2, 3)
        with torch.no_grad():
            self.a.bias.fill_(bias)

    def forward(self, x):
        return self.b(F.pad(self.a(x), [1, 1, 1, 1], value=self.value))


def test_pad_with_the_value_the_layer_before_answers_merges():
    r = _exact(PadWithValue(0.75, 0.75), (2, 3, 6, 6))
    assert len(_convs(r)) == 1


def test_pad_with_another_value_is_not_merged():
    r = _exact(PadWithValue(0.5, 0.75), (2, 3, 6, 6))
    assert _layers(r) == 2
    assert any(d.get("stopped_by") == "not exact" for d in r.regions)


class BNAndPad(nn.Module):
    """DBB's BN-and-pad: pad, then write the BN shift into the border through slices."""

    def __init__(self, borders=4):
        super().__init__()
        self.borders = borders
        self.a, self.bn, self.b = nn.Conv2d(4, 4, 1, bias=False), _bn(4, 8), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.bn(self.a(x))
        p = 1
        v = (self.bn.bias.detach() - self.bn.running_mean * self.bn.weight.detach()
             / torch.sqrt(self.bn.running_var + self.bn.eps)).view(1, -1, 1, 1)
        y = F.pad(y, [p] * 4)
        writes = [(slice(None), slice(None), slice(0, p), slice(None)),
                  (slice(None), slice(None), slice(-p, None), slice(None)),
                  (slice(None), slice(None), slice(None), slice(0, p)),
                  (slice(None), slice(None), slice(None), slice(-p, None))]
        for index in writes[:self.borders]:
            y[index] = v
        return self.b(y)


def test_bn_and_pad_merges_into_one_conv():
    r = _exact(BNAndPad(), (2, 4, 6, 6))
    assert len(_convs(r)) == 1 and r.params_after == 4 * 4 * 9 + 4
    # The region's own float64 check runs the in-place border writes too (it used to miss them and
    # call this exact merge 0.4 off).
    assert r.check["regions"] and all(row["passed"] for row in r.check["regions"])
    assert all(d.get("exact_at", "every input size") == "every input size" for d in r.regions)


def test_bn_and_pad_with_a_border_left_unwritten_stays_exact():
    r = _exact(BNAndPad(borders=3), (2, 4, 6, 6))
    assert _layers(r) == 2


class ConcatThenConv(nn.Module):
    """Inception-style: branches from one tensor, concatenated, into one 1x1 conv."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 3, 3, padding=1), nn.Conv2d(4, 5, 1)
        self.bn, self.fuse = _bn(8, 9), nn.Conv2d(8, 6, 1)

    def forward(self, x):
        return self.fuse(self.bn(torch.cat([self.a(x), self.b(x)], dim=1)))


def test_concat_of_branches_merges_into_the_conv_after_it():
    r = _exact(ConcatThenConv(), (2, 4, 6, 6))
    assert len(_convs(r)) == 1 and _convs(r)[0].out_channels == 6


class LinearBN(nn.Module):
    """timm LeViT's Linear_BN: Linear, flatten(0, 1), BatchNorm1d, reshape back."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(6, 10), nn.Linear(10, 7, bias=False)
        self.bn = nn.BatchNorm1d(7)
        with torch.no_grad():
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.normal_()

    def forward(self, x):
        x = self.l2(torch.relu(self.l1(x)))
        return self.bn(x.flatten(0, 1)).reshape_as(x)


def test_linear_then_reshape_then_batchnorm1d_folds():
    r = _exact(LinearBN(), (2, 5, 6))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in r.compact.modules())
    assert r.params_after == 6 * 10 + 10 + 10 * 7 + 7


class GhostCheap(nn.Module):
    """RepGhost: 1x1 conv + BN (no activation), then a depthwise conv + BN summed with a fusion BN.
    Merged whole, the 1x1 before the depthwise would become a dense 3x3 (more FLOPs); the sum of
    branches still merges into one depthwise conv."""

    def __init__(self, c=16):
        super().__init__()
        self.primary, self.pbn = nn.Conv2d(c, c, 1, bias=False), _bn(c, 10)
        self.cheap, self.cbn = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False), _bn(c, 11)
        self.fusion = _bn(c, 12)

    def forward(self, x):
        x1 = self.pbn(self.primary(x))
        return self.cbn(self.cheap(x1)) + self.fusion(x1)


def test_branches_merge_even_when_the_module_around_them_cannot():
    r = _exact(GhostCheap(), (2, 16, 8, 8))
    convs = _convs(r)
    assert [c.groups for c in convs] == [1, 16]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in r.compact.modules())


class AuxiliaryHead(nn.Module):
    """A training-only head after the third layer, computed but not returned."""

    def __init__(self):
        super().__init__()
        widths = [12, 6, 4, 8, 24, 12]
        self.layers = nn.ModuleList([nn.Linear(a, b) for a, b in zip(widths, widths[1:])])
        self.head = nn.Linear(8, 3)
        self.aux = None

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == 2:
                self.aux = self.head(x)  # a training-time loss would read it
        return x


def test_dead_auxiliary_head_does_not_split_the_chain():
    r = _exact(AuxiliaryHead(), (2, 12))
    assert r.params_after == 12 * 12 + 12


def test_report_says_what_stopped_each_unmerged_region():
    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 3, padding=1)  # padding after a bias
            self.c = nn.Conv2d(3, 3, 3, padding=1)

        def forward(self, x):
            return self.c(torch.relu(self.b(self.a(x))))

    r = _exact(Mixed(), (2, 3, 6, 6))
    stopped = {d["stopped_by"] for d in r.regions if d["decision"] == "keep"}
    assert {"not exact", "nothing to merge"} <= stopped


def test_sum_of_two_regions_that_stays_materialized_does_not_crash():
    # A sum reading two different regions is dropped from the affine steps while it is still
    # materialized as an exit (KeyError add_N in issue 11's sweep).
    class TwoRegions(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c, self.d = (nn.Conv2d(3, 3, 1) for _ in range(4))

        def forward(self, x):
            y = self.a(x)
            s = self.b(y) + self.c(torch.relu(y))
            return self.d(s), torch.sigmoid(s)

    _exact(TwoRegions(), (2, 3, 5, 5))


def test_error_is_judged_against_the_source_own_float32_error():
    r = _exact(InPlaceBranches(), (2, 6, 8, 8))
    assert 0 < r.source_rel_error < 1e-5
    assert not any("more than" in w for w in r.warnings)


def test_an_approximate_merge_is_flagged_against_the_source_float32_error():
    class PaddedAfterBias(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 3, 3, padding=1)
            with torch.no_grad():
                self.a.bias.fill_(2.0)

        def forward(self, x):
            return self.b(self.a(x))

    r = contract(PaddedAfterBias().eval(), (2, 3, 6, 6), allow_approximate=True)
    assert r.max_rel_error > 1e-3
    assert any("source's own float32 error" in w for w in r.warnings)


def test_report_names_the_ops_that_end_each_region():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _bn(4, 13), nn.ReLU(), nn.Conv2d(4, 4, 1)).eval()
    r = contract(model, (1, 3, 8, 8))
    first, last = r.regions
    assert (first["after"], first["read_by"]) == ("input", ["relu"])
    assert (last["after"], last["read_by"]) == ("relu", ["output"])


def test_float64_copy_of_a_graph_that_casts_to_float32():
    # DBB's identity kernels are cast with .to(dtype): the graph then asserts and casts float32.
    from compactify.converter.frontends.fx.capture import capture_graph, float64_graph

    class Casting(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.register_buffer("eye", torch.eye(3).reshape(3, 3, 1, 1))

        def forward(self, x):
            return F.conv2d(x, self.conv.weight + self.eye.to(torch.float32))

    model = Casting().eval()
    gm = float64_graph(capture_graph(model, torch.randn(2, 3, 4, 4)))
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        assert gm(x).dtype == torch.float64
        assert torch.allclose(gm(x), reference_float64(model)(x), rtol=0, atol=1e-12)


def test_bn_and_pad_merges_at_every_size_with_dynamic_hw():
    model = BNAndPad().eval()
    r = _exact(model, (2, 4, 6, 6), dynamic_hw=True)
    assert len(_convs(r)) == 1
    for size in ((5, 9), (11, 7)):
        assert _error(model, r.compact, (2, 4, *size)) <= 1e-6
