"""``compactify demo``: train, contract, export, verify and time a small expanded net, in one go."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo")
@click.option("-o", "--output", "out_dir", default="compactify-demo", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder for everything the demo writes.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Training epochs on the digits.")
@click.option("--mode", default="cl", show_default=True, type=click.Choice(["cl", "ck", "fc", "cl+fc", "ck+fc"]),
              help="ExpandNets expansion of SmallNet-7 to train.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True, help="CPU threads for training and timing.")
@click.option("--force", is_flag=True, help="Overwrite -o even if it is not a previous demo's folder.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bars.")
def demo(out_dir, epochs, mode, threads, force, no_progress) -> None:
    """Train SmallNet-7 expanded with ExpandNets on the built-in digits, contract it, verify and benchmark it.

    A previous demo's folder is replaced; any other existing folder needs --force.
    """
    import warnings

    from rich.console import Console

    from compactify.cli.verify_cmd import print_result
    from compactify.harness.demo import DemoConfig, run_demo
    from compactify.harness.report import Column, print_table

    warnings.simplefilter("ignore", FutureWarning)
    console = Console()
    config = DemoConfig(mode=mode, epochs=epochs, threads=threads)
    result = run_demo(out_dir, config, force=force, progress=not no_progress,
                      log=lambda s: console.print(f"[bold]>[/bold] {s}"))

    t = result.training
    r = result.report
    console.print(f"\ntrained SmallNet-7-{mode.upper()} (rate {config.rate}): digits test accuracy "
                  f"{t['test_accuracy']:.4f} after {t['epochs']} epoch(s)")
    rows = [
        {"what": "parameters", "expanded": r["params_before"], "contracted": r["params_after"],
         "ratio": r["params_before"] / r["params_after"]},
        {"what": "FLOPs (batch 1)", "expanded": r["flops_before"], "contracted": r["flops_after"],
         "ratio": r["flops_before"] / max(r["flops_after"], 1)},
    ]
    print_table(console, rows, [Column("what"), Column("expanded", fmt=",d"), Column("contracted", fmt=",d"),
                                Column("ratio", "expanded / contracted", ".2f")], title="contraction")
    if r.get("int8") is not None:
        from compactify.targets.int8_artifact import summary_lines

        for line in summary_lines(r["int8"]):
            console.print(line, highlight=False)
    print_result(result.verification)
    speed = [Column("runtime"), Column("batch"), Column("expanded_ms", "expanded p50 ms", ".3f"),
             Column("contracted_ms", "contracted p50 ms", ".3f"), Column("speedup", "speedup (p50)", ".2f"),
             Column("speedup_paired", "speedup (paired)", ".2f")]
    rows = result.speedups()
    if any("int8_ms" in row for row in rows):
        speed += [Column("int8_ms", "int8 p50 ms", ".3f"), Column("int8_speedup", "fp32 / int8 (p50)", ".2f")]
    print_table(console, rows, speed, title=f"latency on CPU, {threads} thread(s), interleaved")
    noisy = [s for b in result.benches.values() for run in b.runs.values() for s in run.stats if s.high_cv]
    if noisy:  # one line, not one per model: the demo's runs are short by design
        worst = max(noisy, key=lambda s: s.cv)
        click.echo(f"note: {len(noisy)} of the timings are noisy (coefficient of variation up to {worst.cv:.0%}); "
                   "this machine is busy or the runs are short: use `compactify bench --seconds 10` on the files "
                   "for firm numbers", err=True)
    for w in result.report.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    total = sum(result.seconds.values())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    console.print(f"done in {total:.0f} s ({steps}); files in {result.out_dir}")
    result.verification.raise_if_failed()
