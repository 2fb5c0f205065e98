"""The one sequence of passes every source runs through:

    capture -> regions -> plan (-> rank) -> check regions -> rewrite -> check network
        (-> withdraw: where both checks fail, plan again and keep the failed regions' layers)

A source (``frontends.fx.source.TorchSource``, ``frontends.onnx.source.OnnxSource``) brings its
front-end (capture, regions) and back-end (rewrite) and its float64 checks; the plan, the
exactness rule and the result are the engine's and the same for all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from compactify.converter.engine.exactness import (
    NetworkCheck,
    RegionCheck,
    check_warnings,
    withdraw_failed,
    within,
)
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.fold import fold_forward
from compactify.converter.engine.plan import Decision, PlanSummary, plan_graph
from compactify.converter.frontends.fx.source import TorchSource
from compactify.converter.frontends.onnx.source import OnnxSource
from compactify.converter.pipeline.passes import run_pass
from compactify.converter.pipeline.settings import RankSettings
from compactify.converter.stages import Stages, silent


class Source(Protocol):
    """A source format: its front-end, its back-end and the checks that run on its graphs. A new format
    implements this (and a classmethod ``load(path, settings)`` for ``pipeline.convert``)."""

    format: str  # "pytorch", "onnx"
    every_size: bool  # merges must hold at every input size (known once captured)
    meta: dict  # what the source says of itself (architecture, what it was trained on)
    sample_shape: tuple[int, ...]  # one input's shape, batch first, for the targets

    def rank_request(self, settings: Any) -> Any: ...  # what its truncate takes, from --rank's settings
    def describe(self, result: "Contraction") -> dict: ...  # report.json's words for the source
    def compact_model(self, compact: Any, report: dict, metadata: dict, onnx_export: Any) -> Any: ...

    def capture(self) -> Any: ...
    def regions(self, captured: Any) -> AffineGraph: ...
    def prepare_plan(self, decisions: list[Decision]) -> None: ...
    def truncate(self, captured: Any, graph: AffineGraph, decisions: list[Decision],
                 rank: Any) -> tuple[list[Decision], dict]: ...
    def check_regions(self, captured: Any, decisions: list[Decision], truncated: bool) -> list[RegionCheck]: ...
    def rewrite(self, captured: Any, graph: AffineGraph, decisions: list[Decision]) -> Any: ...
    def counts(self, captured: Any, graph: AffineGraph, decisions: list[Decision], compact: Any,
               truncated: bool) -> tuple[int, int, int, int]: ...
    def check_network(self, compact: Any) -> NetworkCheck | None: ...
    def check_section(self, regions: list[RegionCheck], network: NetworkCheck | None) -> dict | None: ...


@dataclass
class Contraction(PlanSummary):
    """A compact model (an fx.GraphModule or an onnx.ModelProto, as the source) and what it took."""

    source: Any  # the Source it came from
    compact: Any
    decisions: list[Decision]
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
    truncation: dict | None = None  # the --rank report section
    check: dict | None = None  # what was checked and how it came out

    def drop_operators(self) -> None:
        """Let go of every region's float64 operators, once the compact model is built and the report
        written from them: nothing after reads them, and together they are the compact model's size in
        float64 (94 MB at 50M expanded parameters), memory the artifacts' export and checks can reuse."""
        for d in self.decisions:
            d.composition = d.operator = d.factors = d.lead = None


@dataclass
class Planned:
    """A source's captured graph, the engine's view of it, and the decision for each linear region."""

    captured: Any
    graph: AffineGraph
    decisions: list[Decision]

    def __iter__(self):
        return iter((self.captured, self.graph, self.decisions))


def plan_source(source: Source, allow_approximate: bool = False, stages: Stages | None = None) -> Planned:
    """The first passes: capture, regions, plan."""
    stages = stages or silent()
    captured = run_pass(stages, "capture", "capture", source.capture)
    graph = run_pass(stages, "regions", "regions", source.regions, captured)
    decisions = run_pass(stages, "plan", "plan", plan_graph, graph, allow_approximate, source.every_size)
    decisions = run_pass(stages, "plan", "fold", fold_forward, graph, decisions, allow_approximate, source.every_size)
    run_pass(stages, "plan", "attach layers", source.prepare_plan, decisions)
    return Planned(captured, graph, decisions)


