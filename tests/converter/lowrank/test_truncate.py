"""Rank truncation and group-lasso pruning of a contraction plan, through ``contract``, against
the float64 operators and the float64 source."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compactify.converter.engine import algebra as A
from compactify.converter.lowrank import factor as L
from compactify.converter.pipeline.contraction import contract
from compactify.converter.frontends.fx.check import example_input, reference_float64
from compactify.converter.lowrank.rank_rules import parse_rank_rule
from compactify.converter.lowrank.rank_request import RankRequest, random_calibration


def _request(rule: str, **kw) -> RankRequest:
    return RankRequest(parse_rank_rule(rule), **kw)


def _exact_low_rank(rows: int, cols: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """A float32 matrix of rank exactly ``rank``: small integers times 1/8 multiply without
    rounding, so the float64 SVD sees no round-off tail."""
    def nonzero(*shape):  # no all-zero unit, which pruning would (rightly) remove
        sign = torch.randint(0, 2, shape, generator=gen) * 2 - 1
        return (torch.randint(1, 3, shape, generator=gen) * sign).float()

    return (nonzero(rows, rank) @ nonzero(rank, cols)) / 8


class LowRankNet(nn.Module):
    """An expanded chain (merged into one conv, rank 3 through its last 1x1), a plain conv of
    rank 2 and a linear layer of rank 2."""

    def __init__(self):
        super().__init__()
        self.chain = nn.Sequential(nn.Conv2d(3, 12, 1, padding=1), nn.Conv2d(12, 12, 3), nn.Conv2d(12, 16, 1),
                                   nn.BatchNorm2d(16))
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.chain[2].weight.copy_(_exact_low_rank(16, 12, 3, g).reshape(16, 12, 1, 1))
            self.conv.weight.copy_(_exact_low_rank(16, 16 * 9, 2, g).reshape(16, 16, 3, 3))
            self.fc.weight.copy_(_exact_low_rank(10, 16, 2, g))
            bn = self.chain[3]
            bn.running_mean.normal_(generator=g)
            bn.running_var.uniform_(0.5, 1.5, generator=g)
            bn.weight.normal_(generator=g)
            bn.bias.normal_(generator=g)

    def forward(self, x):
        x = F.relu(self.chain(x))
        x = F.relu(self.conv(x))
        return self.fc(x.mean((2, 3)))


def _apply_module64(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    import copy

    with torch.no_grad():
        return copy.deepcopy(module).double()(x)


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got - ref).detach().abs().max() / ref.detach().abs().max())


def test_exact_recovery_when_the_true_rank_is_below_the_cut():
    torch.manual_seed(0)
    model = LowRankNet().eval()
    r = contract(model, (1, 3, 8, 8), rank=_request("rank:4"))
    factored = {d.region.name: d for d in r.decisions if d.kind == "factored"}
    assert len(factored) == 3, [(d.region.name, d.kind, d.reason) for d in r.decisions]
    rows = {row["region"]: row for row in r.truncation["layers"]}
    merged = next(d for d in factored.values() if len(d.region.nodes) > 1)
    assert rows[merged.region.name]["rank_before"] == 3
    assert sorted(row["rank_after"] for row in rows.values()) == [2, 2, 3]
    gen = torch.Generator().manual_seed(5)
    for name, d in factored.items():
        row = rows[name]
        assert row["energy_kept"] == pytest.approx(1.0, abs=1e-12)
        assert d.exact
        op = d.composition.value
        shape = (4, *d.region.entry.meta["val"].shape[1:])
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        first, second = L.factor(op, row["rank_after"], row["form"])
        dense = A.apply(op, x)
        assert _rel(A.apply(second, A.apply(first, x)), dense) < 1e-12
        # The shipped float32 layers: the same operator up to float32 rounding of the weights.
        assert _rel(_apply_module64(d.module, x), dense) < 1e-5
    # The whole plan in float64: truncated against untruncated.
    assert r.truncation["output_error"]["dtype"] == "float64"
    assert r.truncation["output_error"]["max_rel_error"] < 1e-10
    assert r.max_rel_error < 1e-5  # the compact float32 model against the float64 source
    assert r.truncation["flops_truncated"] == r.flops_after
    assert r.truncation["flops_ratio"] < 0.5


class RandomNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def random_net():
    torch.manual_seed(1)
    model = RandomNet().eval()
    with torch.no_grad():  # a decaying spectrum, as trained layers have, so that the rules differ
        for layer in (model.conv1, model.conv2, model.fc1):
            w = layer.weight.reshape(layer.weight.shape[0], -1)
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            s = s[0] * 0.6 ** torch.arange(s.numel(), dtype=s.dtype)
            layer.weight.copy_(((u * s) @ vh).reshape(layer.weight.shape))
    return model


SHAPE = (1, 3, 16, 16)


@pytest.mark.parametrize("rule", ["energy:0.95", "nuclear:0.9", "threshold:0.05", "rank:3", "flops:0.4", "error:0.05"])
def test_each_rule_through_contract(random_net, rule):
    r = contract(random_net, SHAPE, rank=_request(rule))
    t = r.truncation
    parsed = parse_rank_rule(rule)
    rows = t["layers"]
    assert [row["region"] for row in rows] == ["bn1", "conv2", "fc1", "fc2"]
    factored = [row for row in rows if row["form"] != "dense"]
    assert factored, rows
    by_name = {d.region.name: d for d in r.decisions}
    for row in rows:
        d = by_name[row["region"]]
        assert (d.kind == "factored") == (row["form"] != "dense")
        assert row["flops_after"] == d.flops_after
        if row["form"] != "dense":
            assert row["flops_after"] < row["flops_before"]
            inner = d.module[0]
            width = inner.out_channels if isinstance(inner, nn.Conv2d) else inner.out_features
            assert width == row["rank_after"]
            if parsed.kind == "energy":
                assert row["energy_kept"] >= parsed.value
            if parsed.kind == "rank":
                assert row["rank_after"] == 3
    # The compact model is the truncated plan: the same FLOPs, and on the calibration inputs
    # the same error against the source (which the untruncated plan matches to float32 rounding).
    assert t["flops_truncated"] == r.flops_after
    x = random_calibration(SHAPE)
    shipped_error = _rel(r.compact(x).double(), reference_float64(random_net)(x.double()))
    assert shipped_error == pytest.approx(t["output_error"]["max_rel_error"], rel=1e-3, abs=1e-5)
    if parsed.kind == "flops":
        assert t["flops_ratio"] <= parsed.value
    if parsed.kind == "error":
        assert 0 < t["output_error"]["max_rel_error"] <= parsed.value


def test_rank_multiple_rounds_ranks_up(random_net):
    r = contract(random_net, SHAPE, rank=_request("rank:3", multiple=4))
    rows = {row["region"]: row for row in r.truncation["layers"]}
    assert rows["conv2"]["form"] != "dense" and rows["conv2"]["rank_after"] == 4
    assert all(row["rank_after"] % 4 == 0 or row["rank_after"] == row["full_rank"]
               for row in rows.values() if row["form"] != "dense")
    assert "multiple of 4" in rows["conv2"]["reason"]


class Thin(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


def test_a_layer_that_would_not_pay_stays_as_it_is():
    torch.manual_seed(2)
    model = Thin().eval()
    plain = contract(model, (1, 3, 6, 6))
    r = contract(model, (1, 3, 6, 6), rank=_request("energy:1"))  # full rank: neither form pays
    assert [d.kind for d in r.decisions] == [d.kind for d in plain.decisions] == ["keep", "keep"]
    assert all(d.module is None for d in r.decisions)
    row = r.truncation["layers"][0]
    assert row["form"] == "dense" and row["rank_after"] == row["rank_before"] == 4
    assert "break-even rank 3" in row["reason"] and "stays dense" in row["reason"]
    assert r.truncation["flops_ratio"] == 1.0 and r.truncation["output_error"]["max_abs"] == 0.0
    x = example_input((2, 3, 6, 6), seed=9)
    assert torch.equal(r.compact(x), plain.compact(x))


class GroupLassoNet(nn.Module):
    """conv+BN -> relu -> maxpool -> conv (padded) -> relu -> flatten -> linear -> relu -> linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc1 = nn.Linear(8 * 4 * 4, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.conv2(x))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def _group_lasso_net():
    torch.manual_seed(3)
    m = GroupLassoNet().eval()
    with torch.no_grad():
        m.bn1.running_mean.uniform_(-0.5, 0.5)
        m.bn1.running_var.uniform_(0.5, 1.5)
        m.bn1.weight.uniform_(0.5, 1.5)
        m.bn1.bias.uniform_(-0.5, 0.5)
        # conv1 units 0 and 1 are dead; after BN they output beta: -0.5 (ReLU: 0, removable
        # even into the padded conv2) and 0.7 (a constant a padded layer cannot absorb).
        for unit, beta in ((0, -0.5), (1, 0.7)):
            m.conv1.weight[unit] = 0
            m.conv1.bias[unit] = 0
            m.bn1.running_mean[unit] = 0
            m.bn1.bias[unit] = beta
        # conv2 units 2 and 3 are dead with biases 0.3 and -1: ReLU gives 0.3 and 0, both go
        # into fc1's bias (a linear layer pads nothing) through the flatten.
        m.conv2.weight[2:4] = 0
        m.conv2.bias[2], m.conv2.bias[3] = 0.3, -1.0
        m.fc1.weight[5] = 0
        m.fc1.bias[5] = 0
    return m


