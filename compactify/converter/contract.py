"""The contraction pipeline on a PyTorch model: capture -> regions -> plan -> compact module, and
the check of the compact module against the source in float64 (``converter.check``).

Each step runs once: the source is captured once (the eager run that names a shape the model
rejects happens only when the capture fails), the FLOPs after are added up from the capture's
profile and the plan's decisions instead of running the compact graph again, and the check runs
the regions and the network as ``converter.check`` says."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from compactify.converter.backends.fx_layers import attach_modules
from compactify.converter.backends.fx_rewrite import rewrite
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.plan import Decision, PlanSummary, plan_graph
from compactify.converter.frontends.fx.capture import capture_graph, check_runs
from compactify.converter.frontends.fx.graph import affine_graph
from compactify.converter.check import (EXACT_REL, SOURCE_ERROR_FACTOR, check_network, check_regions, check_section,
                                        example_input, float64_forward, within)
from compactify.converter.frontends.fx.profile import GraphProfile, compact_flops, count_flops
from compactify.converter.load.resources import MemoryBudgetError, check_graph_memory
from compactify.converter.stages import Stages, silent
from compactify.errors import BadInputError

__all__ = ["Contraction", "Plan", "contract", "plan_contraction", "example_input", "reference_float64",
           "measure_error", "measure_errors", "EXACT_REL", "SOURCE_ERROR_FACTOR"]

ERROR_BATCHES = 1


@dataclass
class Contraction(PlanSummary):
    """A compact module and what it took to get there."""

    compact: fx.GraphModule
    decisions: list[Decision]
    example: torch.Tensor
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    warnings: list[str] = field(default_factory=list)
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    # The source's own float32 run against its float64 run on the same inputs: what float32
    # rounding alone costs, against which the compact model's error is judged.
    source_rel_error: float | None = None
    truncation: dict | None = None  # the --rank report section (compactify.converter.lowrank.truncate)
    check: dict | None = None  # what was checked and how it came out (converter.check.check_section)


@dataclass
class Plan:
    """The captured graph of a model and the decision for each of its linear regions."""

    gm: fx.GraphModule
    example: torch.Tensor
    profile: GraphProfile
    decisions: list[Decision]
    graph: AffineGraph


def plan_contraction(model: nn.Module, input_shape: tuple[int, ...], allow_approximate: bool = False,
                     dynamic_hw: bool = False, stages: Stages | None = None) -> Plan:
    stages = stages or silent()
    model = model.eval()
    # Batch 2 at least, so that export keeps the batch dimension dynamic instead of specialising on 1.
    example = example_input((max(2, input_shape[0]), *input_shape[1:]))
    with stages("capture"):
        gm = capture_graph(model, example, dynamic_spatial=dynamic_hw)
        check_graph_memory(gm, input_shape)  # before anything runs on real data
    with stages("regions"):
        graph, profile = affine_graph(gm, example)
    with stages("plan"):
        decisions = plan_graph(graph, allow_approximate, dynamic_hw)
        attach_modules(decisions)
    return Plan(gm, example, profile, decisions, graph)


def contract(model: nn.Module, input_shape: tuple[int, ...], allow_approximate: bool = False,
             rank=None, dynamic_hw: bool = False, stages: Stages | None = None) -> Contraction:
    """Contract every linear region of ``model`` that can be merged exactly (and pays); with
    ``rank`` (a ``truncate.RankRequest``) also prune and truncate the plan's conv/linear layers.

    The graph is captured at the traced spatial size and merges are proved there, so the
    compact module refuses other sizes (and says which merges hold only at this size: padding
    after a strided layer, a crop measured from the start of an axis). With ``dynamic_hw``
    the graph is captured with symbolic spatial sizes, only what is exact at every size is
    merged, and the compact module takes any size the source takes. ``stages`` times (and, for
    a long conversion, announces) capture, regions, plan and check."""
    stages = stages or silent()
    model = model.eval()
    try:
        plan = plan_contraction(model, input_shape, allow_approximate, dynamic_hw, stages)
    except MemoryBudgetError:
        raise
    except BadInputError:
        check_runs(model, example_input(tuple(input_shape)))  # a shape the model rejects is reported as such
        raise
    gm, example, profile, decisions = plan.gm, plan.example, plan.profile, plan.decisions
    params_before = sum(p.numel() for p in model.parameters())
    flops_before = sum(profile.flops.values())
    truncation = None
    if rank is not None:
        from compactify.converter.lowrank.truncate import truncate_plan

        with stages("plan"):
            truncation = truncate_plan(gm, decisions, profile, rank)
    with stages("check"):  # before the rewrite, which erases the regions' layers from the graph
        regions = check_regions(gm, decisions, profile, truncated=rank is not None)
    with stages("rewrite"):
        compact, _ = rewrite(gm, decisions, None if dynamic_hw else tuple(example.shape[2:]))
        compact.eval()
        merged = {id(d.module): d.flops_after for d in decisions if d.module is not None}
        flops_after = compact_flops(compact, profile, merged) if rank is None else None
        if flops_after is None:  # --rank prunes units of the layers around a region: count them
            flops_after = count_flops(compact, example)
    result = Contraction(
        compact=compact,
        decisions=decisions,
        example=example,
        params_before=params_before,
        params_after=sum(p.numel() for p in compact.parameters()),
        flops_before=int(flops_before),
        flops_after=int(flops_after),
        warnings=[w for d in decisions for w in d.warnings],
        truncation=truncation,
    )
    with stages("check"):
        network = check_network(model, compact, input_shape)
    result.max_abs_error, result.max_rel_error = network.max_abs, network.max_rel
    result.source_rel_error = network.source_rel
    result.check = check_section(regions, network)
    if rank is None:
        result.warnings += _check_warnings(regions, network)
    return result


def _check_warnings(regions, network) -> list[str]:
    out = []
    for r in regions:
        if r.exact_claimed and not r.passed:
            out.append(f"region {r.name}'s merged layer is {r.max_rel:.2e} (of its output scale) off its own layers in "
                       f"float64, more than {SOURCE_ERROR_FACTOR:g}x their float32 error ({r.layers_float32_rel:.2e}) "
                       f"and above {EXACT_REL:g}")
    if not within(network.max_rel, network.source_rel):
        out.append(
            f"the compact model's error ({network.max_rel:.2e} of the output scale) is more than "
            f"{SOURCE_ERROR_FACTOR:g}x the source's own float32 error ({network.source_rel:.2e}) and above "
            f"{EXACT_REL:g}: check report.json's regions for approximate merges")
    elif network.float32_max_rel > 2 * max(EXACT_REL, SOURCE_ERROR_FACTOR * network.source_rel):
        out.append(f"the compact model differs from the source by {network.float32_max_rel:.2e} of the output scale "
                   f"in float32 on a batch of {network.batch}, more than their float32 rounding explains")
    return out


def reference_float64(model: nn.Module) -> nn.Module | None:
    """A float64 copy of the model, or None when it cannot run in float64 (tests and tools that want
    a float64 twin; the conversion's own check casts weights as it goes, ``converter.check``)."""
    try:
        return copy.deepcopy(model).double().eval()
    except Exception:  # e.g. a captured graph holding float32 constants
        return None


def measure_error(model: nn.Module, compact: nn.Module, input_shape, batches: int = ERROR_BATCHES):
    """Max-abs and normalised relative error of ``compact`` (float32) against ``model`` in float64."""
    max_abs, max_rel, _ = measure_errors(model, compact, input_shape, batches)
    return max_abs, max_rel


def measure_errors(model: nn.Module, compact: nn.Module, input_shape, batches: int = ERROR_BATCHES):
    """``(max_abs, max_rel)`` of ``compact`` against ``model`` in float64, and the normalised
    relative error of ``model``'s own float32 run on the same inputs (``batches`` seeded batches of
    ``input_shape``, the model's weights cast to float64 one module at a time)."""
    from compactify.converter.check import ERROR_SEED, scale_error
    from compactify.tensors import flatten_outputs

    max_abs, max_rel, source_rel = 0.0, 0.0, 0.0
    with torch.no_grad():
        for b in range(batches):
            x = example_input(tuple(input_shape), seed=ERROR_SEED + 1 + b)
            ref, _ = float64_forward(model, x)
            for candidate in (compact, model):
                for g, r in zip(flatten_outputs(candidate(x)), ref):
                    a, rel = scale_error(g, r)
                    if candidate is compact:
                        max_abs, max_rel = max(max_abs, a), max(max_rel, rel)
                    else:
                        source_rel = max(source_rel, rel)
    return max_abs, max_rel, source_rel