def contract_source(source: Source, allow_approximate: bool = False, rank: Any = None,
                    stages: Stages | None = None) -> Contraction:
    """Contract every linear region of ``source`` that merges exactly (and pays); with ``rank`` (what
    the source's ``truncate`` takes) also factor (and prune) the plan's conv/linear layers.

    A merge that claimed to be exact, failed its own float64 check, and whose network then fails the
    exactness rule too, is withdrawn: the source is planned again and that region keeps its layers.
    (The network must confirm it: a region run on its own can misjudge a merge that is exact in place.)"""
    stages = stages or silent()
    captured, graph, decisions = plan_source(source, allow_approximate, stages)
    truncation = None
    if rank is not None:
        decisions, truncation = run_pass(stages, "plan", "rank", source.truncate, captured, graph, decisions, rank)
    # Before the rewrite, which erases the regions' layers from a captured fx graph.
    regions = run_pass(stages, "check", "check regions", source.check_regions, captured, decisions, rank is not None)
    compact, counts, network = _rewrite_and_check(source, captured, graph, decisions, rank is not None, stages)
    withdrawn: list[str] = []
    if rank is None and network is not None and not within(network.max_rel_error, network.source_rel):
        _, told = withdraw_failed(decisions, regions)
        if told:  # the rewrite edited the captured graph in place: the withdrawal starts from a new capture
            captured, graph, decisions = plan_source(source, allow_approximate, stages)
            decisions, withdrawn = run_pass(stages, "check", "withdraw", withdraw_failed, decisions, regions)
            compact, counts, network = _rewrite_and_check(source, captured, graph, decisions, False, stages)
    result = Contraction(source, compact, decisions, *counts,
                         warnings=[w for d in decisions for w in d.warnings] + withdrawn, truncation=truncation)
    if network is not None:
        result.max_abs_error, result.max_rel_error = network.max_abs, network.max_rel_error
        result.source_rel_error = network.source_rel
        result.check = source.check_section(regions, network)
        if rank is None:  # --rank changes the network on purpose: its error is the truncation's report
            result.warnings += check_warnings(network)
    return result


def _rewrite_and_check(source: Source, captured: Any, graph: AffineGraph, decisions: list[Decision],
                       truncated: bool, stages: Stages) -> tuple[Any, tuple[int, int, int, int], NetworkCheck | None]:
    compact = run_pass(stages, "rewrite", "rewrite", source.rewrite, captured, graph, decisions)
    counts = run_pass(stages, "rewrite", "count", source.counts, captured, graph, decisions, compact, truncated)
    network = run_pass(stages, "check", "check network", source.check_network, compact)
    return compact, counts, network


def contract(model, input_shape: tuple[int, ...], allow_approximate: bool = False, rank=None,
             dynamic_hw: bool = False, stages: Stages | None = None) -> Contraction:
    """Contract an ``nn.Module`` at ``input_shape``; with ``rank`` (a ``lowrank.rank_request.RankRequest``)
    also prune and truncate.

    The graph is captured at the traced spatial size and merges are proved there, so the compact
    module refuses other sizes (and says which merges hold only at this size: padding after a
    strided layer, a crop measured from the start of an axis). With ``dynamic_hw`` the graph is
    captured with symbolic spatial sizes, only what is exact at every size is merged, and the
    compact module takes any size the source takes."""
    return contract_source(TorchSource(model, tuple(input_shape), dynamic_hw), allow_approximate, rank, stages)


def contract_onnx(model, *, allow_approximate: bool = False, input_shape=None, outputs=None,
                  rank: str | None = None, rank_multiple: int = 1, check: bool = True,
                  stages: Stages | None = None) -> Contraction:
    """Contract an ``onnx.ModelProto``; with ``rank`` (a --rank rule) also factor the plan's
    conv/linear layers at the ranks it chooses. ``check=False`` skips the float64 check."""
    request = RankSettings(rank, rank_multiple) if rank is not None else None
    return contract_source(OnnxSource(model, input_shape, outputs, check), allow_approximate, request, stages)


def plan_contraction(model, input_shape: tuple[int, ...], allow_approximate: bool = False,
                     dynamic_hw: bool = False) -> Planned:
    """The plan of an ``nn.Module`` without the rewrite (``captured.gm`` is the captured graph)."""
    return plan_source(TorchSource(model, tuple(input_shape), dynamic_hw), allow_approximate)
