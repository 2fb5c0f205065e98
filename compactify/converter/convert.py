"""The contraction pipeline: model -> graph -> regions -> plan -> compact model, and its report."""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import fx, nn

from compactify import __version__
from compactify.converter.frontends.fx.capture import capture_graph, check_runs, select_outputs
from compactify.converter.load.checkpoint import PT2_META_FILE, load_checkpoint
from compactify.converter.backends.fx_layers import attach_modules
from compactify.converter.backends.fx_rewrite import rewrite
from compactify.converter.engine.graph import AffineGraph
from compactify.converter.engine.plan import Decision, plan_graph
from compactify.converter.frontends.fx.graph import affine_graph
from compactify.converter.frontends.fx.profile import GraphProfile, count_flops
from compactify.converter.load.ingest import Source, build_source
from compactify.errors import BadInputError
from compactify.outputs import atomic_dir, check_output_folder
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


# ---------------------------------------------------------------------------------------
# Files


@dataclass
class ConvertOptions:
    arch: str | None = None
    arch_kwargs: dict | None = None
    input_shape: tuple[int, ...] | None = None
    allow_approximate: bool = False
    dynamic_hw: bool = False  # merge only what is exact at every input size
    force: bool = False
    trust_pickle: bool = False
    outputs: str | None = None
    onnx: bool = True
    static: bool = False  # fixed batch in the ONNX model instead of a dynamic one
    simplify: bool = True
    fp16: bool = False
    trt: bool = False
    max_batch: int = 32  # TensorRT optimization profile: batch 1 .. max_batch
    timing_cache: str | None = None
    rank: str | None = None  # --rank RULE: prune and truncate (compactify.converter.lowrank.truncate)
    rank_multiple: int = 1
    cost: str = "flops"  # or "latency": keep a factored layer only if it measures faster
    calibration: str | None = None  # inputs for the truncation error: "random", "digits" (None: auto)
    int8: bool = False  # also write compact.int8.onnx (compactify.converter.export.int8)
    int8_calibration: str | None = None  # --calibration FILE.npz (None: digits, for checkpoints trained on them)
    int8_method: str = "minmax"  # --calibration-method: minmax, entropy or percentile
    int8_keep: tuple[str, ...] = ()  # --int8-keep: layers left in float
    int8_min_agreement: float | None = None  # --int8-min-agreement: fail below this top-1 agreement with fp32


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, options: ConvertOptions | None = None) -> dict:
    """Convert a checkpoint into ``out_dir`` (compact.pt2, report.json, report.md); returns the report."""
    options = options or ConvertOptions()
    out_dir = Path(out_dir)
    inputs = [checkpoint, options.timing_cache, options.int8_calibration]  # a folder holding one is never replaced
    check_output_folder(out_dir, options.force, inputs)
    if options.trt:  # before any work, so that nothing is half-written
        from compactify.runtimes.devices import require_tensorrt

        require_tensorrt("--trt")
        if not options.onnx:
            raise BadInputError("--trt builds the engine from the ONNX model; drop --no-onnx")
    if options.fp16 and not options.onnx:
        raise BadInputError("--fp16 writes compact.fp16.onnx; drop --no-onnx")
    from compactify.converter.export.int8 import check_options, int8_request

    check_options(options)
    # The folder is claimed (locked, a temporary sibling made) before the work: a second run into the
    # same target, or an unwritable parent, is refused at once, and any failure leaves nothing behind.
    with atomic_dir(out_dir, force=options.force, inputs=inputs) as tmp:
        ckpt = load_checkpoint(checkpoint, trust_pickle=options.trust_pickle)
        source = build_source(ckpt, options.arch, options.arch_kwargs, options.input_shape)
        if not source.input_shape:
            raise BadInputError("the input shape is unknown for this model: pass --input-shape N,C,H,W")
        model = select_outputs(source.model, options.outputs, example_input(source.input_shape))
        int8 = int8_request(options, source, model)  # the calibration inputs are read and checked before the work
        from compactify.converter.lowrank.truncate import rank_request

        result = contract(model, tuple(source.input_shape), options.allow_approximate, rank_request(options, source),
                          dynamic_hw=options.dynamic_hw)
        for w in result.warnings:
            warnings.warn(w, stacklevel=2)
        report = build_report(ckpt, source, options, result)
        save_program(result.compact, result.example, tmp / "compact.pt2", report)
        report["artifacts"] = {"pt2": "compact.pt2"}
        if options.onnx:
            report.update(export_artifacts(result, report, options, tmp, int8=int8))
        write_report(report, tmp)
    return report


