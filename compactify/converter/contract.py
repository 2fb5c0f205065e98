"""The contraction pipeline on a PyTorch model: capture -> regions -> plan -> compact module, and
the check of the compact module against the source in float64."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from compactify.converter.backends.fx_layers import attach_modules
from compactify.converter.backends.fx_rewrite import rewrite
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.plan import Decision, plan_graph
from compactify.converter.frontends.fx.capture import capture_graph, check_runs
from compactify.converter.frontends.fx.graph import affine_graph
from compactify.converter.frontends.fx.profile import GraphProfile, count_flops
from compactify.tensors import flatten_outputs

ERROR_SEED = 0
ERROR_BATCHES = 1
# A conversion is called exact when its float32 error is within EXACT_REL of the output scale,
# or within SOURCE_ERROR_FACTOR times the source's own float32 error (deep nets whose float32
# run is already further off than EXACT_REL, ill-conditioned batch statistics).
EXACT_REL = 1e-6
SOURCE_ERROR_FACTOR = 4.0


@dataclass
class Contraction:
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

    @property
    def regions(self) -> list[dict]:
        return [d.as_dict() for d in self.decisions]

    @property
    def size_notes(self) -> list[str]:
        """Why the compact module holds only at the traced input size (empty: at every size)."""
        return [n for d in self.decisions for n in d.size_notes]

    def summary(self) -> dict:
        merged = sum(d.kind == "dense" for d in self.decisions)
        return {
            "regions": len(self.decisions),
            "merged": merged,
            "factored": sum(d.kind == "factored" for d in self.decisions),
            "params_before": self.params_before,
            "params_after": self.params_after,
            "flops_before": self.flops_before,
            "flops_after": self.flops_after,
        }


def example_input(shape: tuple[int, ...], seed: int = ERROR_SEED) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@dataclass
class Plan:
    """The captured graph of a model and the decision for each of its linear regions."""

    gm: fx.GraphModule
    example: torch.Tensor
    profile: GraphProfile
    decisions: list[Decision]
    graph: AffineGraph


def plan_contraction(model: nn.Module, input_shape: tuple[int, ...], allow_approximate: bool = False,
                     dynamic_hw: bool = False) -> Plan:
    model = model.eval()
    # Batch 2 at least, so that export keeps the batch dimension dynamic instead of specialising on 1.
    example = example_input((max(2, input_shape[0]), *input_shape[1:]))
    gm = capture_graph(model, example, dynamic_spatial=dynamic_hw)
    graph, profile = affine_graph(gm, example)
    decisions = plan_graph(graph, allow_approximate, dynamic_hw)
    attach_modules(decisions)
    return Plan(gm, example, profile, decisions, graph)


def contract(model: nn.Module, input_shape: tuple[int, ...], allow_approximate: bool = False,
             rank=None, dynamic_hw: bool = False) -> Contraction:
    """Contract every linear region of ``model`` that can be merged exactly (and pays); with
    ``rank`` (a ``truncate.RankRequest``) also prune and truncate the plan's conv/linear layers.

    The graph is captured at the traced spatial size and merges are proved there, so the
    compact module refuses other sizes (and says which merges hold only at this size: padding
    after a strided layer, a crop measured from the start of an axis). With ``dynamic_hw``
    the graph is captured with symbolic spatial sizes, only what is exact at every size is
    merged, and the compact module takes any size the source takes."""
    model = model.eval()
    check_runs(model, example_input(tuple(input_shape)))
    plan = plan_contraction(model, input_shape, allow_approximate, dynamic_hw)
    gm, example, profile, decisions = plan.gm, plan.example, plan.profile, plan.decisions
    params_before = sum(p.numel() for p in model.parameters())
    flops_before = sum(profile.flops.values())
    truncation = None
    if rank is not None:
        from compactify.converter.lowrank.truncate import truncate_plan

        truncation = truncate_plan(gm, decisions, profile, rank)
    compact, _ = rewrite(gm, decisions, None if dynamic_hw else tuple(example.shape[2:]))
    compact.eval()
    result = Contraction(
        compact=compact,
        decisions=decisions,
        example=example,
        params_before=params_before,
        params_after=sum(p.numel() for p in compact.parameters()),
        flops_before=int(flops_before),
        flops_after=count_flops(compact, example),
        warnings=[w for d in decisions for w in d.warnings],
        truncation=truncation,
    )
    result.max_abs_error, result.max_rel_error, result.source_rel_error = measure_errors(model, compact, input_shape)
    if rank is None and result.max_rel_error > max(EXACT_REL, SOURCE_ERROR_FACTOR * result.source_rel_error):
        result.warnings.append(
            f"the compact model's error ({result.max_rel_error:.2e} of the output scale) is more than "
            f"{SOURCE_ERROR_FACTOR:g}x the source's own float32 error ({result.source_rel_error:.2e}) and above "
            f"{EXACT_REL:g}: check report.json's regions for approximate merges")
    return result


def reference_float64(model: nn.Module) -> nn.Module | None:
    """A float64 copy of the model, or None when it cannot run in float64."""
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
    relative error of ``model``'s own float32 run on the same inputs, from one float64 run."""
    from compactify.measure.metrics import compare

    ref_model = reference_float64(model)
    max_abs, max_rel, source_rel = 0.0, 0.0, 0.0
    with torch.no_grad():
        for b in range(batches):
            x = example_input(tuple(input_shape), seed=ERROR_SEED + 1 + b)
            ref = flatten_outputs(ref_model(x.double()) if ref_model is not None else model(x))
            for candidate in (compact, model):
                got = flatten_outputs(candidate(x))
                for i, (g, r) in enumerate(zip(got, ref)):
                    c = compare(g.numpy(), r.numpy(), name=f"output{i}")
                    if candidate is compact:
                        max_abs, max_rel = max(max_abs, c.max_abs), max(max_rel, c.scale_rel)
                    else:
                        source_rel = max(source_rel, c.scale_rel)
    return max_abs, max_rel, source_rel
