"""``compactify bench``: latency of one or more models, interleaved, each as times faster than the first."""

from __future__ import annotations

import json
from pathlib import Path

import click

from compactify.arguments import existing_file, parse_batches, parse_input_shape
from compactify.cli.api_defaults import ApiDefault, resolve
from compactify.cli.kinds_help import KindsHelpCommand
from compactify.outputs import check_output_file

# The --iters default said in its help (--iters has no default of its own: without it, --seconds or this).
ITERS_SHOWN = 100


@click.command("bench", cls=KindsHelpCommand)
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="MODEL...")
@click.option("--runtime", metavar="torch|ort|trt|openvino|executorch|litert", default=None,
              help="Runtime for every model. Default: each file's own (see the table above).")
@click.option("--device", metavar="cpu|cuda", default=None,
              help="Device for every model. Default: cuda when a TensorRT engine is given, else cpu.")
@click.option("--batch", "batch", default=None, metavar="B1,B2,...",
              help="Comma-separated batch sizes, e.g. 1,8,32 (default: the N of --input-shape, else 1).")
@click.option("--threads", type=click.IntRange(min=1), cls=ApiDefault, api="compactify.harness.bench:DEFAULT_THREADS",
              show_default="1",
              help="Pin torch intra-op threads, ONNX Runtime intra-op threads and OpenVINO's threads to N (one by "
                   "default: firm numbers on a busy machine, as train and demo use); the table's header line says N.")
@click.option("--bf16", is_flag=True,
              help="Also time every model whose runtime can compute in bf16 (OpenVINO) at bf16, as a row of its own "
                   "(labelled \"(bf16)\"; the others run at fp32, labelled where the runtime lets it be chosen).")
@click.option("--warmup", type=click.IntRange(min=0), cls=ApiDefault, api="compactify.measure.latency:DEFAULT_WARMUP",
              show_default="10",
              help="Untimed rounds before measuring.")
@click.option("--iters", type=click.IntRange(min=1), default=None,
              help=f"Measured rounds per batch size (default {ITERS_SHOWN}).")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Measure each batch size for this long instead of --iters.")
@click.option("--input-shape", default=None, metavar="N,C,H,W",
              help="Input shape, the batch first as in every command: its dims after the batch fill the models' "
                   "dynamic dims, and its N is the batch when --batch is not given.")
@click.option("--trust-pickle", is_flag=True, help="Allow checkpoints that hold pickled Python objects (they can run code).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), default=None,
              help="Write the full results as JSON to a file, or to stdout with '-' (then no table is printed).")
@click.option("--md", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the table as Markdown.")
@click.option("--png", "png_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a latency plot (PNG).")
@click.option("--wide", is_flag=True, help="Show every column (device, p99, mean, std, items/s); rows wrap to fit "
                                           "the terminal.")
@click.option("--no-progress", is_flag=True, help="Never show progress (a bar on a terminal, else a line per batch and "
                                                  "model on stderr).")
def bench(models, runtime, device, batch, threads, bf16, warmup, iters, seconds, input_shape, trust_pickle,
          json_path, md_path, png_path, wide, no_progress) -> None:
    """Measure the latency of MODEL files, interleaved (A B, B A, ...); "faster than first" is the first
    model's p50 over each model's own (4.90x: 4.9 times faster; the first is 1.00x). Compare like
    with like: models on one runtime (--runtime), or the speed-up includes the runtimes' difference.

    {kinds}
    """
    for path in models:
        existing_file(path, "model file")
    if batch is not None:
        parse_batches(batch)
    parse_input_shape(input_shape, empty_ok=False)
    to_stdout = json_path is not None and str(json_path) == "-"
    for option, path in (("--json file", None if to_stdout else json_path), ("--md file", md_path),
                         ("--png file", png_path)):
        if path is not None:  # before the timing: a name that would destroy a model is refused at once
            check_output_file(path, inputs=models, what=option)

    from rich.console import Console

    from compactify.harness.bench import BENCH_COLUMNS, bench_header, markdown_report
    from compactify.harness.bench import bench as run_bench
    from compactify.harness.report import (
        latency_plot,
        print_table,
        to_jsonable,
        write_json,
        write_text,
    )

    given = resolve(click.get_current_context(), threads=threads, warmup=warmup)
    result = run_bench(
        models,
        runtime=runtime,
        device=device,
        batches=batch,
        threads=given["threads"],
        warmup=given["warmup"],
        iters=iters,
        seconds=seconds,
        input_shape=input_shape,
        trust_pickle=trust_pickle,
        progress=False if (no_progress or to_stdout) else None,
        precisions=("bf16",) if bf16 else (),
    )
    if to_stdout:
        click.echo(json.dumps(to_jsonable(result.to_dict()), indent=2, allow_nan=False))
    else:
        console = Console()  # the terminal's width: the table is fitted to it, never widened past it
        console.print(f"[dim]{bench_header(result)}[/dim]")
        print_table(console, result.rows, BENCH_COLUMNS, wide=wide)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if json_path and not to_stdout:
        write_json(json_path, result.to_dict())
        click.echo(f"wrote {json_path}")
    if md_path:
        write_text(md_path, markdown_report(result))
        click.echo(f"wrote {md_path}", err=to_stdout)
    if png_path:
        title = f"{result.settings['device']} latency"
        latency_plot(result.rows, png_path, title=title)
        click.echo(f"wrote {png_path}", err=to_stdout)
