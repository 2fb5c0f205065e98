"""``compactify sweep``: rank budgets x precisions of one or more checkpoints, converted, judged and
timed on Ray, and the accuracy-latency frontier with a recommendation."""

from __future__ import annotations

from pathlib import Path

import click

from compactify.arguments import (
    existing_file,
    parse_arch_kwargs,
    parse_batches,
    parse_input_shape,
)
from compactify.converter.lowrank.rule_syntax import parse_budgets

# The runtimes the sweep can time on, said here so that --help imports no runtime; the tests check it
# against harness.sweep.grid.RUNTIMES, which the target registry gives.
SWEEP_RUNTIMES = ("ort", "torch", "openvino", "executorch", "litert")


@click.command("sweep")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path),
                metavar="CKPT...")
@click.option("-o", "--output", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Sweep folder. Finished points are kept there: run the same command again to resume.")
@click.option("--rank", "budgets", default="flops:0.3,flops:0.5,energy:0.99", show_default=True, metavar="RULE,...",
              help="Rank budgets (convert --rank rules), comma-separated; the untruncated conversion ('none') is "
                   "always added as the reference.")
@click.option("--fp16", is_flag=True, help="Also judge and time compact.fp16.onnx of every budget.")
@click.option("--int8", is_flag=True, help="Also judge and time compact.int8.onnx of every budget.")
@click.option("--calibration", type=click.Path(dir_okay=False, path_type=str), metavar="FILE.npz",
              help="--int8 calibration inputs (default: digits training images, for checkpoints trained on digits).")
@click.option("--data", default=None, metavar="digits|FILE.npz",
              help="Held-out data: the digits test split, or an .npz with x (and labels: accuracy; without labels: "
                   "top-1 agreement with the untruncated model). Default: digits, for checkpoints trained on it.")
@click.option("--runtime", default="ort", show_default=True, type=click.Choice(SWEEP_RUNTIMES),
              help="The target timed at fp32: compact.onnx on ort, compact.pt2 on torch, compact.xml on openvino, "
                   "compact.pte on executorch, compact.tflite on litert (--fp16: ort only; --int8: ort and openvino).")
@click.option("--batch", "batches", default="1", show_default=True, metavar="B1,B2,...",
              help="Batch sizes at which every point is timed.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="Intra-op threads of every runtime (torch, ONNX Runtime, OpenVINO, ExecuTorch, LiteRT), pinned, "
                   "for the timing and in every worker.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Interleaved timing per batch size (default 2 s).")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Timed rounds per batch size instead of --seconds.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True, metavar="POINTS",
              help="The recommended point is the fastest that loses at most this many percentage points of accuracy "
                   "(or of agreement) against its untruncated network.")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="Run on this Ray cluster (e.g. ray://head:10001 or head:6379; 'auto' for one started on this "
                   "machine). Default: a local Ray instance, started and stopped by the command.")
@click.option("--bench-resource", default=None, metavar="LABEL",
              help="Time on the node that has this Ray resource (ray start --resources='{\"LABEL\": 1}'), e.g. "
                   "cpu-x86; all points are timed there, in one process.")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local Ray instance, i.e. conversions at once (default: all).")
@click.option("--arch", help="Architecture of checkpoints without compactify metadata (as for convert).")
@click.option("--arch-kwargs", help="JSON keyword arguments for --arch.")
@click.option("--input-shape", help="N,C,H,W of the model input, when the checkpoints do not say.")
@click.option("--retry-failed", is_flag=True, help="Run again the points that failed in a previous run into -o.")
def sweep(checkpoints, out, budgets, fp16, int8, calibration, data, runtime, batches, threads, seconds, iters,
          max_accuracy_drop, ray_address, bench_resource, num_cpus, arch, arch_kwargs, input_shape,
          retry_failed) -> None:
    """Convert every (CKPT, rank budget, precision) point, measure its accuracy (or top-1 agreement),
    FLOPs, parameters and latency, and write OUT/sweep.json, sweep.md, frontier.png and report.html
    with the Pareto frontier and the recommended point.

    Conversions run in parallel Ray workers; all points are then timed interleaved in one process on
    one node. A point that fails is listed with its error and the rest complete; an interrupted
    sweep resumes from OUT without redoing finished points.
    """
    for path in checkpoints:
        existing_file(path, "checkpoint")
    parse_budgets(budgets)
    parse_batches(batches)
    kwargs = parse_arch_kwargs(arch_kwargs) or None
    shape = parse_input_shape(input_shape)

    from compactify.harness.sweep import SweepOptions, run_sweep
    from compactify.harness.sweep.tables import recommendation_lines

    options = SweepOptions(
        budgets=budgets, fp16=fp16, int8=int8, data=data, calibration=calibration, runtime=runtime, batches=batches,
        threads=threads, seconds=seconds if seconds is not None or iters is not None else 2.0, iters=iters,
        max_accuracy_drop=max_accuracy_drop, ray_address=ray_address, bench_resource=bench_resource,
        num_cpus=num_cpus, arch=arch, arch_kwargs=kwargs, input_shape=shape, retry_failed=retry_failed,
    )
    summary = run_sweep(checkpoints, out, options, echo=lambda line: click.echo(line, err=True))
    for w in summary["warnings"]:
        click.echo(f"warning: {w}", err=True)
    click.echo(f"recommended, at most {max_accuracy_drop:g} points lost:")
    for line in recommendation_lines(summary):
        click.echo(f"  {line}")
    click.echo(f"wrote {out}/sweep.json, sweep.md, frontier.png, report.html")
