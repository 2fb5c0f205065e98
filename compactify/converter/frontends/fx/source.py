"""A PyTorch model as a source of the conversion pipeline: the fx front-end (torch.export capture,
ATen ops to affine steps), the fx back-end (the chosen operators written into the graph) and the
float64 checks that run on fx graphs. ``converter.pipeline`` runs the same passes on it as on an
ONNX source."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn

from compactify.converter.backends.fx_layers import attach_modules
from compactify.converter.backends.fx_rewrite import rewrite
from compactify.converter.engine.exactness import NetworkCheck, RegionCheck
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.plan import Decision
from compactify.converter.frontends.fx.capture import (
    capture_graph,
    check_runs,
    select_outputs,
)
from compactify.converter.frontends.fx.check import (
    check_network,
    check_regions,
    check_section,
    example_input,
    float64_outputs,
)
from compactify.converter.frontends.fx.graph import affine_graph
from compactify.converter.frontends.fx.profile import (
    GraphProfile,
    compact_flops,
    count_flops,
)
from compactify.converter.load.checkpoint import digest_value, load_checkpoint
from compactify.converter.load.ingest import build_source
from compactify.converter.load.resources import MemoryBudgetError, check_graph_memory
from compactify.converter.lowrank.rank_request import RankRequest, rank_request
from compactify.converter.lowrank.truncate import truncate_plan
from compactify.errors import BadInputError
from compactify.tensors import flatten_outputs


@dataclass
class Captured:
    """The captured graph of a model, the example input it was traced at, and that run's profile."""

    gm: fx.GraphModule
    example: torch.Tensor
    profile: GraphProfile | None = None


