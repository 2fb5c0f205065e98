"""A source file in, a folder out (or, for an ONNX source, one model file with its report beside it):
the conversion's load, the one sequence of passes, the targets' artifacts and the report, written into
a temporary folder renamed at the end, whatever the source's format (a checkpoint, a .pt2 program, an
ONNX file)."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

from compactify.converter.backends.onnx_export import torch_to_onnx
from compactify.converter.frontends.fx.source import TorchSource
from compactify.converter.frontends.onnx.source import OnnxSource
from compactify.converter.load.sniff import is_onnx
from compactify.converter.lowrank.truncation_report import judge_accuracy
from compactify.converter.pipeline.contraction import contract_source
from compactify.converter.pipeline.passes import run_pass
from compactify.converter.pipeline.report import (
    build_report,
    file_metadata,
    write_report,
)
from compactify.converter.pipeline.options import ConvertOptions
from compactify.converter.pipeline.settings import ConvertSettings, split
from compactify.converter.stages import Stages
from compactify.converter.threads import conversion_thread_limit
from compactify.errors import BadInputError
from compactify.outputs import atomic_dir, atomic_files, check_output_folder
from compactify.targets import TARGETS, build_artifacts, prepare_artifacts


def convert_checkpoint(checkpoint: str | Path, out_dir: str | Path, options: ConvertOptions | None = None) -> dict:
    """Convert ``checkpoint`` into ``out_dir`` (compact.pt2 and/or compact.onnx and what the options
    add, report.json, report.md); returns the report. For an ONNX source, an ``out_dir`` ending in
    .onnx (and not an existing folder) names the compact model's file instead, with NAME.report.json
    and NAME.report.md beside it."""
    options = options or ConvertOptions()
    out_dir = Path(out_dir)
    inputs = [checkpoint, *options.inputs()]  # a folder holding one is never replaced, nor a file that is one
    source_format = "onnx" if is_onnx(checkpoint) else "pytorch"
    if source_format == "onnx" and writes_file(out_dir):
        settings = split(options, source_format)
        _refuse_beside_file(settings.targets, out_dir)
        files = {"compact.onnx": out_dir, "report.json": report_beside(out_dir, ".json"),
                 "report.md": report_beside(out_dir, ".md")}
        with atomic_files(files, force=settings.force, inputs=inputs) as tmp, conversion_thread_limit():
            return _convert_into(tmp, checkpoint, source_format, settings, model_name=out_dir.name)
    check_output_folder(out_dir, options.force, inputs)
    settings = split(options, source_format)
    # The folder is claimed (locked, a temporary sibling made) before the work: a second run into the
    # same target, or an unwritable parent, is refused at once, and any failure leaves nothing behind.
    with atomic_dir(out_dir, force=settings.force, inputs=inputs) as tmp, conversion_thread_limit():
        return _convert_into(tmp, checkpoint, source_format, settings)


def writes_file(out: Path) -> bool:
    """Whether -o names the compact ONNX model's file (onnxsim's `in.onnx out.onnx`) rather than a
    folder; an existing folder keeps the folder form, so that a previous output stays replaceable."""
    return out.suffix.lower() == ".onnx" and not out.is_dir()


def report_beside(model_file: Path, suffix: str) -> Path:
    """small.onnx -> small.report.json (``suffix`` ".json") or small.report.md."""
    return model_file.with_suffix(".report" + suffix)


def _refuse_beside_file(targets: dict, out: Path) -> None:
    """The file form holds one model: any other artifact asked for needs the folder form."""
    others = [TARGETS[name].flag or name for name in targets if name != "onnx"]
    if others:
        raise BadInputError(f"-o {out} names one model file; {', '.join(others)} write more files: give a folder "
                            "as -o, such as ./out")
    if "onnx" not in targets:
        raise BadInputError(f"-o {out} names the compact ONNX model, which --no-onnx skips: drop --no-onnx")


def _convert_into(tmp: Path, checkpoint: str | Path, source_format: str, settings: ConvertSettings,
                  model_name: str | None = None) -> dict:
    """Run the conversion, writing its artifacts and report into the temporary folder ``tmp``.
    ``model_name``: the file compact.onnx becomes (the file form), as report.json names it."""
    stages = Stages(progress=settings.progress)
    with stages("load"):
        if source_format == "onnx":
            source = run_pass(stages, "load", "load", OnnxSource.load, checkpoint, settings.load)
        else:
            source = run_pass(stages, "load", "load", TorchSource.load, checkpoint, settings.load,
                              settings.dynamic_hw)
        # Calibration files and data are read and checked here, before the work.
        requests = prepare_artifacts(settings.targets, source.meta, source.sample_shape)
        rank = source.rank_request(settings.rank)
    result = contract_source(source, settings.allow_approximate, rank, stages)
    if result.truncation is not None:  # raises when --rank lost more than --max-accuracy-drop
        result.warnings.extend(judge_accuracy(result.truncation, settings.rank.max_accuracy_drop))
    for w in result.warnings:
        warnings.warn(w, stacklevel=3)
    report = build_report(source.describe(result), result, settings.allow_approximate)
    result.drop_operators()
    with stages("export"):
        export = functools.partial(torch_to_onnx, dynamic_batch=settings.dynamic_batch)
        compact = source.compact_model(result.compact, report, file_metadata(report, result), export)
        built = build_artifacts(compact, tmp, requests)
        report["warnings"].extend(built.pop("warnings", []))
        report.update(built)
    if model_name is not None:
        report["artifacts"]["onnx"] = model_name
    report["stages"] = stages.rounded()
    write_report(report, tmp)
    return report
