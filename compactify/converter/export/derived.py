"""The artifacts built from a written compact.onnx, whatever the source format: its fp16 copy and
the TensorRT engine. Each writes its file into the folder, names it in ``artifacts`` and returns
its report.json entry."""

from __future__ import annotations

from pathlib import Path

FP16_FILE = "compact.fp16.onnx"
ENGINE_FILE = "compact.engine"


def write_fp16(folder: Path, artifacts: dict) -> dict:
    from compactify.converter.export.fp16 import to_fp16

    half = to_fp16(folder / "compact.onnx", folder / FP16_FILE)
    artifacts["onnx_fp16"] = FP16_FILE
    return {"max_abs_diff_vs_fp32": half.max_abs_diff, "max_rel_diff_vs_fp32": half.max_rel_diff,
            "clamped_values": half.clamped_values, "flushed_values": half.flushed_values}


def write_engine(source: Path, folder: Path, options, artifacts: dict) -> dict:
    """The TensorRT engine of ``source`` (compact.onnx, its fp16 or its int8 copy), with the
    optimization profile and timing cache of ``options``."""
    from compactify.converter.export.tensorrt_build import build_engine

    info = build_engine(source, folder / ENGINE_FILE, max_batch=options.max_batch,
                        timing_cache=options.timing_cache, fp16=options.fp16)
    artifacts["engine"] = ENGINE_FILE
    return {k: v for k, v in info.as_dict().items() if k != "path"}