class TorchSource:
    """An eval-mode ``nn.Module`` and the input shape it is converted at. With ``dynamic_hw`` the
    graph is captured with symbolic spatial sizes and only what is exact at every size is merged."""

    format = "pytorch"

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], dynamic_hw: bool = False,
                 max_memory: int | None = None, origin: dict | None = None):
        self.model = model.eval()
        self.origin = origin or {}  # report.json's "source": the file, its sha256, format and metadata
        self.input_shape = tuple(int(d) for d in input_shape)
        self.every_size = dynamic_hw
        self.max_memory = max_memory
        # Batch 2 at least, so that export keeps the batch dimension dynamic instead of specialising on 1.
        self.example = example_input((max(2, self.input_shape[0]), *self.input_shape[1:]))

    @classmethod
    def load(cls, path, settings, dynamic_hw: bool = False) -> "TorchSource":
        """The model a checkpoint stands for (``settings``: a ``pipeline.settings.LoadSettings``)."""
        ckpt = load_checkpoint(path, trust_pickle=settings.trust_pickle)
        # The activations are checked against the memory budget on the captured graph (free), unless
        # --outputs runs the model before the capture (then on the meta device, first).
        built = build_source(ckpt, settings.arch, settings.arch_kwargs, settings.input_shape,
                             run_memory_check=bool(settings.outputs), max_memory=settings.max_memory)
        if not built.input_shape:
            raise BadInputError("the input shape is unknown for this model: pass --input-shape N,C,H,W")
        model = select_outputs(built.model, settings.outputs, example_input(built.input_shape))
        meta = built.meta
        # The digest is read when the report is made: it is hashed meanwhile, on the other core.
        origin = {"checkpoint": str(Path(ckpt.path).resolve()), "sha256": ckpt.digest, "format": ckpt.format,
                  "arch": meta.get("arch"), "arch_kwargs": meta.get("arch_kwargs") or {}, "meta": meta,
                  "trust_pickle": settings.trust_pickle, "outputs": settings.outputs}
        return cls(model, tuple(built.input_shape), dynamic_hw, settings.max_memory, origin)

    @property
    def meta(self) -> dict:
        return self.origin.get("meta") or {}

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The input shape, batch first: what the targets calibrate and build at."""
        return self.input_shape

    def rank_request(self, settings) -> RankRequest | None:
        """What --rank's truncation runs on (``settings``: ``pipeline.settings.RankSettings``)."""
        return None if settings is None else rank_request(settings, self.input_shape, self.meta)

    def describe(self, result) -> dict:
        """The report's description of this source and of the compact model's inputs and outputs."""
        shape = self.input_shape
        return {
            "source": {**self.origin, "sha256": digest_value(self.origin.get("sha256"))},
            "input_shape": list(shape),
            "input_names": ["x"],
            "output_names": [f"output{i}" for i in range(output_count(result.compact, self.example))],
            "dynamic_hw": self.every_size,
            "accepts_input_size": "any" if self.every_size or len(shape) < 3 else
            "x".join(str(d) for d in shape[2:]) + " only (captured there; --dynamic-hw for every size)",
            "error_definition": "compact float32 vs source float64 on seeded N(0,1) inputs; "
                                "max_rel_error = max|compact - ref| / max|ref| per output",
        }

    # ------------------------------------------------------------------ front-end
    def capture(self) -> Captured:
        try:
            gm = capture_graph(self.model, self.example, dynamic_spatial=self.every_size)
            check_graph_memory(gm, self.input_shape, budget_bytes=self.max_memory)  # before anything runs on real data
        except MemoryBudgetError:
            raise
        except BadInputError:
            check_runs(self.model, example_input(self.input_shape))  # a shape the model rejects is reported as such
            raise
        return Captured(gm, self.example)

    def regions(self, captured: Captured) -> AffineGraph:
        graph, captured.profile = affine_graph(captured.gm, captured.example)
        return graph

    def prepare_plan(self, decisions: list[Decision]) -> None:
        attach_modules(decisions)  # the merged layers the fx back-end writes and the checks run

    def truncate(self, captured: Captured, graph: AffineGraph, decisions: list[Decision],
                 rank: RankRequest) -> tuple[list[Decision], dict]:
        """A new plan with the conv/linear layers pruned and factored as ``rank`` asks, and its report
        section; the plan it was given is left as it was."""
        ranked = [copy.copy(d) for d in decisions]
        return ranked, truncate_plan(captured.gm, ranked, captured.profile, rank)

    def check_regions(self, captured: Captured, decisions: list[Decision], truncated: bool) -> list[RegionCheck]:
        return check_regions(captured.gm, decisions, captured.profile, truncated=truncated)

    # ------------------------------------------------------------------ back-end
    def rewrite(self, captured: Captured, graph: AffineGraph, decisions: list[Decision]) -> fx.GraphModule:
        compact, _ = rewrite(captured.gm, decisions, None if self.every_size else tuple(captured.example.shape[2:]))
        return compact.eval()

    def counts(self, captured: Captured, graph: AffineGraph, decisions: list[Decision], compact: fx.GraphModule,
               truncated: bool) -> tuple[int, int, int, int]:
        """Parameters and FLOPs before and after. FLOPs after are added up from the profile and the
        plan, except after --rank, which prunes units of the layers around a region: then counted."""
        merged = {id(d.module): d.flops_after for d in decisions if d.module is not None}
        flops_after = None if truncated else compact_flops(compact, captured.profile, merged)
        if flops_after is None:
            flops_after = count_flops(compact, captured.example)
        return (sum(p.numel() for p in self.model.parameters()), sum(p.numel() for p in compact.parameters()),
                int(sum(captured.profile.flops.values())), int(flops_after))

    def check_network(self, compact: fx.GraphModule) -> NetworkCheck:
        return check_network(self.model, compact, self.input_shape)

    def check_section(self, regions: list[RegionCheck], network: NetworkCheck) -> dict:
        return check_section(regions, network)

    # ------------------------------------------------------------------ what the targets build from
    def compact_model(self, compact: fx.GraphModule, report: dict, metadata: dict[str, str],
                      onnx_export) -> "TorchCompactModel":
        """What the targets build from; ``onnx_export(module, example, input_names, output_names, metadata)``
        is the fx -> ONNX back-end, run only when a target asks for ONNX."""
        return TorchCompactModel(self, compact, report, metadata, onnx_export)


class TorchCompactModel:
    """The ``targets.CompactModel`` of a PyTorch conversion: the compact fx graph as a torch.export
    program and as ONNX (through ``onnx_export``, the fx -> ONNX back-end, called once)."""

    def __init__(self, source: TorchSource, compact: fx.GraphModule, report: dict, metadata: dict[str, str],
                 onnx_export):
        self._source = source
        self._compact = compact
        self._onnx_export = onnx_export
        self._onnx = None
        self.input_names = list(report["input_names"])
        self.output_names = list(report["output_names"])
        self.input_shape = tuple(report["input_shape"])
        self.source_meta = dict(report["source"].get("meta") or {})
        self.metadata = metadata
        self.regions = list(report.get("regions") or [])
        self.check_feeds = [{self.input_names[0]: source.example.numpy()}]

    def program(self) -> torch.export.ExportedProgram:
        example = self._source.example
        dims = range(example.dim()) if self._source.every_size else (0,)  # --dynamic-hw: any spatial size
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(self._compact, (example,), dynamic_shapes=(
                {d: torch.export.Dim.AUTO for d in dims if d != 1},), strict=False)

    def onnx(self):
        if self._onnx is None:
            self._onnx = self._onnx_export(self._compact, self._source.example, self.input_names, self.output_names,
                                           self.metadata)
        return self._onnx

    def reference(self, feeds) -> list[np.ndarray]:
        return float64_outputs(self._source.model, feeds, self.input_names[0])


def output_count(compact: fx.GraphModule, example: torch.Tensor) -> int:
    with torch.no_grad():
        return len(flatten_outputs(compact(example)))
