"""Rank truncation and group-lasso pruning of a contraction plan (``convert --rank RULE``).

Runs between the plan and the rewrite. The layers it works on are every conv or linear
operator of the final plan: each merged region (its composed operator) and each single conv
or linear layer left as it is. For those:

1. Pruning: units whose weights all went to zero (group lasso) output a constant, the bias.
   They are removed, and so are the next layer's matching input channels, where the path
   between the two is one this module can follow: elementwise activations, max pooling,
   adaptive average pooling or a spatial mean, and a ``flatten(1)`` from a conv to a linear
   layer, each with no other user, into a region that is the only reader of that tensor (a
   residual sum inside the next merged region is fine; a concat or a second consumer is
   not). The constant a removed unit would have sent (its bias through the activations) is
   folded into the next layer's bias, which is exact only when that layer pads nothing;
   into a padded layer only units whose constant is zero are removed. Units are found with
   a tolerance of zero: pruning is exact.
2. Ranks: :func:`rank_rules.choose_ranks` over the spectra of the (pruned) operators, in
   every factored form that exists, with the rest of the model as the fixed part of a
   FLOPs budget (``flops:F`` counts from the pruned plan). ``error:E`` measures each
   candidate cut on calibration inputs: the plan with the truncated operators
   (:func:`lowrank.truncate`) against the plan before ``--rank``, in float64.
3. ``cost="latency"``: each layer the rule factors is timed dense against factored with
   torch on the CPU, interleaved, and stays dense unless the factored form is faster.
4. The chosen factored layers become two layers (:func:`lowrank.factor`) in the decision's
   module, with kind ``"factored"``; the report rows give per layer the ranks, the energy
   kept, parameters and FLOPs, the form and the reason, and for the whole model the output
   error against the plan without ``--rank`` and, when an ``evaluate`` callable is given
   (models trained on the built-in digits), the accuracy before and after.

The models compared are built by rewriting deep copies of the captured graph with the same
:func:`rewrite.rewrite` that produces the final one.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Callable

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from compactify.converter.backends.fx_rewrite import rewrite
from compactify.converter.engine.algebra import AffineConv
from compactify.converter.engine.plan import Decision
from compactify.converter.engine.regions import Region
from compactify.converter.frontends.fx.check import example_input
from compactify.converter.frontends.fx.profile import GraphProfile, count_flops
from compactify.converter.lowrank import factor as L
from compactify.converter.lowrank.layers import Layer, conv_layers
from compactify.converter.lowrank.pruning import PRUNING_LIMITS, prune_dead_units
from compactify.converter.lowrank.rank_request import (
    RankRequest,
    random_calibration,
)
from compactify.converter.lowrank.rank_rules import (
    RankChoice,
    RankRule,
    choose_ranks,
    parse_rank_rule,
)
from compactify.converter.lowrank.rule_syntax import COSTS
from compactify.converter.lowrank.truncation_report import prune_text, report_row
from compactify.errors import BadInputError
from compactify.measure.latency import Candidate, compare_latency
from compactify.measure.metrics import outputs_relative_error

# Time per layer and form when --cost latency compares them (interleaved, after a warm-up).
LATENCY_SECONDS = 0.3
LATENCY_WARMUP = 5


# ---------------------------------------------------------------------------------------
# Building the plan's model with some layers replaced


class _Builder:
    """Rewrites deep copies of the captured graph: the plan's model with chosen modules."""

    def __init__(self, gm: fx.GraphModule, decisions: list[Decision], example: torch.Tensor):
        self.gm, self.decisions, self.example = gm, decisions, example

    def build(self, modules: dict[int, nn.Module | None], dtype: torch.dtype = torch.float32) -> fx.GraphModule:
        with warnings.catch_warnings():  # copying exported graphs trips torch-internal FutureWarnings
            warnings.simplefilter("ignore", FutureWarning)
            gm = copy.deepcopy(self.gm)
        nodes = {n.name: n for n in gm.graph.nodes}
        shadow = []
        for i, d in enumerate(self.decisions):
            r = d.region
            region = Region(nodes[r.entry.name], nodes[r.exit.name], [nodes[n.name] for n in r.nodes], {}, graph=r.graph)
            module = modules[i] if i in modules else d.module
            if d.kind == "removed":
                kind = "removed"
            elif module is not None:
                kind = "dense"  # whatever it computes, it replaces the region as one module call
                module = copy.deepcopy(module)  # the copies must not share (or re-type) modules
            else:
                kind = "keep"
            shadow.append(dataclasses.replace(d, region=region, kind=kind, module=module))
        compact, _ = rewrite(gm, shadow)
        return compact.to(dtype).eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(x)
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _module(op: AffineConv, dtype: torch.dtype = torch.float32) -> nn.Module:
    return L.as_module(op, dtype=dtype).eval()