def test_group_lasso_units_are_removed_with_the_next_layers_inputs():
    model = _group_lasso_net()
    r = contract(model, (1, 3, 8, 8), rank=_request("energy:1"))
    notes = {n["producer"]: n for n in r.truncation["pruning"]}
    assert notes["bn1"]["dead_units"] == 2 and notes["bn1"]["removed"] == 1 and notes["bn1"]["consumer"] == "conv2"
    assert "zero-padded" in notes["bn1"]["why_not"]
    assert notes["bn1"]["through"] == ["relu", "max_pool2d"]
    assert notes["conv2"]["removed"] == 2 and notes["conv2"]["consumer"] == "fc1"
    assert notes["conv2"]["through"] == ["relu", "flatten"]
    assert notes["fc1"]["removed"] == 1 and notes["fc1"]["consumer"] == "fc2"
    layers = [m for m in r.compact.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    shapes = [tuple(m.weight.shape[:2]) for m in layers]
    assert shapes == [(7, 3), (6, 7), (15, 6 * 16), (10, 15)]
    rows = {row["region"]: row for row in r.truncation["layers"]}
    assert rows["conv2"]["units_removed"] == 2 and rows["conv2"]["inputs_removed"] == 1
    assert rows["fc1"]["inputs_removed"] == 32
    # Removing dead units is exact: the compact model still computes the source.
    assert r.max_rel_error < 1e-5
    x = example_input((4, 3, 8, 8), seed=4)
    ref = reference_float64(model)(x.double())
    assert _rel(r.compact(x).double(), ref) < 1e-5
    assert r.truncation["output_error"]["max_rel_error"] < 1e-12
    assert r.params_after < contract(model, (1, 3, 8, 8)).params_after
    t = r.truncation
    assert t["params_truncated"] == t["params_pruned"] < t["params_untruncated"]
    assert t["flops_truncated"] == t["flops_pruned"] < t["flops_untruncated"]


def test_a_residual_sum_inside_the_next_region_reads_the_dead_unit_as_zero():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 6, 1)
            self.b = nn.Conv2d(6, 6, 1)

        def forward(self, x):
            y = F.relu(self.a(x))
            return self.b(y) + y  # one merged region (b + identity) reads y: its channel 1 can go

    torch.manual_seed(4)
    m = Residual().eval()
    with torch.no_grad():
        m.a.weight[1] = 0
        m.a.bias[1] = 0
    r = contract(m, (1, 4, 5, 5), rank=_request("energy:1"))
    note = r.truncation["pruning"][0]
    assert note["removed"] == 1, note
    x = example_input((3, 4, 5, 5), seed=2)
    assert _rel(r.compact(x).double(), reference_float64(m)(x.double())) < 1e-6


