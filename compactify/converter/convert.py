"""Convert a checkpoint into a folder: compact.pt2, compact.onnx (+ fp16, int8, TensorRT), report."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compactify import __version__
from compactify.converter.contract import Contraction, contract, example_input
from compactify.converter.frontends.fx.capture import select_outputs
from compactify.converter.load.checkpoint import load_checkpoint
from compactify.converter.load.ingest import build_source
from compactify.converter.report import build_report, write_report
from compactify.converter.stages import Stages
from compactify.converter.threads import conversion_thread_limit
from compactify.errors import BadInputError
from compactify.outputs import atomic_dir, check_output_folder
from compactify.targets.pt2 import PT2_META_FILE


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
    int8: bool = False  # also write compact.int8.onnx (compactify.targets.int8_quantize)
    int8_calibration: str | None = None  # --calibration FILE.npz (None: digits, for checkpoints trained on them)
    int8_method: str = "minmax"  # --calibration-method: minmax, entropy or percentile
    int8_keep: tuple[str, ...] = ()  # --int8-keep: layers left in float
    int8_min_agreement: float | None = None  # --int8-min-agreement: fail below this top-1 agreement with fp32
    progress: bool = False  # a line per stage on stderr once a conversion has taken a few seconds
    rank_data: str | None = None  # --data FILE.npz: held-out inputs and labels on which --rank's accuracy is judged
    max_accuracy_drop: float | None = None  # --max-accuracy-drop D: fail (nothing written) when --rank loses more


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, options: ConvertOptions | None = None) -> dict:
    """Convert a checkpoint into ``out_dir`` (compact.pt2, report.json, report.md); returns the report."""
    options = options or ConvertOptions()
    out_dir = Path(out_dir)
    inputs = [checkpoint, options.timing_cache, options.int8_calibration,
              options.rank_data]  # a folder holding one is never replaced
    check_output_folder(out_dir, options.force, inputs)
    if options.trt:  # before any work, so that nothing is half-written
        from compactify.runtimes.devices import require_tensorrt

        require_tensorrt("--trt")
        if not options.onnx:
            raise BadInputError("--trt builds the engine from the ONNX model; drop --no-onnx")
    if options.fp16 and not options.onnx:
        raise BadInputError("--fp16 writes compact.fp16.onnx; drop --no-onnx")
    if _is_onnx(checkpoint):
        return _convert_onnx(checkpoint, out_dir, options, inputs)
    from compactify.targets.int8_quantize import check_options, int8_request

    check_options(options)
    # The folder is claimed (locked, a temporary sibling made) before the work: a second run into the
    # same target, or an unwritable parent, is refused at once, and any failure leaves nothing behind.
    stages = Stages(progress=options.progress)
    with atomic_dir(out_dir, force=options.force, inputs=inputs) as tmp, conversion_thread_limit():
        with stages("load"):
            ckpt = load_checkpoint(checkpoint, trust_pickle=options.trust_pickle)
            # The activations are checked against the memory budget on the captured graph (free), unless
            # --outputs runs the model before the capture (then on the meta device, first).
            source = build_source(ckpt, options.arch, options.arch_kwargs, options.input_shape,
                                  run_memory_check=bool(options.outputs))
            if not source.input_shape:
                raise BadInputError("the input shape is unknown for this model: pass --input-shape N,C,H,W")
            model = select_outputs(source.model, options.outputs, example_input(source.input_shape))
            int8 = int8_request(options, source, model)  # the calibration inputs are read and checked before the work
        from compactify.converter.lowrank.truncate import rank_request

        result = contract(model, tuple(source.input_shape), options.allow_approximate, rank_request(options, source),
                          dynamic_hw=options.dynamic_hw, stages=stages)
        if result.truncation is not None:  # raises when --rank lost more than --max-accuracy-drop
            from compactify.converter.lowrank.truncation_report import judge_accuracy

            result.warnings.extend(judge_accuracy(result.truncation, options.max_accuracy_drop))
        for w in result.warnings:
            warnings.warn(w, stacklevel=2)
        report = build_report(ckpt, source, options, result)
        report["check"] = result.check
        with stages("export"):
            save_program(result.compact, result.example, tmp / "compact.pt2", report)
            report["artifacts"] = {"pt2": "compact.pt2"}
            if options.onnx:
                report.update(export_artifacts(result, report, options, tmp, int8=int8))
        report["stages"] = stages.rounded()
        write_report(report, tmp)
    return report


def export_artifacts(result: Contraction, report: dict, options: ConvertOptions, folder: Path, int8=None) -> dict:
    """compact.onnx (+ fp16 copy, + int8 QDQ model with ``int8``, an ``int8.Int8Request``, + TensorRT
    engine); returns the report entries they add."""
    from compactify.converter.export.derived import write_engine, write_fp16
    from compactify.converter.export.onnx_export import export_onnx

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
        added["onnx_fp16"] = write_fp16(folder, artifacts)
        engine_source = folder / artifacts["onnx_fp16"]
    if int8 is not None:
        from compactify.targets.int8_quantize import INT8_FILE, write_int8

        added["int8"] = write_int8(int8, folder / "compact.onnx", folder / INT8_FILE, report["output_names"])
        artifacts["onnx_int8"] = INT8_FILE
        engine_source = folder / INT8_FILE  # TensorRT builds it with explicit quantization
    if options.trt:
        added["engine"] = write_engine(engine_source, folder, options, artifacts)
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


def _is_onnx(path: str | Path) -> bool:
    """An ONNX model by its content, or by its name when its content is too damaged to tell (so
    that a truncated model.onnx is reported as a broken ONNX file, not as a bad checkpoint)."""
    from compactify.converter.load.sniff import detect

    path = Path(path)
    if not path.is_file():
        return path.suffix.lower() == ".onnx"
    return detect(path).kind == "onnx" or path.suffix.lower() == ".onnx"


def _convert_onnx(path: str | Path, out_dir: Path, options: ConvertOptions, inputs) -> dict:
    from compactify.converter.convert_onnx import check_onnx_options, convert_onnx_file
    from compactify.converter.report import write_report

    check_onnx_options(options)
    stages = Stages(progress=options.progress)
    with atomic_dir(out_dir, force=options.force, inputs=inputs) as tmp, conversion_thread_limit():
        report = convert_onnx_file(path, tmp, options, stages)
        report["stages"] = stages.rounded()
        write_report(report, tmp)
    return report
