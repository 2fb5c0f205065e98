"""The wide low-rank demonstration: a WideVGG (width 128) trained on digits with and without the
nuclear-norm regularizer by `compactify train`, both swept by `compactify sweep` over the same rank
budgets, and the frontier printed side by side: at which budget the regularized net keeps its
accuracy within 1 point, its FLOPs, and its measured ONNX Runtime speedup, next to the plain net.

    python benchmarks/sweep_frontier.py --quick     # 2 epochs, 3 budgets, about 4 minutes on 2 cores
    python benchmarks/sweep_frontier.py             # 4 epochs, 5 budgets, longer timing

The sweep runs on a local Ray instance; every point of both checkpoints is timed interleaved in one
process (ONNX Runtime, one thread), so the speedups (untruncated p50 / point p50) are comparable.
Results: benchmarks/results/sweep_frontier.{json,md} and the sweep folder with report.html.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _common import RESULTS, machine, machine_line, write_results

QUICK = {"epochs": 2, "budgets": "flops:0.2,flops:0.3,flops:0.5", "seconds": 2.0}
FULL = {"epochs": 4, "budgets": "flops:0.15,flops:0.2,flops:0.3,flops:0.5,energy:0.99", "seconds": 6.0}
NUCLEAR = 3.0  # `compactify train --nuclear` alone


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="2 epochs, three budgets, 2 s of timing per batch size")
    p.add_argument("--width", type=int, default=128, help="WideVGG width (default 128)")
    p.add_argument("--nuclear", type=float, default=NUCLEAR, help=f"tau of the regularized run (default {NUCLEAR:g})")
    p.add_argument("--batch", default="1,32", help="batch sizes timed (default 1,32)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    return p.parse_args(argv)


def train(path: Path, epochs: int, width: int, nuclear: float) -> None:
    from compactify.cli import main

    args = ["train", "widevgg", "--arch-kwargs", f'{{"width": {width}}}', "--epochs", str(epochs), "-q",
            "-o", str(path), "--force"]
    if nuclear:
        args += ["--nuclear", str(nuclear)]
    code = main(args, standalone_mode=False)
    if code:
        raise SystemExit(f"compactify train failed ({code})")


def frontier_rows(summary: dict, labels: dict[str, str], batches: list[str]) -> list[dict]:
    """One row per budget: each net's accuracy, FLOPs share and speedups."""
    rows = []
    for budget in summary["budgets"]:
        row = {"budget": budget}
        for ckpt, name in labels.items():
            p = next((q for q in summary["points"] if q["checkpoint"] == ckpt and q["budget"] == budget
                      and q["precision"] == "fp32"), None)
            if p is None or p["status"] != "ok":
                row[f"{name}_accuracy"] = f"failed: {p['error'][:60]}" if p else "-"
                continue
            row[f"{name}_accuracy"] = f"{100 * p['accuracy']:.1f}% ({100 * (p['accuracy'] - p['source_accuracy']):+.1f})"
            row[f"{name}_flops"] = f"{100 * p['flops_ratio']:.0f}%"
            for b in batches:
                row[f"{name}_speedup_b{b}"] = f"{p['speedup'].get(b, float('nan')):.2f}x"
        rows.append(row)
    return rows


def main(argv=None) -> None:
    from compactify.harness.sweep import SweepOptions, run_sweep

    args = parse_args(argv)
    cfg = QUICK if args.quick else FULL
    work = args.out / "sweep_frontier"
    work.mkdir(parents=True, exist_ok=True)
    plain, regular = work / "widevgg-plain.pt", work / f"widevgg-nuclear{args.nuclear:g}.pt"
    print(f"training widevgg width {args.width}, {cfg['epochs']} epochs, plain and --nuclear {args.nuclear:g}")
    train(plain, cfg["epochs"], args.width, 0.0)
    train(regular, cfg["epochs"], args.width, args.nuclear)
    sweep_dir = work / "sweep"
    shutil.rmtree(sweep_dir, ignore_errors=True)  # new checkpoints: a fresh sweep
    summary = run_sweep([plain, regular], sweep_dir,
                        SweepOptions(budgets=cfg["budgets"], batches=args.batch, seconds=cfg["seconds"]), echo=print)
    info = machine()
    batches = summary["batches"]
    labels = {plain.name: "plain", regular.name: "nuclear"}
    rows = frontier_rows(summary, labels, batches)
    keys = ["budget"] + [f"{n}_{k}" for n in ("nuclear", "plain")
                         for k in ["accuracy", "flops"] + [f"speedup_b{b}" for b in batches]]
    header = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    table = header + "".join("| " + " | ".join(r.get(k, "") for k in keys) + " |\n" for r in rows)
    mode = "--quick" if args.quick else "full"
    markdown = (f"## Wide low-rank frontier ({mode})\n\n{machine_line(info)}\n\nwidevgg width {args.width}, "
                f"{cfg['epochs']} epochs on digits; accuracy on the digits test split (change vs the untruncated "
                f"net in points); FLOPs of the untruncated net; speedup = untruncated p50 / p50 on ONNX Runtime CPU, "
                f"1 thread, all points timed interleaved in one process.\n\n{table}\n"
                + "".join(f"- recommended {line}\n" for line in _recommended(summary)))
    print(markdown)
    write_results("sweep_frontier", {"machine": info, "mode": mode, "rows": rows, "summary": summary}, markdown,
                  args.out)
    print(f"report: {sweep_dir / 'report.html'}")


def _recommended(summary: dict) -> list[str]:
    from compactify.harness.sweep.tables import recommendation_lines

    return recommendation_lines(summary)


if __name__ == "__main__":
    main()
