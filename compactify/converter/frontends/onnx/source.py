"""An ONNX model as a source of the conversion pipeline: the ONNX front-end (nodes to affine steps),
the ONNX back-end (the chosen operators written into a copy of the graph) and the check on ONNX
Runtime against the source in float64. ``converter.pipeline`` runs the same passes on it as on a
PyTorch source. Where the source has a symbolic spatial size, only what is exact at every size is
merged, so the compact model takes every size the source takes."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from compactify.converter.backends.onnx_rewrite import rewrite_onnx
from compactify.converter.engine.exactness import NetworkCheck, RegionCheck
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.plan import Decision
from compactify.targets.onnx_io import check_onnx
from compactify.converter.frontends.onnx.check import (
    check_feeds,
    check_network,
    float64_outputs,
    low_precision_outputs,
    model_error,
)
from compactify.converter.frontends.onnx.graph import OnnxGraph, affine_graph
from compactify.converter.frontends.onnx.prepare import Prepared, prepare
from compactify.converter.frontends.onnx.read import default_opset, read_onnx
from compactify.converter.frontends.onnx.shapes import graph_inputs
from compactify.converter.lowrank.rank_plan import rank_plan, truncation_section
from compactify.errors import CompactifyError
from compactify.targets.base import OnnxGraph as OnnxArtifact


@dataclass
class Captured:
    prepared: Prepared
    graph: OnnxGraph | None = None  # the back-end's view, made with the engine's


class OnnxSource:
    """An ONNX model, the input shape to plan at (needed where the file's is symbolic) and the
    outputs to keep."""

    format = "onnx"

    def __init__(self, model: onnx.ModelProto, input_shape: Sequence[int] | None = None,
                 outputs: str | Sequence[str] | None = None, check: bool = True):
        self.model = model
        self.input_shape = tuple(input_shape) if input_shape else None
        self.outputs = outputs
        self.check = check
        self.origin: dict = {}  # report.json's "source": the file, its sha256 and producer
        self.every_size = False
        self.prepared: Prepared | None = None
        self.feeds: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, path, settings) -> "OnnxSource":
        """An ONNX file (``settings``: ``pipeline.settings.LoadSettings``; its input shape and outputs)."""
        path = Path(path)
        model = read_onnx(path)
        producer = " ".join(p for p in (model.producer_name, model.producer_version) if p) or "unknown producer"
        source = cls(model, settings.input_shape, settings.outputs)
        source.origin = {
            "checkpoint": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "format": "onnx", "arch": f"ONNX graph ({producer})", "arch_kwargs": {},
            "meta": {"producer": producer, "ir_version": model.ir_version, "opset": default_opset(model),
                     "metadata_props": {p.key: p.value for p in model.metadata_props}},
            "trust_pickle": False, "outputs": settings.outputs,
        }
        return source

    @property
    def meta(self) -> dict:
        return self.origin.get("meta") or {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """One input's shape, batch first: --input-shape, else the file's own (a symbolic batch as 1);
        empty where the file leaves a size open (the targets that need one then say so)."""
        if self.input_shape:
            return self.input_shape
        specs = graph_inputs(self.model)
        dims = specs[0].dims if specs else ()
        if not dims or not all(isinstance(d, int) for d in dims[1:]):
            return ()
        return (dims[0] if isinstance(dims[0], int) else 1, *dims[1:])

    def rank_request(self, settings):
        """--rank's rule and multiple (the options that measure are refused for ONNX sources)."""
        return settings

    def describe(self, result) -> dict:
        """The report's description of this source and of the compact model's inputs and outputs."""
        p = self.prepared
        first = next(iter(p.shapes.values()))
        return {
            "source": self.origin,
            "opset": default_opset(self.model),
            "input_shape": list(first),
            "input_shapes": {k: list(v) for k, v in p.shapes.items()},
            "input_names": list(p.shapes),
            "output_names": [o.name for o in result.compact.graph.output],
            "dynamic_hw": self.every_size,
            "accepts_input_size": "any the source accepts" if self.every_size or len(first) < 3 else
            "x".join(str(d) for d in first[2:]) + " (the source's own static size)",
            "transposes_cancelled": p.transposes_cancelled,
            "low_precision_outputs": low_precision_outputs(result.compact),
            "error_definition": "compact model on ONNX Runtime (float32) vs the source ONNX graph evaluated in float64 "
                                "with onnx.reference, on seeded N(0,1) inputs; max_rel_error = max|compact - ref| / "
                                "max|ref| per output",
        }

    # ------------------------------------------------------------------ front-end
    def capture(self) -> Captured:
        self.prepared = prepare(self.model, self.input_shape, self.outputs)
        self.every_size = self.prepared.every_size
        self.feeds = check_feeds(self.prepared.specs, self.prepared.shapes)
        return Captured(self.prepared)

    def regions(self, captured: Captured) -> AffineGraph:
        p = captured.prepared
        graph, captured.graph = affine_graph(p.model, p.symbolic, p.concrete)
        return graph

    def prepare_plan(self, decisions: list[Decision]) -> None:
        """The ONNX back-end writes the composed operators themselves: nothing to attach."""

    def truncate(self, captured: Captured, graph: AffineGraph, decisions: list[Decision],
                 rank) -> tuple[list[Decision], dict]:
        """A new plan with the conv/linear layers factored at the ranks ``rank`` chooses (rule and
        multiple), and its report section: the truncated model against the untruncated one in float64."""
        ranked = rank_plan(decisions, graph.example_shapes, rank.rule, rank.multiple)
        untruncated = self.rewrite(captured, graph, decisions)
        truncated = self.rewrite(captured, graph, ranked.decisions)
        error = model_error(truncated, float64_outputs(untruncated, self.feeds), self.feeds)
        return ranked.decisions, truncation_section(ranked, rank.rule, rank.multiple, error, len(self.feeds))

    def check_regions(self, captured: Captured, decisions: list[Decision], truncated: bool) -> list[RegionCheck]:
        """Regions are proved by the network check here: the composed operators are written as ONNX
        nodes, which run only inside a model."""
        return []

    # ------------------------------------------------------------------ back-end
    def rewrite(self, captured: Captured, graph: AffineGraph, decisions: list[Decision]) -> onnx.ModelProto:
        compact, _ = rewrite_onnx(captured.graph, graph, decisions)
        try:
            check_onnx(compact, "compact")
        except CompactifyError as exc:
            raise CompactifyError(f"{exc} (a bug: please report it with the source model)") from exc
        return compact

    def counts(self, captured: Captured, graph: AffineGraph, decisions: list[Decision], compact: onnx.ModelProto,
               truncated: bool) -> tuple[int, int, int, int]:
        merged = [d for d in decisions if d.kind in ("dense", "removed", "factored")]
        flops_before = int(sum(graph.flops.values()))
        return (param_count(self.model), param_count(compact), flops_before,
                flops_before - sum(d.flops_before - d.flops_after for d in merged))

    def check_network(self, compact: onnx.ModelProto) -> NetworkCheck | None:
        return check_network(self.prepared.source, compact, self.feeds) if self.check else None

    def check_section(self, regions: list[RegionCheck], network: NetworkCheck | None) -> dict | None:
        return None

    # ------------------------------------------------------------------ what the targets build from
    def compact_model(self, compact: onnx.ModelProto, report: dict, metadata: dict[str, str],
                      onnx_export=None) -> "OnnxCompactModel":
        return OnnxCompactModel(self, compact, report, metadata)


class OnnxCompactModel:
    """The ``targets.CompactModel`` of an ONNX conversion: the rewritten graph, and no torch program."""

    def __init__(self, source: OnnxSource, compact: onnx.ModelProto, report: dict, metadata: dict[str, str]):
        self._source = source
        self._compact = compact
        self.input_names = list(report["input_names"])
        self.output_names = list(report["output_names"])
        self.input_shape = tuple(report["input_shape"])
        self.source_meta = dict(report["source"].get("meta") or {})
        self.metadata = metadata
        self.regions = list(report.get("regions") or [])
        self.check_feeds = [dict(source.feeds)]

    def program(self):
        return None

    def onnx(self) -> OnnxArtifact:
        return OnnxArtifact(self._compact, {"exporter": "compactify.onnx_rewrite", "opset": self._opset(),
                                            "nodes_before": len(self._compact.graph.node)})

    def _opset(self) -> int:
        return next((o.version for o in self._compact.opset_import if o.domain in ("", "ai.onnx")), 0)

    def reference(self, feeds) -> list[np.ndarray]:
        return float64_outputs(self._source.prepared.source, dict(feeds))


def param_count(model: onnx.ModelProto) -> int:
    """Elements of the stored float weights (initializers and Constant nodes)."""
    total = 0
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    for t in model.graph.initializer:
        if t.data_type in float_types:
            total += math.prod(t.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in float_types:
                    total += math.prod(attr.t.dims)
    return total
