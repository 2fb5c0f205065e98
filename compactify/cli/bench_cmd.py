"""``compactify bench``: latency of one or more models, interleaved, as ratios to the first."""

from __future__ import annotations

from pathlib import Path

import click

from compactify.harness.latency import DEFAULT_ITERS, DEFAULT_WARMUP


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="MODEL...")
@click.option("--runtime", metavar="torch|ort|trt", default=None,
              help="Runtime for every model. Default: each file's own (.pt2 and checkpoints: torch, .onnx: ort, engines: trt).")
@click.option("--device", metavar="cpu|cuda", default=None,
              help="Device for every model. Default: cuda when a TensorRT engine is given, else cpu.")
@click.option("--batch", "batch", default="1", show_default=True, metavar="B1,B2,...",
              help="Comma-separated batch sizes, e.g. 1,8,32.")
@click.option("--threads", type=int, default=None, help="Pin torch intra-op threads and ONNX Runtime intra-op threads to N.")
@click.option("--warmup", type=int, default=DEFAULT_WARMUP, show_default=True, help="Untimed rounds before measuring.")
@click.option("--iters", type=int, default=None, help=f"Measured rounds per batch size (default {DEFAULT_ITERS}).")
@click.option("--seconds", type=float, default=None, help="Measure each batch size for this long instead of --iters.")
@click.option("--input-shape", default=None, metavar="C,H,W",
              help="Input dims after the batch, for models whose inputs have dynamic dims.")
@click.option("--trust-pickle", is_flag=True, help="Allow checkpoints that hold pickled Python objects (they can run code).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None, help="Write the full results as JSON.")
@click.option("--md", "md_path", type=click.Path(path_type=Path), default=None, help="Write the table as Markdown.")
@click.option("--png", "png_path", type=click.Path(path_type=Path), default=None, help="Write a latency plot (PNG).")
@click.option("--no-progress", is_flag=True, help="Never show the progress bar.")
def bench(models, runtime, device, batch, threads, warmup, iters, seconds, input_shape, trust_pickle,
          json_path, md_path, png_path, no_progress) -> None:
    """Measure the latency of MODEL files (.pt2, .onnx, TensorRT engine, or checkpoint).

    Models run interleaved (A B, B A, ...) and are compared with the first as p50 ratios.
    """
    from rich.console import Console
    from rich.measure import Measurement

    from compactify.harness.bench import BENCH_COLUMNS, bench as run_bench, markdown_report
    from compactify.harness.machine import machine_summary
    from compactify.harness.report import latency_plot, rich_table, write_json, write_text

    result = run_bench(
        models,
        runtime=runtime,
        device=device,
        batches=batch,
        threads=threads,
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        input_shape=input_shape,
        trust_pickle=trust_pickle,
        progress=False if no_progress else None,
    )
    console = Console()
    table = rich_table(result.rows, BENCH_COLUMNS)
    # Never squeeze the numbers into ellipses: a table wider than the terminal is printed at its
    # natural width and left to the terminal to wrap.
    natural = Measurement.get(console, console.options.update_width(1000), table).maximum
    if natural > console.width:
        console = Console(width=natural)
    console.print(f"[dim]{machine_summary(result.machine)}[/dim]")
    console.print(table)
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if json_path:
        write_json(json_path, result.to_dict())
        click.echo(f"wrote {json_path}")
    if md_path:
        write_text(md_path, markdown_report(result))
        click.echo(f"wrote {md_path}")
    if png_path:
        title = f"{result.settings['device']} latency"
        latency_plot(result.rows, png_path, title=title)
        click.echo(f"wrote {png_path}")
