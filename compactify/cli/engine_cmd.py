"""``compactify engine MODEL.onnx``: build a TensorRT engine from an ONNX file."""

from __future__ import annotations

from pathlib import Path

import click

from compactify.arguments import existing_file
from compactify.outputs import check_output_file


def default_engine_path(onnx_path: Path, fp16: bool) -> Path:
    return onnx_path.with_suffix(".fp16.engine" if fp16 and not onnx_path.stem.endswith(".fp16") else ".engine")


@click.command("engine")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Engine file (default: MODEL with .engine).")
@click.option("--min-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Smallest batch the engine accepts.")
@click.option("--opt-batch", type=click.IntRange(min=1), default=None,
              help="Batch TensorRT tunes kernels for (default: --min-batch).")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest batch the engine accepts (default: max(opt, 32)).")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Builder workspace limit in MB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), help="Timing cache file, read if present and updated after the build.")
@click.option("--fp16", is_flag=True, help="Build in fp16 (an fp32 ONNX file is converted to fp16 with fp32 inputs/outputs first).")
@click.option("--force", is_flag=True, help="Overwrite an existing engine file.")
def engine(model: Path, output: Path | None, min_batch: int, opt_batch: int | None, max_batch: int | None,
           workspace_mb: int, timing_cache: Path | None, fp16: bool, force: bool) -> None:
    """Build a serialized TensorRT engine from MODEL.onnx (needs TensorRT and a CUDA device)."""
    existing_file(model, "ONNX file")
    output = output or default_engine_path(model, fp16)
    # The engine never replaces its own ONNX input or the timing cache, even with --force.
    check_output_file(output, force=force, inputs=[model, timing_cache], what="engine file")

    from compactify.targets.tensorrt_build import build_engine

    info = build_engine(
        model, output, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_mb=workspace_mb, timing_cache=timing_cache, fp16=fp16, force=True,
    )
    batch = "static batch" if info.min_batch is None else f"batch {info.min_batch}..{info.max_batch} (opt {info.opt_batch})"
    precision = "int8" if info.int8 else "fp16" if info.fp16 else "fp32"
    click.echo(
        f"engine: {info.path} ({info.layers} layers from {info.network_layers} network layers, "
        f"built in {info.build_seconds:.1f} s, TensorRT {info.tensorrt_version}, {precision}, {batch})"
    )
    if info.timing_cache is not None:
        click.echo(f"timing cache: {info.timing_cache} ({'reused' if info.timing_cache_reused else 'new'})")
    for note in info.warnings:
        click.echo(f"note: {note}")
