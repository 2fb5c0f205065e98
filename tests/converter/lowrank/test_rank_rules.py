"""Rank rules on synthetic spectra, checked by hand and against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactify.converter.lowrank.rank_rules import (
    LayerCandidate,
    RankRule,
    choose_ranks,
    parse_rank_rule,
    total_flops,
)
from compactify.errors import BadInputError

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


def _layer(s, dense=1000, per=100, name="conv", form="channel"):
    return LayerCandidate(name, torch.tensor(s, dtype=torch.float64), dense, per, form)


# s = [4, 2, 1, 1]: s**2 = [16, 4, 1, 1] (total 22), s sums to 8.
S = [4.0, 2.0, 1.0, 1.0]


@pytest.mark.parametrize(
    "rule, rank",
    [
        ("energy:0.5", 1),  # 16/22 = 0.73
        ("energy:0.9", 2),  # needs 19.8: 16 + 4 = 20
        ("energy:0.95", 3),  # needs 20.9: 21
        ("energy:1", 4),
        ("nuclear:0.75", 2),  # needs 6: 4 + 2, exactly on the boundary
        ("nuclear:0.76", 3),  # needs 6.08
        ("threshold:0.5", 2),  # s >= 2
        ("threshold:0.3", 2),  # s >= 1.2
        ("threshold:0.25", 4),  # s >= 1
        ("threshold:1", 1),
        ("rank:3", 3),
        ("rank:10", 4),  # never above the layer's own rank
    ],
)
def test_per_layer_rules_on_a_hand_checked_spectrum(rule, rank):
    choice = choose_ranks([_layer(S)], rule)["conv"]
    assert choice.factored and choice.form == "channel"
    assert choice.rank_after == rank and choice.rank_before == 4 and choice.full_rank == 4
    kept = sum(x * x for x in S[:rank]) / 22
    assert choice.energy_kept == pytest.approx(kept, rel=1e-12)
    assert choice.flops_before == 1000 and choice.flops_after == 100 * rank
    assert rule in choice.reason


def test_numerical_rank_ignores_round_off():
    choice = choose_ranks([_layer([3.0, 1.0, 1e-14, 1e-15])], "energy:1")["conv"]
    assert choice.rank_before == 2 and choice.rank_after == 2 and choice.full_rank == 4
    assert choice.energy_kept == pytest.approx(1.0, abs=1e-20)
    assert choose_ranks([_layer([3.0, 1.0, 1e-14, 1e-15])], "rank:4")["conv"].rank_after == 2


def test_a_layer_is_factored_only_when_it_pays():
    # 300 FLOPs per unit of rank against 1000 dense: ranks 1..3 pay, 4 does not.
    choices = choose_ranks([_layer(S, per=300)], "energy:1")
    c = choices["conv"]
    assert not c.factored and c.form == "dense"
    assert c.rank_after == c.rank_before == 4 and c.energy_kept == 1.0 and c.flops_after == 1000
    assert "break-even rank 3" in c.reason and "stays dense" in c.reason
    c = choose_ranks([_layer(S, per=300)], "energy:0.95")["conv"]
    assert c.factored and c.rank_after == 3 and c.flops_after == 900
    assert total_flops({"conv": c}) == (1000, 900)


def test_ranks_round_up_to_a_multiple_but_not_past_the_full_rank():
    s = [10.0 / (i + 1) for i in range(20)]
    plain = choose_ranks([_layer(s, dense=10_000)], "rank:3")["conv"]
    assert plain.rank_after == 3
    rounded = choose_ranks([_layer(s, dense=10_000)], "rank:3", multiple=8)["conv"]
    assert rounded.rank_after == 8 and "rounded up to 8" in rounded.reason
    assert choose_ranks([_layer(s, dense=10_000)], "rank:19", multiple=8)["conv"].rank_after == 20
    # Rounding can push a layer past break-even: then it stays dense.
    assert not choose_ranks([_layer(s, dense=600)], "rank:3", multiple=8)["conv"].factored


def test_grouped_layers_share_one_rank_across_groups():
    grouped = LayerCandidate("g", torch.tensor([[3.0, 1.0], [2.0, 2.0]]), 1000, 100)
    # Energy: 9+1 and 4+4, total 18; rank 1 keeps 13/18 = 0.72.
    assert choose_ranks([grouped], "energy:0.7")["g"].rank_after == 1
    assert choose_ranks([grouped], "energy:0.75")["g"].rank_after == 2
    # Threshold 0.6 of the largest (3): group 0 keeps 1, group 1 keeps 2, so both keep 2.
    assert choose_ranks([grouped], "threshold:0.6")["g"].rank_after == 2


def test_the_cheaper_form_is_chosen():
    channel = _layer([4.0, 3.0, 2.0, 0.0], per=200, form="channel")  # rank 3: 600
    spatial = _layer([6.0, 0.5, 0.3, 0.1, 0.1, 0.1], per=150, form="spatial")  # rank 1..: cheaper
    c = choose_ranks([channel, spatial], "energy:0.99")["conv"]
    assert c.form == "spatial" and c.flops_after < 600
    c = choose_ranks([channel, spatial], "rank:3")["conv"]
    assert c.form == "spatial" and c.flops_after == 450
    with pytest.raises(ValueError):
        choose_ranks([channel, channel], "rank:3")


def test_all_zero_layer_stays_dense():
    c = choose_ranks([_layer([0.0, 0.0])], "energy:0.9")["conv"]
    assert not c.factored and "zero" in c.reason


# ---------------------------------------------------------------------------------------
# Global FLOPs budget


def _loss(s, r):
    s2 = [x * x for x in s]
    tail, total = sum(s2[r:]), sum(s2)
    return 0.0 if total == 0 or tail <= 1e-20 * total else tail / total


def _brute_force(layers, fraction, multiple, fixed):
    """Every combination of dense or (form, rank) per layer; the least loss within budget."""
    by_name = {}
    for c in layers:
        by_name.setdefault(c.name, []).append(c)
    per_layer = []
    for cands in by_name.values():
        opts = [("dense", 0, cands[0].dense_flops, 0.0)]
        for c in cands:
            s = c.singular_values.tolist()
            for k in range(1, len(s) + 1):
                r = min(len(s), math.ceil(k / multiple) * multiple)
                if r * c.flops_per_rank < c.dense_flops:
                    opts.append((c.form, r, r * c.flops_per_rank, _loss(s, r)))
        per_layer.append(opts)
    dense_total = sum(cands[0].dense_flops for cands in by_name.values()) + fixed
    best = None
    for combo in itertools.product(*per_layer):
        cost = sum(o[2] for o in combo) + fixed
        if cost <= fraction * dense_total * (1 + 1e-12):
            loss = sum(o[3] for o in combo)
            if best is None or loss < best - 1e-15:
                best = loss
    return best


spectrum = st.lists(st.floats(0.01, 10.0), min_size=1, max_size=5).map(lambda v: sorted(v, reverse=True))
layer_st = st.tuples(spectrum, st.integers(200, 3000), st.integers(10, 500), st.booleans(), spectrum, st.integers(10, 500))


@SETTINGS
@given(
    specs=st.lists(layer_st, min_size=1, max_size=3),
    fraction=st.floats(0.05, 1.0),
    multiple=st.sampled_from([1, 1, 2]),
    fixed=st.sampled_from([0, 0, 300]),
)
def test_flops_budget_matches_brute_force(specs, fraction, multiple, fixed):
    layers = []
    for i, (s, dense, per, two_forms, s2, per2) in enumerate(specs):
        layers.append(_layer(s, dense, per, f"l{i}", "channel"))
        if two_forms:
            layers.append(_layer(s2, dense, per2, f"l{i}", "spatial"))
    best = _brute_force(layers, fraction, multiple, fixed)
    rule = RankRule("flops", fraction)
    if best is None:
        with pytest.raises(BadInputError, match="out of reach"):
            choose_ranks(layers, rule, multiple=multiple, fixed_flops=fixed)
        return
    choices = choose_ranks(layers, rule, multiple=multiple, fixed_flops=fixed)
    assert list(choices) == [f"l{i}" for i in range(len(specs))]
    before, after = total_flops(choices)
    assert after + fixed <= fraction * (before + fixed) * (1 + 1e-12)
    by_key = {(c.name, c.form): c for c in layers}
    lost = 0.0
    for c in choices.values():
        if c.factored:
            assert c.rank_after % multiple == 0 or c.rank_after == c.full_rank
            assert c.flops_after < c.flops_before
            lost += _loss(by_key[(c.name, c.form)].singular_values.tolist(), c.rank_after)
    assert lost == pytest.approx(best, abs=1e-12)


def test_flops_budget_prefers_cutting_where_little_energy_is_lost():
    # 240 FLOPs per unit of rank: full rank (960) is lossless and a little cheaper than dense.
    flat = _layer([1.0] * 4, 1000, 240, "flat")  # every cut costs energy
    steep = _layer([10.0, 0.1, 0.1, 0.1], 1000, 240, "steep")  # rank 1 is almost free
    choices = choose_ranks([flat, steep], "flops:0.6")  # 1200 FLOPs of 2000
    assert choices["steep"].rank_after == 1 and choices["steep"].factored
    assert choices["flat"].rank_after == 4 and choices["flat"].energy_kept == 1.0
    assert total_flops(choices) == (2000, 1200)
    # With less room the flat layer has to give: one unit of its rank loses 25%.
    choices = choose_ranks([flat, steep], "flops:0.48")
    assert choices["flat"].rank_after == 3 and choices["steep"].rank_after == 1
    assert "flops:0.48" in choices["flat"].reason


def test_flops_budget_of_one_loses_nothing():
    exact_low_rank = _layer([5.0, 1.0, 0.0, 0.0], 1000, 100, "a")
    choices = choose_ranks([exact_low_rank, _layer(S, 1000, 300, "b")], "flops:1")
    assert choices["a"].factored and choices["a"].rank_after == 2  # lossless and cheaper
    assert not choices["b"].factored


def test_unreachable_flops_budget_is_bad_input():
    never_pays = _layer(S, 1000, 1000)
    with pytest.raises(BadInputError, match=r"out of reach.*flops:1 or more"):
        choose_ranks([never_pays], "flops:0.5")
    with pytest.raises(BadInputError, match="flops:0.55 or more"):
        choose_ranks([_layer(S, 1000, 100)], "flops:0.5", fixed_flops=1000)


# ---------------------------------------------------------------------------------------
# Global error bound


def _energy_error(choices):
    """A synthetic measure that grows as energy is dropped, like an output error."""
    return sum(1.0 - c.energy_kept for c in choices.values())


@SETTINGS
@given(
    spectra=st.lists(spectrum, min_size=1, max_size=4),
    bound=st.floats(1e-4, 0.5),
    multiple=st.sampled_from([1, 2]),
)
def test_error_bound_takes_the_largest_cut_within_the_bound(spectra, bound, multiple):
    layers = [_layer(s, 10_000, 100, f"l{i}") for i, s in enumerate(spectra)]
    calls = []

    def measure(choices):
        calls.append(dict(choices))
        return _energy_error(choices)

    choices = choose_ranks(layers, RankRule("error", bound), multiple=multiple, measure=measure)
    assert _energy_error(choices) <= bound
    assert all(c.reason.startswith(f"error:{bound:g}") for c in choices.values())
    # Brute force over every shared energy level (and just below each, against round-off):
    # the deepest cut within the bound is the largest error within it, the measure being
    # monotone.
    levels = {1.0}
    for s in spectra:
        total = sum(x * x for x in s)
        levels |= {sum(x * x for x in s[:r]) / total for r in range(1, len(s) + 1)}
    levels |= {max(1e-9, e - 1e-9) for e in levels}
    best = max(
        err
        for e in levels
        if (err := _energy_error(choose_ranks(layers, RankRule("energy", e), multiple=multiple))) <= bound
    )
    assert _energy_error(choices) == pytest.approx(best, abs=1e-12)
    distinct = {tuple(c.rank_after for c in call.values()) for call in calls}
    assert len(calls) == len(distinct)  # never measures the same configuration twice
    assert len(calls) <= 2 + math.ceil(math.log2(len(levels) + 1))


def test_error_bound_out_of_reach_is_bad_input():
    with pytest.raises(BadInputError, match="out of reach"):
        choose_ranks([_layer(S)], "error:1e-3", measure=lambda choices: 1.0)
    with pytest.raises(ValueError, match="measure"):
        choose_ranks([_layer(S)], "error:1e-3")


def test_error_bound_with_a_real_threshold():
    steep = _layer([10.0, 0.1, 0.1, 0.1], 1000, 100, "steep")
    flat = _layer([1.0] * 4, 1000, 100, "flat")
    choices = choose_ranks([steep, flat], "error:1e-3", measure=_energy_error)
    assert choices["steep"].rank_after == 1 and choices["flat"].rank_after == 4
    choices = choose_ranks([steep, flat], "error:0.3", measure=_energy_error)
    # A shared level of 0.75 cuts flat to 3 (loses 0.25) and steep to 1.
    assert choices["steep"].rank_after == 1 and choices["flat"].rank_after == 3


# ---------------------------------------------------------------------------------------
# Parsing and bad input


@pytest.mark.parametrize(
    "text, rule",
    [
        ("energy:0.99", RankRule("energy", 0.99)),
        (" Nuclear : 0.9 ", RankRule("nuclear", 0.9)),
        ("threshold:1e-3", RankRule("threshold", 1e-3)),
        ("rank:16", RankRule("rank", 16)),
        ("flops:0.5", RankRule("flops", 0.5)),
        ("error:1e-2", RankRule("error", 1e-2)),
        ("error:3", RankRule("error", 3.0)),
        ("energy:1", RankRule("energy", 1.0)),
    ],
)
def test_parse_rank_rule(text, rule):
    parsed = parse_rank_rule(text)
    assert parsed == rule
    assert parse_rank_rule(parsed.text) == parsed
    assert parsed.is_global == (rule.kind in ("flops", "error"))


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "cannot parse"),
        ("energy", "cannot parse"),
        ("energy:", "not a number"),
        ("energy:abc", "not a number"),
        ("energy:0", "(0, 1]"),
        ("energy:1.5", "(0, 1]"),
        ("nuclear:-0.1", "(0, 1]"),
        ("threshold:0", "(0, 1]"),
        ("flops:0", "(0, 1]"),
        ("flops:2", "(0, 1]"),
        ("energy:nan", "finite"),
        ("threshold:inf", "finite"),
        ("rank:0", ">= 1"),
        ("rank:-3", ">= 1"),
        ("rank:2.5", ">= 1"),
        ("rank:many", ">= 1"),
        ("error:0", "> 0"),
        ("error:-1", "> 0"),
        ("svd:0.5", "unknown"),
    ],
)
def test_bad_rules_are_one_line_of_bad_input(text, says):
    with pytest.raises(BadInputError) as info:
        parse_rank_rule(text)
    message = str(info.value)
    assert says in message and "\n" not in message
    assert info.value.exit_code == 2


def test_bad_multiple_is_bad_input():
    for bad in (0, -8, 2.5):
        with pytest.raises(BadInputError, match="rank-multiple"):
            choose_ranks([_layer(S)], "rank:2", multiple=bad)