def _factored_module(op: AffineConv, rank: int, form: str, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    first, second = L.factor(op, rank, form)
    return nn.Sequential(_module(first, dtype), _module(second, dtype)).eval()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------
# Latency


def _faster_factored(dense: nn.Module, factored: nn.Module, shape: tuple[int, ...]) -> tuple[bool, float, float]:
    x = example_input(shape, seed=0)

    def run(module):
        def fn():
            with torch.no_grad():
                module(x)
        return fn

    result = compare_latency([Candidate("dense", run(dense)), Candidate("factored", run(factored))],
                             warmup=LATENCY_WARMUP, seconds=LATENCY_SECONDS, progress=False)
    return (result.ratios_paired["factored"] < 1.0, result.by_label("dense").p50_ms,
            result.by_label("factored").p50_ms)


# ---------------------------------------------------------------------------------------


def apply_rank_rule(
    gm: fx.GraphModule,
    decisions: list[Decision],
    profile: GraphProfile,
    rule: RankRule | str,
    *,
    multiple: int = 1,
    cost: str = "flops",
    calibration: torch.Tensor | None = None,
    calibration_source: str | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    evaluate_on: str | None = None,
    batch: int | None = None,
    prune: bool = True,
) -> dict:
    """Prune and truncate the conv/linear layers of the plan; edits ``decisions`` in place
    (kind ``"factored"`` with the two-layer module, or a pruned single layer as ``"dense"``)
    and returns the report section (JSON-ready)."""
    if isinstance(rule, str):
        rule = parse_rank_rule(rule)
    if cost not in COSTS:
        raise BadInputError(f"--cost must be flops or latency, got {cost!r}")
    example = _example(gm, profile)
    if calibration is None:
        calibration = random_calibration(example.shape)
        calibration_source = f"{len(calibration)} seeded N(0,1) inputs"
    layers = conv_layers(decisions, profile)
    pruning = prune_dead_units(layers, profile) if prune else []
    builder = _Builder(gm, decisions, example)

    def modules(choose: Callable[[Layer], nn.Module | None]) -> dict[int, nn.Module | None]:
        return {layer.index: choose(layer) for layer in layers}

    # The contracted plan as it was before --rank, in float32 (FLOPs, accuracy) and in float64
    # (the reference of the output error), and after pruning alone.
    untruncated = builder.build(modules(lambda la: la.decision.module))
    pruned = builder.build(modules(lambda la: _module(la.op) if la.changed else la.decision.module))
    dtype, ref_out = _reference(builder, modules, calibration)

    def truncated_error(overrides: dict[int, nn.Module]) -> tuple[float, float]:
        full = modules(lambda la: _module(la.op, dtype))
        full.update(overrides)
        return outputs_relative_error(_outputs(builder.build(full, dtype), calibration.to(dtype)), ref_out)

    batch_total = example.shape[0]
    total_flops = _count(untruncated, example)
    pruned_flops = _count(pruned, example)
    candidates = []
    for layer in layers:
        for form in L.forms_for(layer.op):
            candidates.append(L.candidate(layer.key, layer.op, form, layer.in_spatial))
    dense_per_sample = {c.name: c.dense_flops for c in candidates}
    # The rest of the model. flops:F is then a fraction of the pruned plan: removing units that
    # are exactly zero is free, and the budget is about what truncation trades for accuracy.
    fixed = max(0, round(pruned_flops / batch_total) - sum(dense_per_sample.values()))
    by_key = {layer.key: layer for layer in layers}

    def measure(choices: dict[str, RankChoice]) -> float:
        overrides = {by_key[k].index: _module(L.truncate(by_key[k].op, c.rank_after, c.form), dtype)
                     for k, c in choices.items() if c.factored}
        return truncated_error(overrides)[1]

    choices = choose_ranks(candidates, rule, multiple=multiple, measure=measure, fixed_flops=fixed) if candidates else {}
    timings: dict[str, tuple[float, float]] = {}
    if cost == "latency":
        shape_batch = batch or batch_total
        where = f"batch {shape_batch}, {torch.get_num_threads()} torch threads"
        for key, c in list(choices.items()):
            if not c.factored:
                continue
            layer = by_key[key]
            shape = (shape_batch, *layer.input_shape[1:])
            faster, dense_ms, factored_ms = _faster_factored(
                _module(layer.op), _factored_module(layer.op, c.rank_after, c.form), shape)
            timings[key] = (dense_ms, factored_ms)
            if not faster:
                choices[key] = dataclasses.replace(
                    c, form="dense", rank_after=c.rank_before, energy_kept=1.0, flops_after=c.flops_before,
                    reason=f"{c.reason}; but measured on the CPU the factored form is not faster "
                           f"({factored_ms:.3f} ms vs {dense_ms:.3f} ms dense, {where}): stays dense")
            else:
                choices[key] = dataclasses.replace(
                    c, reason=f"{c.reason}; measured on the CPU: {factored_ms:.3f} ms vs {dense_ms:.3f} ms dense, {where}")

    rows = []
    final64: dict[int, nn.Module] = {}
    for layer in layers:
        d = layer.decision
        choice = choices.get(layer.key)
        before_params = d.params_after
        before_flops = d.flops_after
        pruned_text = prune_text(layer)
        if choice is not None and choice.factored:
            module = _factored_module(layer.op, choice.rank_after, choice.form)
            final64[layer.index] = _factored_module(layer.op, choice.rank_after, choice.form, dtype)
            d.kind = "factored"
            d.exact = d.exact and choice.rank_after >= choice.rank_before
            d.reason = f"{d.reason}; {pruned_text}factored: {choice.reason}"
        elif layer.changed:
            module = _module(layer.op)
            d.kind = "dense"
            d.reason = f"{d.reason}; {pruned_text.rstrip('; ')}"
        else:
            module = None
        if module is not None:
            d.module = module
            d.params_after = _params(module)
            d.flops_after = L.module_flops(module, layer.input_shape)
        rows.append(report_row(layer, choice, before_params, before_flops, timings.get(layer.key)))

    truncated = builder.build(modules(lambda la: la.decision.module))
    max_abs, max_rel = truncated_error(final64)
    flops_after = _count(truncated, example)
    params_before, params_after = _params(untruncated), _params(truncated)
    section = {
        "rule": rule.text,
        "multiple": multiple,
        "cost": cost,
        "layers": rows,
        "pruning": pruning,
        "pruning_limits": PRUNING_LIMITS,
        "params_untruncated": params_before,
        "params_pruned": _params(pruned),
        "params_truncated": params_after,
        "flops_untruncated": total_flops,
        "flops_pruned": pruned_flops,
        "flops_truncated": flops_after,
        "flops_ratio": flops_after / total_flops if total_flops else 1.0,
        "flops_ratio_of_pruned": flops_after / pruned_flops if pruned_flops else 1.0,
        "output_error": {
            "max_abs": max_abs,
            "max_rel_error": max_rel,
            "inputs": calibration_source or f"{len(calibration)} calibration inputs",
            "dtype": str(dtype).replace("torch.", ""),
            "definition": "the plan with --rank (pruned and truncated) vs the contracted plan without it, on the "
            "same inputs; max_rel_error = max|truncated - untruncated| / max|untruncated| per output",
        },
    }
    if evaluate is not None:
        section["accuracy_before"] = _accuracy(evaluate, untruncated)
        section["accuracy_after"] = _accuracy(evaluate, truncated)
        section["accuracy_on"] = evaluate_on
    return section


def _example(gm: fx.GraphModule, profile: GraphProfile) -> torch.Tensor:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1 or placeholders[0] not in profile.shapes:
        raise BadInputError("rank truncation needs a model with a single tensor input")
    return torch.zeros(profile.shapes[placeholders[0]])


def _count(model: nn.Module, example: torch.Tensor) -> int:
    return count_flops(model, example)


def _reference(builder: _Builder, modules, calibration):
    """The dtype the plan runs in (float64, or float32 if the graph refuses it), and the
    outputs of the plan before --rank on the calibration inputs."""
    for dtype in (torch.float64, torch.float32):
        model = builder.build(modules(lambda la: _module(la.decision.composition.value, dtype)), dtype)
        try:
            return dtype, _outputs(model, calibration.to(dtype))
        except RuntimeError:
            if dtype == torch.float32:
                raise
    raise AssertionError("unreachable")


def _accuracy(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float | None:
    try:
        return float(evaluate(model))
    except (RuntimeError, IndexError, ValueError):  # not a classifier of this data set's shape
        return None


def truncate_plan(gm: fx.GraphModule, decisions: list[Decision], profile: GraphProfile, request: RankRequest) -> dict:
    """:func:`apply_rank_rule` with the arguments of a :class:`RankRequest`."""
    return apply_rank_rule(
        gm, decisions, profile, request.rule, multiple=request.multiple, cost=request.cost,
        calibration=request.calibration, calibration_source=request.calibration_source,
        evaluate=request.evaluate, evaluate_on=request.evaluate_on, batch=request.batch, prune=request.prune,
    )