def test_units_are_kept_where_the_path_is_not_followed():
    class Concat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(4, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            y = F.relu(self.a(x))
            return torch.cat([self.b(y), y], 1)  # y has a second user: its channels cannot go

    torch.manual_seed(4)
    m = Concat().eval()
    with torch.no_grad():
        m.a.weight[1] = 0
        m.a.bias[1] = 0
    r = contract(m, (1, 4, 5, 5), rank=_request("energy:1"))
    note = r.truncation["pruning"][0]
    assert note["dead_units"] == 1 and note["removed"] == 0 and note["why_not"]
    assert all(row["units_removed"] == 0 for row in r.truncation["layers"])


def test_latency_cost_times_the_factored_layers():
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(64, 64, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    torch.manual_seed(5)
    m = Wide().eval()
    r = contract(m, (1, 64, 16, 16), rank=_request("rank:2", cost="latency"))
    row = r.truncation["layers"][0]
    assert row["latency_dense_ms"] > 0 and row["latency_factored_ms"] > 0
    # rank 2 of a 64x576 operator is ~28x fewer FLOPs: measurably faster on any CPU.
    assert row["form"] != "dense" and r.decisions[0].kind == "factored"
    assert "measured on the CPU" in row["reason"]


def test_no_conv_or_linear_layer_and_a_budget_it_cannot_meet():
    from compactify.errors import BadInputError

    class Scale(nn.Module):
        def forward(self, x):
            return F.relu(x) * 2

    r = contract(Scale().eval(), (1, 3, 4, 4), rank=_request("energy:0.9"))
    assert r.truncation["layers"] == []
    with pytest.raises(BadInputError, match="out of reach"):
        contract(Thin().eval(), (1, 3, 6, 6), rank=_request("flops:0.1"))
