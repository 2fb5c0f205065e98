"""The check every conversion does (converter.frontends.fx.check): it catches a merged layer that is off, it
runs the network in float64 without a float64 copy of the whole model, and the FLOPs added up from
the plan equal a count of the compact graph run."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactify.converter.engine import algebra as A
from compactify.converter.frontends.fx import check as C
from compactify.converter.frontends.fx.check import example_input
from compactify.converter.frontends.fx.profile import count_flops
from compactify.converter.pipeline.contraction import contract
from compactify.measure.metrics import relative_error
from compactify.models import create_model


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            t.copy_(torch.rand(t.shape, generator=g) + 0.5 if name.endswith("running_var")
                    else torch.randn(t.shape, generator=g) * 0.3)
    return model.eval()


def chain():
    return randomize(nn.Sequential(nn.Conv2d(3, 12, 1, padding=1), nn.Conv2d(12, 16, 3), nn.BatchNorm2d(16),
                                   nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)))


def test_every_merged_region_is_checked_in_float64():
    r = contract(chain(), (1, 3, 10, 10))
    rows = r.check["regions"]
    merged = [d for d in r.decisions if d.kind == "dense"]
    assert len(merged) == 2 and len(rows) == 2 and r.check["regions_checked"] == 2
    for row in rows:
        assert row["passed"] and row["max_rel_error"] < 1e-6 and row["input_shape"][0] == 1
    assert r.check["network"]["float64_reference"].startswith("source model, weights cast")
    assert not r.warnings


def test_a_merged_layer_that_is_off_is_caught_and_withdrawn(monkeypatch):
    """Corrupt one merged weight by 1e-4 of its scale between planning and the check: the check
    catches it, the merge is withdrawn (the region keeps its own layers), and the network is exact."""
    from compactify.converter.frontends.fx import source as K

    real = K.check_regions

    def corrupted(gm, decisions, profile, truncated=False):
        d = next(d for d in decisions if d.kind == "dense")
        conv = d.module if isinstance(d.module, nn.Conv2d) else d.module[-1]
        with torch.no_grad():
            conv.weight[0].mul_(1 + 1e-4)
        return real(gm, decisions, profile, truncated)

    monkeypatch.setattr(K, "check_regions", corrupted)
    r = contract(chain(), (1, 3, 10, 10))
    failed = [row for row in r.check["regions"] if not row["passed"]]
    assert len(failed) == 1 and failed[0]["max_rel_error"] > 1e-6
    withdrawn = [d for d in r.decisions if d.stopped_by == "withdrawn"]
    assert [d.region.name for d in withdrawn] == [failed[0]["region"]] and withdrawn[0].kind == "keep"
    assert any("merge withdrawn" in w and "off its own layers" in w for w in r.warnings)
    assert withdrawn[0].params_after == withdrawn[0].params_before
    assert r.max_rel_error < 1e-6  # the corrupted layer was never written


def test_network_error_equals_a_float64_copy_reference():
    model = chain()
    r = contract(model, (1, 3, 10, 10))
    x = example_input((1, 3, 10, 10), seed=C.ERROR_SEED + 1)
    with torch.no_grad():
        truth = copy.deepcopy(model).double()(x.double())
        _, expected = relative_error(r.compact(x), truth)
        _, source = relative_error(model(x), truth)
    assert r.max_rel_error == pytest.approx(expected, rel=1e-12, abs=0)
    assert r.source_rel_error == pytest.approx(source, rel=1e-12, abs=0)


def test_float64_weights_restores_and_holds_one_module_at_a_time():
    model = chain()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    total = sum(p.numel() for p in model.parameters())
    most = [0]

    def watch(module, args, out):
        held = sum(t.numel() for m in model.modules() for t in m.parameters(recurse=False) if t.dtype == torch.float64)
        most[0] = max(most[0], held)

    handles = [m.register_forward_hook(watch) for m in model]
    out, how = C.float64_forward(model, torch.randn(1, 3, 10, 10))
    for h in handles:
        h.remove()
    assert out[0].dtype == torch.float64 and how.startswith("source model, weights cast")
    largest_module = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model)
    assert 0 < most[0] <= largest_module < total
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


class SharedWeight(nn.Module):  # reads a child's weight outside the child
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return F.conv2d(self.conv(x), self.conv.weight)


def test_weights_read_outside_their_module_fall_back_to_a_float64_copy():
    model = randomize(SharedWeight())
    x = torch.randn(1, 3, 4, 4)
    out, how = C.float64_forward(model, x)
    assert "float64 copy" in how
    with torch.no_grad():
        assert torch.equal(out[0], copy.deepcopy(model).double()(x.double()))
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("name, shape", [("smallnet7-ck+fc", (1, 3, 32, 32)), ("mobilenetv2-cl", (1, 3, 32, 32)),
                                         ("shufflenetv2-cl", (1, 3, 64, 64)), ("repvgg", (1, 3, 32, 32))])
def test_flops_after_from_the_plan_equal_a_count_of_the_compact_graph(name, shape):
    kwargs = {} if name.startswith("smallnet") else {"width": 0.25, "input_size": shape[-1]}
    if name.startswith("shufflenet"):
        kwargs["width"] = 0.5
    r = contract(randomize(create_model(name, **kwargs), seed=1), shape)
    assert any(d.kind == "dense" for d in r.decisions)
    assert r.flops_after == count_flops(r.compact, r.source.example) < r.flops_before


@settings(max_examples=200, deadline=None)
@given(k=st.integers(1, 9), d=st.integers(1, 3), s=st.integers(1, 4), before=st.integers(0, 6),
       after=st.integers(0, 6), n=st.integers(1, 300))
def test_a_region_exact_at_every_size_is_checked_where_all_its_border_cases_and_an_interior_remain(
        k, d, s, before, after, n):
    op = A.conv(torch.zeros(2, 2, k), None, s, ((before, after),), d)
    if op.output_size((n,))[0] < 1:
        return
    decision = SimpleNamespace(kind="dense", operator=op, size_notes=[], lead=None)
    m = C.region_check_shape(decision, (1, 2, n))[2]
    assert 1 <= m <= n
    if m == n:
        return
    assert (n - m) % s == 0  # the last window falls as at the traced size

    def reads_padding(i):  # output i's window against the padded input [0, before + m + after)
        start = i * s
        return start < before or start + op.span[0] > before + m

    outputs = op.output_size((m,))[0]
    left = -(-before // s)
    right = -(-after // s)
    assert outputs >= left + right + C.REGION_INTERIOR
    assert sum(not reads_padding(i) for i in range(outputs)) >= C.REGION_INTERIOR
    assert C.region_check_shape(SimpleNamespace(kind="dense", operator=op, size_notes=["size"], lead=None), (1, 2, n)) == (1, 2, n)
    spread = A.conv_transpose(torch.zeros(2, 2, k), None, s, 0, 0, d)
    assert C.region_check_shape(SimpleNamespace(kind="dense", operator=spread, size_notes=[], lead=None),
                                (1, 2, n)) == (1, 2, n) or s == 1
