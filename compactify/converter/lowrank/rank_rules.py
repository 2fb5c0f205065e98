"""Rank rules: how many singular values each layer keeps, and whether factoring pays.

``--rank RULE`` takes one of

- ``energy:F``    keep the fraction ``F`` of the sum of ``s**2`` (per layer)
- ``nuclear:F``   keep the fraction ``F`` of the sum of ``s`` (the nuclear norm, per layer)
- ``threshold:T`` keep the singular values ``>= T`` times the layer's largest one
- ``rank:N``      keep ``N`` (at most the layer's own rank)
- ``flops:F``     global: reach ``F`` of the dense FLOPs while losing the least energy
- ``error:E``     global: the largest cut whose measured output error stays ``<= E``

Pure functions over spectra and FLOP counts: the planner supplies both (see
:func:`lowrank.candidate`) and, for ``error:``, a callable that measures a choice.

A layer is factored only when the factored form costs fewer FLOPs than the dense one; the
break-even rank of an ``n x m*k*k`` channel reshaping is ``n*m*k*k / (n + m*k*k)``. A layer
that would not pay stays dense and untruncated, which also keeps it exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from compactify.converter.lowrank.rule_syntax import RankRule, parse_rank_rule
from compactify.errors import BadInputError

# Singular values this far below the largest are float64 round-off (a product of float32
# weights composed in float64), not rank.
RANK_RTOL = 1e-10
# Frontier size above which the global FLOPs search thins its candidate set (then it is
# exact to within budget / _FRONTIER_CAP FLOPs per layer instead of exactly optimal).
_FRONTIER_CAP = 4096


@dataclass(frozen=True)
class LayerCandidate:
    """One layer in one factored form. The same ``name`` may appear once per form; the
    choice then takes the cheaper one. ``singular_values`` is ``[p]`` or ``[groups, p]``
    (grouped layers factor per group, all groups at the same rank); factored at rank ``r``
    the layer costs ``r * flops_per_rank``."""

    name: str
    singular_values: torch.Tensor
    dense_flops: int
    flops_per_rank: int
    form: str = "channel"


@dataclass(frozen=True)
class RankChoice:
    """The decision for one layer, as the report shows it."""

    name: str
    form: str  # "dense" (not factored), "channel" or "spatial"
    rank_before: int  # numerical rank (per group)
    full_rank: int  # the most the reshaping could have
    rank_after: int  # rank kept; rank_before when the layer stays dense
    energy_kept: float  # fraction of sum(s**2) kept; 1.0 when dense
    flops_before: int
    flops_after: int
    reason: str

    @property
    def factored(self) -> bool:
        return self.form != "dense"


# ---------------------------------------------------------------------------------------
# Per-candidate arithmetic


@dataclass(frozen=True)
class _Spec:
    cand: LayerCandidate
    s: np.ndarray  # [groups, p], descending
    rank_before: int
    tail2: np.ndarray  # [p+1]: sum of s**2 beyond rank r, all groups
    tail1: np.ndarray  # [p+1]: sum of s beyond rank r
    total2: float
    total1: float

    @property
    def p(self) -> int:
        return self.s.shape[1]

    @property
    def smax(self) -> float:
        return float(self.s.max()) if self.s.size else 0.0

    def kept(self, r: int) -> float:
        return 1.0 if self.total2 == 0 else 1.0 - float(self.tail2[r]) / self.total2

    def loss(self, r: int) -> float:
        # Tails below the round-off floor count as nothing lost, so that a lossless cheaper
        # factoring beats staying dense.
        if self.total2 == 0 or self.tail2[r] <= 1e-20 * self.total2:
            return 0.0
        return float(self.tail2[r]) / self.total2

    def cost(self, r: int) -> int:
        return r * self.cand.flops_per_rank

    def pays(self, r: int) -> bool:
        return self.cost(r) < self.cand.dense_flops

    def break_even(self) -> int:
        per = self.cand.flops_per_rank
        return min(self.p, max(0, math.ceil(self.cand.dense_flops / per) - 1)) if per > 0 else self.p


def _spec(c: LayerCandidate) -> _Spec:
    s = torch.as_tensor(c.singular_values, dtype=torch.float64).detach().cpu().numpy()
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2:
        raise ValueError(f"{c.name}: singular values must be [p] or [groups, p], got shape {s.shape}")
    s = -np.sort(-np.abs(s), axis=1)
    if c.flops_per_rank <= 0 or c.dense_flops <= 0:
        raise ValueError(f"{c.name}: FLOP counts must be positive")
    sq = (s**2).sum(0)
    tail2 = np.concatenate([np.cumsum(sq[::-1])[::-1], [0.0]])
    tail1 = np.concatenate([np.cumsum(s.sum(0)[::-1])[::-1], [0.0]])
    smax = s.max() if s.size else 0.0
    rank_before = int((s > RANK_RTOL * smax).sum(1).max()) if smax > 0 else 0
    return _Spec(c, s, rank_before, tail2, tail1, float(tail2[0]), float(tail1[0]))


def _rule_rank(sp: _Spec, rule: RankRule) -> int:
    """The rank ``rule`` asks of one layer, before rounding; at least 1, at most its rank."""
    top = max(1, sp.rank_before)
    if sp.total2 == 0:
        return 1
    if rule.kind == "energy":
        allowed = (1 - rule.value) * sp.total2 + 1e-20 * sp.total2
        r = int(np.argmax(sp.tail2 <= allowed))
    elif rule.kind == "nuclear":
        allowed = (1 - rule.value) * sp.total1 + 1e-10 * sp.total1
        r = int(np.argmax(sp.tail1 <= allowed))
    elif rule.kind == "threshold":
        r = int((sp.s >= rule.value * sp.smax).sum(1).max())
    elif rule.kind == "rank":
        r = int(rule.value)
    else:
        raise ValueError(f"{rule.kind} is not a per-layer rule")
    return min(max(1, r), top)


def _round(sp: _Spec, r: int, multiple: int) -> int:
    return min(sp.p, -(-r // multiple) * multiple)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _factored(sp: _Spec, r: int, why: str) -> RankChoice:
    c = sp.cand
    return RankChoice(
        name=c.name,
        form=c.form,
        rank_before=sp.rank_before,
        full_rank=sp.p,
        rank_after=r,
        energy_kept=sp.kept(r),
        flops_before=c.dense_flops,
        flops_after=sp.cost(r),
        reason=f"{why}; {c.form} form at rank {r} costs {_pct(sp.cost(r) / c.dense_flops)} of the dense FLOPs",
    )


def _dense(sp: _Spec, why: str) -> RankChoice:
    c = sp.cand
    return RankChoice(
        name=c.name,
        form="dense",
        rank_before=sp.rank_before,
        full_rank=sp.p,
        rank_after=sp.rank_before,
        energy_kept=1.0,
        flops_before=c.dense_flops,
        flops_after=c.dense_flops,
        reason=why,
    )


def _wanted(sp: _Spec, rule: RankRule, r: int, rounded: int, multiple: int) -> str:
    text = f"{rule.text} keeps rank {r} of {sp.rank_before}"
    if rounded != r:
        text += f", rounded up to {rounded} (a multiple of {multiple})"
    return text + f" ({_pct(sp.kept(rounded))} of the energy)"


def _pick(forms: list[_Spec], rule: RankRule, multiple: int) -> tuple[_Spec, int] | None:
    """The cheapest form that pays at the rank the rule asks, with that rank; None if none."""
    best = None
    for sp in forms:
        if sp.total2 == 0:
            continue
        r = _round(sp, _rule_rank(sp, rule), multiple)
        if sp.pays(r) and (best is None or sp.cost(r) < best[0].cost(best[1])):
            best = (sp, r)
    return best


def _explain(forms: list[_Spec], rule: RankRule, multiple: int, pick: tuple[_Spec, int] | None) -> RankChoice:
    if pick is not None:
        sp, rounded = pick
        return _factored(sp, rounded, _wanted(sp, rule, _rule_rank(sp, rule), rounded, multiple))
    refusals = []
    for sp in forms:
        if sp.total2 == 0:
            refusals.append("all its weights are zero (remove it as a zero unit instead)")
            continue
        r = _rule_rank(sp, rule)
        rounded = _round(sp, r, multiple)
        refusals.append(
            f"{_wanted(sp, rule, r, rounded, multiple)}, but the {sp.cand.form} form would cost "
            f"{_pct(sp.cost(rounded) / sp.cand.dense_flops)} of the dense FLOPs "
            f"(break-even rank {sp.break_even()})"
        )
    return _dense(forms[0], "; ".join(refusals) + "; stays dense")


def _choose_local(specs: list[list[_Spec]], rule: RankRule, multiple: int) -> dict[str, RankChoice]:
    return {forms[0].cand.name: _explain(forms, rule, multiple, _pick(forms, rule, multiple)) for forms in specs}


# ---------------------------------------------------------------------------------------
# Global: FLOPs budget


def _choose_flops(
    specs: list[list[_Spec]], rule: RankRule, multiple: int, fixed_flops: int
) -> dict[str, RankChoice]:
    """Least total energy lost (sum over layers of the fraction of sum(s**2) dropped) with
    the total FLOPs at most ``rule.value`` of the dense total. A multiple-choice knapsack,
    solved by a Pareto frontier over (FLOPs, energy lost), layer by layer: exact while the
    frontier stays under ``_FRONTIER_CAP`` points, then thinned to one point per cost bin."""
    dense_total = sum(forms[0].cand.dense_flops for forms in specs) + fixed_flops
    budget = rule.value * dense_total - fixed_flops
    options = []  # per layer: (spec or None for dense, rank, cost, loss)
    for forms in specs:
        opts = [(None, 0, forms[0].cand.dense_flops, 0.0)]
        for sp in forms:
            if sp.total2 == 0:
                continue
            ranks = sorted({_round(sp, k, multiple) for k in range(1, sp.p + 1)})
            opts += [(sp, r, sp.cost(r), sp.loss(r)) for r in ranks if sp.pays(r)]
        # Only options that no cheaper option matches or beats on energy can be optimal.
        opts.sort(key=lambda o: (o[2], o[3]))
        useful, best = [], math.inf
        for o in opts:
            if o[3] < best:
                useful.append(o)
                best = o[3]
        options.append(useful)
    least = [min(o[2] for o in opts) for opts in options]
    reachable = (sum(least) + fixed_flops) / dense_total if dense_total else 1.0
    if sum(least) > budget * (1 + 1e-12):
        raise BadInputError(
            f"--rank {rule.text} is out of reach: factoring every layer at its smallest rank still "
            f"keeps {_pct(reachable)} of the dense FLOPs; ask for flops:{math.ceil(reachable * 1000 - 1e-9) / 1000:g} or more"
        )
    rest = np.concatenate([np.cumsum(least[::-1])[::-1], [0]]).astype(float)
    cost, loss = np.zeros(1), np.zeros(1)
    links = []
    limit = budget * (1 + 1e-12)
    for i, opts in enumerate(options):
        oc = np.array([o[2] for o in opts], dtype=float)
        ol = np.array([o[3] for o in opts])
        c = (cost[:, None] + oc[None, :]).ravel()
        l = (loss[:, None] + ol[None, :]).ravel()
        parent = np.repeat(np.arange(cost.size), oc.size)
        pick = np.tile(np.arange(oc.size), cost.size)
        ok = c + rest[i + 1] <= limit
        c, l, parent, pick = c[ok], l[ok], parent[ok], pick[ok]
        order = np.lexsort((l, c))
        c, l, parent, pick = c[order], l[order], parent[order], pick[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(l)[:-1]])
        front = l < best_before  # strictly better than every cheaper point
        c, l, parent, pick = c[front], l[front], parent[front], pick[front]
        if c.size > _FRONTIER_CAP:
            # Keep the best point in each of _FRONTIER_CAP cost bins (the last, being Pareto).
            bins = np.minimum((c / max(limit, 1.0) * _FRONTIER_CAP).astype(np.int64), _FRONTIER_CAP - 1)
            last = np.r_[bins[1:] != bins[:-1], True]
            c, l, parent, pick = c[last], l[last], parent[last], pick[last]
        links.append((parent, pick))
        cost, loss = c, l
    j = int(np.argmin(loss))  # ties: the first, i.e. the cheapest
    total_cost = cost[j]
    chosen = []
    for parent, pick in reversed(links):
        chosen.append(int(pick[j]))
        j = int(parent[j])
    chosen.reverse()
    share = (total_cost + fixed_flops) / dense_total if dense_total else 1.0
    goal = f"{rule.text}: the whole model at {_pct(share)} of its dense FLOPs with the least energy lost"
    out = {}
    for forms, opts, k in zip(specs, options, chosen):
        sp, r, _, _ = opts[k]
        if sp is None:
            out[forms[0].cand.name] = _dense(forms[0], f"{goal}; this layer stays dense")
        else:
            out[sp.cand.name] = _factored(sp, r, f"{goal}; rank {r} of {sp.rank_before} ({_pct(sp.kept(r))} of the energy)")
    return out


# ---------------------------------------------------------------------------------------
# Global: measured error bound


def _choose_error(
    specs: list[list[_Spec]],
    rule: RankRule,
    multiple: int,
    measure: Callable[[dict[str, RankChoice]], float],
) -> dict[str, RankChoice]:
    """One energy fraction shared by all layers, as low as the measured error allows.

    The configurations the energy rule can produce are listed from the least cut (energy 1)
    to the most; assuming the error grows along that list, bisection finds the last one
    within the bound with ``log2`` of their number calls to ``measure``.
    """
    levels = {1.0}
    for forms in specs:
        for sp in forms:
            if sp.total2 > 0:
                # Just below each kept fraction, so that round-off in 1 - tail/total cannot
                # push the energy rule one rank past the level it was derived from.
                levels.update(sp.kept(r) - 1e-12 for r in range(1, sp.p) if sp.kept(r) > 1e-12)
    grid = np.array(sorted(levels, reverse=True))
    # The energy rule at every level at once: per layer, the form picked (-1: dense) and rank.
    keys = []
    for forms in specs:
        ranks, costs = zip(*(_energy_ranks(sp, grid, multiple) for sp in forms))
        costs = np.stack(costs)
        best = np.argmin(costs, axis=0)  # ties: the first form, as in _pick
        paying = np.isfinite(costs.min(axis=0))
        keys.append(np.where(paying, best, -1))
        keys.append(np.where(paying, np.stack(ranks)[best, np.arange(grid.size)], 0))
    keys = np.stack(keys, axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(keys[1:] != keys[:-1], axis=1)])
    configs = [(float(grid[i]), keys[i]) for i in starts]

    def choices(i: int) -> dict[str, RankChoice]:
        e, key = configs[i]
        level = RankRule("energy", min(1.0, e))
        out = {}
        for j, forms in enumerate(specs):
            form, rank = int(key[2 * j]), int(key[2 * j + 1])
            out[forms[0].cand.name] = _explain(forms, level, multiple, None if form < 0 else (forms[form], rank))
        return out

    errors: dict[int, float] = {}

    def err(i: int) -> float:
        if i not in errors:
            errors[i] = float(measure(choices(i)))
        return errors[i]

    if not err(0) <= rule.value:
        raise BadInputError(
            f"--rank {rule.text} is out of reach: even without truncation the measured error is "
            f"{err(0):.3g}; ask for a larger bound"
        )
    lo, hi = 0, len(configs)  # err(lo) within the bound; hi is past the end or over it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if err(mid) <= rule.value:
            lo = mid
        else:
            hi = mid
    why = f"{rule.text}: shared energy level {configs[lo][0]:.6g}, measured output error {err(lo):.3g} <= {rule.value:g}"
    return {name: replace(c, reason=f"{why}; {c.reason}") for name, c in choices(lo).items()}


def _energy_ranks(sp: _Spec, grid: np.ndarray, multiple: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_rule_rank` for ``energy:e`` at every ``e`` in ``grid``, rounded, with the cost
    (``inf`` where factoring does not pay)."""
    allowed = (1 - grid) * sp.total2 + 1e-20 * sp.total2
    r = np.clip(np.searchsorted(-sp.tail2, -allowed, side="left"), 1, max(1, sp.rank_before))
    rounded = np.minimum(sp.p, -(-r // multiple) * multiple)
    cost = rounded * float(sp.cand.flops_per_rank)
    if sp.total2 == 0:
        cost[:] = np.inf
    cost[cost >= sp.cand.dense_flops] = np.inf
    return rounded, cost


# ---------------------------------------------------------------------------------------


def choose_ranks(
    layers: Sequence[LayerCandidate],
    rule: RankRule | str,
    *,
    multiple: int = 1,
    measure: Callable[[dict[str, RankChoice]], float] | None = None,
    fixed_flops: int = 0,
) -> dict[str, RankChoice]:
    """One :class:`RankChoice` per layer name, in the order the names first appear.

    ``multiple`` rounds every factored rank up to a multiple (capped at the full rank), for
    hardware that wants channel counts in multiples of 8. ``fixed_flops`` is the cost of the
    rest of the model, which counts in the ``flops:`` budget but cannot shrink. ``measure``
    (required for ``error:``) takes a full choice dict, applies it, and returns the output
    error on calibration inputs; it must grow as the kept energy falls.
    """
    if isinstance(rule, str):
        rule = parse_rank_rule(rule)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise BadInputError(f"--rank-multiple must be a whole number >= 1, got {multiple!r}")
    grouped: dict[str, list[_Spec]] = {}
    for cand in layers:
        forms = grouped.setdefault(cand.name, [])
        if any(sp.cand.form == cand.form for sp in forms):
            raise ValueError(f"{cand.name}: the {cand.form} form is listed twice")
        if forms and forms[0].cand.dense_flops != cand.dense_flops:
            raise ValueError(f"{cand.name}: its forms disagree on the dense FLOPs")
        forms.append(_spec(cand))
    specs = list(grouped.values())
    if rule.kind == "flops":
        return _choose_flops(specs, rule, multiple, int(fixed_flops))
    if rule.kind == "error":
        if measure is None:
            raise ValueError("the error: rule needs a measure callable")
        return _choose_error(specs, rule, multiple, measure)
    return _choose_local(specs, rule, multiple)


def total_flops(choices: Mapping[str, RankChoice]) -> tuple[int, int]:
    """``(before, after)`` summed over the layers."""
    return sum(c.flops_before for c in choices.values()), sum(c.flops_after for c in choices.values())