def export_artifacts(result: Contraction, report: dict, options: ConvertOptions, folder: Path, int8=None) -> dict:
    """compact.onnx (+ fp16 copy, + int8 QDQ model with ``int8``, an ``int8.Int8Request``, + TensorRT
    engine); returns the report entries they add."""
    from compactify.converter.export.onnx_export import export_onnx, to_fp16

    metadata = {
        "compactify.version": __version__,
        "compactify.source_sha256": report["source"]["sha256"],
        "compactify.source_arch": str(report["source"]["arch"]),
        "compactify.contraction": json.dumps(result.summary()),
    }
    exported = export_onnx(
        result.compact, result.example, folder / "compact.onnx", input_names=report["input_names"],
        output_names=report["output_names"], dynamic_batch=not options.static, simplify=options.simplify,
        metadata=metadata,
    )
    artifacts = dict(report["artifacts"], onnx="compact.onnx")
    added: dict = {"onnx": {
        "exporter": exported.exporter, "fallback_reason": exported.fallback_reason, "opset": exported.opset,
        "dynamic_batch": exported.dynamic_batch, "simplified": exported.simplified,
        "simplify_max_abs_diff": exported.simplify_max_abs_diff, "nodes_before": exported.nodes_before,
        "nodes_after": exported.nodes_after, "max_abs_diff_vs_torch": exported.max_abs_diff,
        "max_rel_diff_vs_torch": exported.max_rel_diff,
    }}
    report["warnings"].extend(exported.warnings)
    engine_source = folder / "compact.onnx"
    if options.fp16:
        half = to_fp16(folder / "compact.onnx", folder / "compact.fp16.onnx")
        artifacts["onnx_fp16"] = "compact.fp16.onnx"
        added["onnx_fp16"] = {"max_abs_diff_vs_fp32": half.max_abs_diff, "max_rel_diff_vs_fp32": half.max_rel_diff,
                              "clamped_values": half.clamped_values, "flushed_values": half.flushed_values}
        engine_source = folder / "compact.fp16.onnx"
    if int8 is not None:
        from compactify.converter.export.int8 import INT8_FILE, write_int8

        added["int8"] = write_int8(int8, folder / "compact.onnx", folder / INT8_FILE, report["output_names"])
        artifacts["onnx_int8"] = INT8_FILE
        engine_source = folder / INT8_FILE  # TensorRT builds it with explicit quantization
    if options.trt:
        from compactify.converter.export.tensorrt_build import build_engine

        info = build_engine(engine_source, folder / "compact.engine", max_batch=options.max_batch,
                            timing_cache=options.timing_cache, fp16=options.fp16)
        artifacts["engine"] = "compact.engine"
        added["engine"] = {k: v for k, v in info.as_dict().items() if k != "path"}
    added["artifacts"] = artifacts
    return added


def save_program(module: nn.Module, example: torch.Tensor, path: Path, report: dict) -> None:
    dims = range(example.dim()) if report.get("dynamic_hw") else (0,)  # --dynamic-hw: any spatial size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, (example,), dynamic_shapes=({d: torch.export.Dim.AUTO for d in dims
                                                                            if d != 1},), strict=False)
    meta = {"source": report["source"], "input_shape": report["input_shape"], "compactify_version": __version__}
    torch.export.save(program, str(path), extra_files={PT2_META_FILE: json.dumps(meta)})


def build_report(ckpt, source: Source, options: ConvertOptions, result: Contraction) -> dict:
    meta = source.meta
    return {
        "compactify_version": __version__,
        "source": {
            "checkpoint": str(Path(ckpt.path).resolve()),
            "sha256": ckpt.sha256,
            "format": ckpt.format,
            "arch": meta.get("arch"),
            "arch_kwargs": meta.get("arch_kwargs") or {},
            "meta": meta,
            "trust_pickle": options.trust_pickle,
            "outputs": options.outputs,
        },
        "input_shape": list(source.input_shape),
        "input_names": ["x"],
        "output_names": [f"output{i}" for i in range(len(flatten_outputs(result.compact(result.example))))],
        "allow_approximate": options.allow_approximate,
        "dynamic_hw": options.dynamic_hw,
        "exact_at": "every input size" if not result.size_notes else "the traced input size only",
        "accepts_input_size": "any" if options.dynamic_hw or len(source.input_shape) < 3 else
        "x".join(str(d) for d in source.input_shape[2:]) + " only (captured there; --dynamic-hw for every size)",
        "regions": result.regions,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "flops_before": result.flops_before,
        "flops_after": result.flops_after,
        "max_abs_error": result.max_abs_error,
        "max_rel_error": result.max_rel_error,
        "source_float32_rel_error": result.source_rel_error,
        "exact": result.max_rel_error <= max(EXACT_REL, SOURCE_ERROR_FACTOR * result.source_rel_error),
        "exact_definition": f"max_rel_error <= max({EXACT_REL:g}, {SOURCE_ERROR_FACTOR:g} x "
        "source_float32_rel_error), the source's own float32 run against float64 on the same inputs",
        "error_definition": "compact float32 vs source float64 on seeded N(0,1) inputs; "
        "max_rel_error = max|compact - ref| / max|ref| per output",
        "warnings": result.warnings,
        **({"truncation": result.truncation} if result.truncation is not None else {}),
    }


def write_report(report: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(report_markdown(report))


def report_markdown(report: dict) -> str:
    src = report["source"]
    lines = [
        "# compactify conversion report",
        "",
        f"- source: `{src['checkpoint']}` (sha256 `{src['sha256'][:16]}...`, {src['format']})",
        f"- arch: `{src['arch']}` {json.dumps(src['arch_kwargs']) if src['arch_kwargs'] else ''}".rstrip(),
        f"- input shape: {tuple(report['input_shape'])}",
        f"- parameters: {report['params_before']:,} -> {report['params_after']:,}",
        f"- FLOPs: {report['flops_before']:,} -> {report['flops_after']:,}",
        f"- error vs float64 source: max abs {report['max_abs_error']:.3g}, max rel {report['max_rel_error']:.3g} "
        f"(the source's own float32 run: {report['source_float32_rel_error']:.3g})",
        "",
        "| region | layers | decision | reason | params | FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["regions"]:
        layers = ", ".join(r["layers"])
        if len(layers) > 80:
            layers = layers[:77] + "..."
        lines.append(
            f"| {r['name']} | {layers} | {r['decision']} | {r['reason']} | "
            f"{r['params_before']:,} -> {r['params_after']:,} | {r['flops_before']:,} -> {r['flops_after']:,} |"
        )
    if report.get("truncation") is not None:
        from compactify.converter.lowrank.truncate import truncation_markdown

        lines += truncation_markdown(report["truncation"])
    if report.get("int8") is not None:
        from compactify.converter.export.int8 import int8_markdown

        lines += int8_markdown(report["int8"])
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
