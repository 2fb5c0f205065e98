"""``--rank`` on a plan, from the operators alone: which conv/linear layers of the plan to factor
at which rank, returned as a new plan. No graph format and no model runs: the spectra come from
the merged operators, the costs from their shapes, and the rules that need nothing measured
(``energy``, ``nuclear``, ``threshold``, ``rank``, ``flops``) decide. The ONNX path uses it; the
PyTorch path's ``truncate`` adds pruning, measured rules and latency on top of the same pieces.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from compactify.converter.engine.algebra import AffineConv
from compactify.converter.engine.cost import operator_flops, operator_params
from compactify.converter.engine.plan import Decision
from compactify.converter.lowrank import factor as L
from compactify.converter.lowrank.rank_rules import (
    RankChoice,
    RankRule,
    choose_ranks,
    parse_rank_rule,
)
from compactify.converter.lowrank.truncation_report import decision_row
from compactify.errors import BadInputError

MEASURED_RULES = ("error",)


@dataclass
class RankPlan:
    decisions: list[Decision]  # a new list: factored layers have kind "factored" and their factors
    rows: list[dict]  # one per layer considered, as report.json's truncation.layers
    params_untruncated: int
    params_truncated: int
    flops_untruncated: int  # of the layers considered, at the example input
    flops_truncated: int


def layer_operator(d: Decision) -> AffineConv | None:
    """The conv/linear operator a decision computes, when it is one layer of the final plan: a
    merged region, or a single conv or linear layer left as it is."""
    comp = d.composition
    if comp is None or not isinstance(comp.value, AffineConv):
        return None
    kinds = {d.region.steps[n].kind for n in d.region.nodes if n in d.region.steps}
    if not kinds & {"conv", "linear"} or comp.value.dilates_input:
        return None  # a folded BatchNorm or pad on its own, or a transposed conv: no factored form here
    if d.kind == "dense":
        return d.operator
    if d.kind == "keep" and len(d.region.nodes) == 1 and comp.exact and not comp.value.pads_nonzero:
        return comp.value
    return None


def rank_plan(decisions: list[Decision], example_shapes: dict, rule: RankRule | str, multiple: int = 1) -> RankPlan:
    rule = parse_rank_rule(rule) if isinstance(rule, str) else rule
    if rule.kind in MEASURED_RULES:
        raise BadInputError(f"--rank {rule.text} measures the output error of each cut, which is done for PyTorch "
                            "sources only; use energy:, nuclear:, threshold:, rank: or flops: here")
    layers = []
    for i, d in enumerate(decisions):
        op = layer_operator(d)
        shape = example_shapes.get(d.region.entry)
        if op is None or shape is None:
            continue
        spatial = tuple(shape[2:]) if op.ndim else tuple(shape[1:-1])
        layers.append((i, f"{d.region.name}#{i}", op, spatial, tuple(shape)))
    candidates = [L.candidate(key, op, form, spatial) for _, key, op, spatial, _ in layers for form in L.forms_for(op)]
    batch = max([s[0] for *_, s in layers] or [1])
    per_sample = {c.name: c.dense_flops for c in candidates}
    fixed = max(0, round(sum(d.flops_after for d in decisions) / batch) - sum(per_sample.values()))
    choices: dict[str, RankChoice] = choose_ranks(candidates, rule, multiple=multiple, fixed_flops=fixed) \
        if candidates else {}
    new = list(decisions)
    rows = []
    for i, key, op, spatial, shape in layers:
        d = decisions[i]
        choice = choices.get(key)
        before_params, before_flops = d.params_after, d.flops_after
        if choice is not None and choice.factored:
            first, second = L.factor(op, choice.rank_after, choice.form)
            flops = operator_flops(first, shape) + operator_flops(second, _after(first, shape))
            exact = d.exact and choice.rank_after >= choice.rank_before
            new[i] = dataclasses.replace(
                d, kind="factored", exact=exact, factors=(first, second), module=None,
                reason=f"{d.reason}; factored: {choice.reason}",
                params_after=operator_params(first) + operator_params(second), flops_after=flops)
        rows.append(decision_row(new[i], choice, before_params, before_flops))
    return RankPlan(new, rows, sum(r["params_before"] for r in rows), sum(r["params_after"] for r in rows),
                    sum(r["flops_before"] for r in rows), sum(r["flops_after"] for r in rows))


def _after(op: AffineConv, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape of ``op`` on an input of ``shape``."""
    if op.ndim == 0:
        return (*shape[:-1], op.out_channels)
    return (shape[0], op.out_channels, *op.output_size(shape[2:]))


def truncation_section(ranked: RankPlan, rule: str, multiple: int, error: tuple[float, float], inputs: int) -> dict:
    """The --rank report section of a plan-only truncation, in the PyTorch path's schema: per layer
    the ranks and costs, and ``error`` = (max_abs, max_rel_error) of the truncated model against the
    untruncated one in float64 on ``inputs`` seeded inputs."""
    ratio = ranked.flops_truncated / ranked.flops_untruncated if ranked.flops_untruncated else 1.0
    return {
        "rule": parse_rank_rule(rule).text,
        "multiple": multiple,
        "cost": "flops",
        "layers": ranked.rows,
        "pruning": [],
        "pruning_limits": "all-zero units are not removed from ONNX sources (pruning runs on PyTorch sources)",
        "params_untruncated": ranked.params_untruncated,
        "params_pruned": ranked.params_untruncated,
        "params_truncated": ranked.params_truncated,
        "flops_untruncated": ranked.flops_untruncated,
        "flops_pruned": ranked.flops_untruncated,
        "flops_truncated": ranked.flops_truncated,
        "flops_ratio": ratio,
        "flops_ratio_of_pruned": ratio,
        "output_error": {
            "max_abs": error[0], "max_rel_error": error[1], "inputs": f"{inputs} seeded N(0,1) input(s)",
            "dtype": "float32 (ONNX Runtime) vs float64 (onnx.reference)",
            "definition": "compact.onnx with --rank vs the contracted model without it, on the check inputs; "
                          "max_rel_error = max|truncated - untruncated| / max|untruncated| per output",
        },
    }
