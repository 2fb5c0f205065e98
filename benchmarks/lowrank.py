"""Accuracy against FLOPs against measured latency, for a nuclear-norm-trained checkpoint and
an unregularized one of the same architecture, over a sweep of rank rules.

This is the point of compression-aware training (Alvarez and Salzmann): the regularized net
keeps its accuracy at a fraction of the FLOPs, the plain one does not.

    python benchmarks/lowrank.py --quick          # < 3 minutes on a laptop CPU
    python benchmarks/lowrank.py                  # longer training, a finer sweep
    python benchmarks/lowrank.py --regularized a.pt --plain b.pt   # your own checkpoints

Both checkpoints are trained here on the built-in digits (SGD + one-cycle, proximal
nuclear-norm step for the regularized one) unless given. Every rule goes through the same
``contract(..., rank=...)`` that ``compactify convert --rank`` runs; the accuracy is on the
digits test split, the FLOPs are torch.utils.flop_counter's, and the latency is the median
(p50) of each truncated network at one batch size on ONNX Runtime CPU (its compact.onnx, as
``convert`` exports it; ``--runtime torch`` times the GraphModule instead), all networks of
one checkpoint timed interleaved (harness.latency.compare_latency) and quoted as ratios to
the untruncated one. Results: benchmarks/results/lowrank.{json,md,png}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch
from _common import RESULTS, machine, machine_line, write_results

QUICK_RULES = ["energy:0.95", "energy:0.99", "energy:0.999", "flops:0.3", "flops:0.5", "flops:0.7"]
FULL_RULES = ["energy:0.9", "energy:0.95", "energy:0.98", "energy:0.99", "energy:0.995", "energy:0.999",
              "flops:0.3", "flops:0.4", "flops:0.5", "flops:0.6", "flops:0.7", "flops:0.8", "flops:0.9"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short training, six rules, short timing (< 3 min)")
    p.add_argument("--arch", default="smallnet7", help="registered architecture (default smallnet7)")
    p.add_argument("--input-size", type=int, default=8, help="square digits input size (default 8, the native one)")
    p.add_argument("--epochs", type=int, help="training epochs (default 12, quick 8)")
    p.add_argument("--nuclear", type=float, default=0.75, help="nuclear-norm strength tau of the regularized run")
    p.add_argument("--regularized", type=Path, help="a regularized checkpoint instead of training one")
    p.add_argument("--plain", type=Path, help="an unregularized checkpoint instead of training one")
    p.add_argument("--rules", help="comma-separated rank rules (default: a sweep of energy: and flops:)")
    p.add_argument("--cost", choices=["flops", "latency"], default="flops",
                   help="convert --cost: latency keeps a factored layer only where it measures faster")
    p.add_argument("--runtime", choices=["ort", "torch"], default="ort",
                   help="where latency is measured: ONNX Runtime CPU on the exported compact.onnx (default), or "
                        "torch CPU on the compact GraphModule")
    p.add_argument("--batch", type=int, default=16, help="batch size at which latency is measured")
    p.add_argument("--seconds", type=float, help="timing budget per checkpoint (default 20, quick 6)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    return p.parse_args(argv)


def train_checkpoint(path: Path, arch: str, input_size: int, epochs: int, nuclear: float) -> Path:
    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import create_model
    from compactify.models.data import load_digits_data
    from compactify.models.train import train

    kwargs = {"num_classes": 10, "in_chans": 1, "input_size": input_size}
    shape = [1, 1, input_size, input_size]
    torch.manual_seed(0)
    model = create_model(arch, **kwargs)
    result = train(model, epochs, data=load_digits_data(shape), nuclear=nuclear, optimizer="sgd", lr=0.05,
                   batch_size=64, weight_decay=5e-4, progress=False)
    meta = {"arch": arch, "arch_kwargs": kwargs, "expand": None, "rate": None, "layers": None, "aux": None,
            "input_shape": shape,
            "training": {"dataset": "digits", "epochs": epochs, "nuclear": nuclear, "optimizer": "sgd-nesterov-onecycle",
                         "lr": 0.05, "batch_size": 64, "test_accuracy": result.test_accuracy,
                         "seconds": round(result.seconds, 1)}}
    save_checkpoint(path, model.state_dict(), meta, force=True)
    print(f"trained {path.name}: nuclear {nuclear:g}, {epochs} epochs, test accuracy {result.test_accuracy:.4f} "
          f"({result.seconds:.1f} s)", flush=True)
    return path


def sweep(checkpoint: Path, label: str, rules: list[str], batch: int, seconds: float, cost: str, runtime: str,
          threads: int, folder: Path) -> list[dict]:
    """Every rule through contract(); then all truncated networks timed interleaved."""
    from compactify.converter.load.checkpoint import load_checkpoint
    from compactify.converter.pipeline.contraction import contract
    from compactify.converter.pipeline.options import ConvertOptions
    from compactify.converter.pipeline.settings import split
    from compactify.converter.load.ingest import build_source
    from compactify.converter.lowrank.rank_request import rank_request
    from compactify.measure.latency import Candidate, compare_latency
    from compactify.models.data import load_digits_data
    from compactify.models.train import evaluate

    source = build_source(load_checkpoint(checkpoint), None, None, None)
    shape = tuple(source.input_shape)
    digits = load_digits_data(shape)
    base = contract(source.model, shape)
    rows = [{"checkpoint": label, "rule": "none", "accuracy": evaluate(base.compact, digits),
             "flops": base.flops_after, "params": base.params_after, "module": base.compact}]
    for rule in rules:
        t0 = time.perf_counter()
        request = rank_request(split(ConvertOptions(rank=rule, cost=cost), "pytorch").rank, shape, source.meta)
        result = contract(source.model, shape, rank=request)
        t = result.truncation
        rows.append({"checkpoint": label, "rule": rule, "accuracy": t["accuracy_after"], "flops": result.flops_after,
                     "params": result.params_after, "module": result.compact,
                     "factored": sum(row["form"] != "dense" for row in t["layers"]),
                     "error": t["output_error"]["max_rel_error"]})
        print(f"  {label} {rule}: FLOPs {100 * t['flops_ratio']:.1f}%, accuracy {t['accuracy_before']:.4f} -> "
              f"{t['accuracy_after']:.4f} ({time.perf_counter() - t0:.1f} s)", flush=True)
    x = torch.randn((batch, *shape[1:]), generator=torch.Generator().manual_seed(0))
    with contextlib.ExitStack() as stack:
        candidates = []
        for r in rows:
            if runtime == "ort":
                runner = stack.enter_context(ort_runner(r["module"], x, folder / f"{label}_{r['rule'].replace(':', '_')}.onnx",
                                                        threads))
                candidates.append(Candidate(r["rule"], runner.bind({"x": x.numpy()}), runner.synchronize, batch=batch))
            else:
                candidates.append(Candidate(r["rule"], torch_call(r["module"], x), batch=batch))
        timing = compare_latency(candidates, warmup=20, seconds=seconds, progress=False)
    dense_flops = rows[0]["flops"]
    for r in rows:
        stats = timing.by_label(r["rule"])
        r.update(flops_ratio=r["flops"] / dense_flops, latency_ms=stats.p50_ms, latency_cv=stats.cv,
                 latency_ratio=timing.ratios_paired[r["rule"]], accuracy_drop=rows[0]["accuracy"] - r["accuracy"])
        del r["module"]
    for w in timing.warnings:
        print(f"  warning: {w}", flush=True)
    return rows


def torch_call(module, x):
    def fn():
        with torch.no_grad():
            module(x)
    return fn


def ort_runner(module, x: torch.Tensor, path: Path, threads: int):
    from compactify.converter.backends.onnx_export import export_onnx
    from compactify.runtimes import open_runner

    export_onnx(module, x[:2], path, input_names=["x"], dynamic_batch=True, simplify=True)
    return open_runner(str(path), "ort", intra_op_threads=threads, inter_op_threads=1)


COLUMNS = [("checkpoint", None), ("rule", None), ("factored", "d"), ("flops_ratio", ".3f"), ("accuracy", ".4f"),
           ("accuracy_drop", "+.4f"), ("latency_ms", ".4f"), ("latency_ratio", ".3f"), ("latency_cv", ".2f"),
           ("error", ".2e")]


def print_and_write(rows: list[dict], info: dict, out: Path, batch: int, runtime: str) -> list[Path]:
    from rich.console import Console

    from compactify.harness.report import Column, markdown_table, rich_table

    columns = [Column(k, fmt=f) for k, f in COLUMNS]
    where = "ONNX Runtime CPU" if runtime == "ort" else "torch CPU"
    title = f"rank truncation on digits: FLOPs and latency ({where}, batch {batch}) as ratios to the untruncated net"
    Console(width=160).print(rich_table(rows, columns, title=title))
    markdown = f"# {title}\n\n{info['summary']}\n\n{markdown_table(rows, columns)}\n"
    paths = write_results("lowrank", {"machine": info, "batch": batch, "rows": rows}, markdown, out)
    paths.append(plot(rows, out / "lowrank.png", f"latency ({where}, batch {batch})"))
    return paths


def plot(rows: list[dict], path: Path, latency_label: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for label, marker in (("nuclear", "o"), ("plain", "s")):
        mine = [r for r in rows if r["checkpoint"] == label]
        for ax, key, name in ((axes[0], "flops_ratio", "FLOPs"), (axes[1], "latency_ratio", latency_label)):
            for family, style in (("energy", "-"), ("flops", "--")):
                pts = sorted((r[key], r["accuracy"]) for r in mine if r["rule"].startswith(family))
                if key == "latency_ratio":
                    style = "none"  # measured: no order along the latency axis to draw a line through
                if pts:
                    ax.plot(*zip(*pts), linestyle=style, marker=marker, label=f"{label}, {family}: rules")
            base = [r for r in mine if r["rule"] == "none"]
            if base:
                ax.plot(base[0][key], base[0]["accuracy"], marker="*", markersize=12, linestyle="none",
                        label=f"{label}, untruncated")
            ax.set_xlabel(f"{name} / untruncated")
    axes[0].set_ylabel("digits test accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle("compression-aware (nuclear-norm) training vs plain training, truncated by rank rules")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    epochs = args.epochs or (8 if args.quick else 12)
    seconds = args.seconds or (6.0 if args.quick else 20.0)
    rules = args.rules.split(",") if args.rules else (QUICK_RULES if args.quick else FULL_RULES)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)  # training and timing alike: reproducible and comparable
    checkpoints = {
        "nuclear": args.regularized or train_checkpoint(args.out / "lowrank_nuclear.pt", args.arch, args.input_size,
                                                       epochs, args.nuclear),
        "plain": args.plain or train_checkpoint(args.out / "lowrank_plain.pt", args.arch, args.input_size, epochs, 0.0),
    }
    rows = []
    for label, path in checkpoints.items():
        rows += sweep(path, label, rules, args.batch, seconds, args.cost, args.runtime, args.threads,
                      args.out / "onnx")
    info = machine()
    info["summary"] = (f"{machine_line(info)}; torch threads {args.threads}; --cost {args.cost}; checkpoints: "
                       + json.dumps({k: str(v) for k, v in checkpoints.items()}))
    paths = print_and_write(rows, info, args.out, args.batch, args.runtime)
    print(info["summary"])
    print("wrote " + ", ".join(str(p) for p in paths) + f" in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
