"""What a conversion costs: wall time and peak memory of `compactify convert` per registry model,
and how both grow with the model's width.

Each conversion runs in a fresh subprocess, so peak memory is that conversion's own: the child
imports everything and converts a tiny model first (so imports and one-time initialisation are
not charged to the model), records its resident memory, converts the model (contraction,
compact.pt2 and, unless --no-onnx, compact.onnx with onnxsim) and reports the growth of its
peak resident set size (``ru_maxrss``) over the memory it held before. ImageNet-layout models
are converted at 3x64x64 (the input size barely changes the work: weights and graph do).

    python benchmarks/conversion_cost.py           # every registry model, widths 0.5/1/2
    python benchmarks/conversion_cost.py --quick   # < 2 minutes: SmallNet-7 widths 0.5-2, MobileNetV2 0.5-1, no ONNX
Results: benchmarks/results/conversion_cost.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import machine, machine_line, print_table, write_results

IMAGENET_SIZE = 64
# One conversion per registry model: its largest expansion (RepVGG is already over-parameterized).
MODELS = [
    ("smallnet3", "cl+fc"), ("smallnet7", "ck+fc"), ("mobilenetv1", "cl"), ("mobilenetv2", "cl"),
    ("repvgg", None), ("resnet18", "cl"), ("shufflenetv2", "cl"),
]
WIDTHS = (0.5, 1.0, 2.0)
WIDTH_MODELS = [("smallnet7", "ck+fc", WIDTHS), ("mobilenetv2", "cl", WIDTHS)]
# --quick leaves out MobileNetV2 at width 2: alone it takes over a minute and 5 GB.
QUICK_WIDTH_MODELS = [("smallnet7", "ck+fc", WIDTHS), ("mobilenetv2", "cl", (0.5, 1.0))]


def _kwargs(base: str, width: float | None) -> dict[str, Any]:
    kw: dict[str, Any] = {} if base.startswith("smallnet") else {"input_size": IMAGENET_SIZE}
    if width is not None:
        kw["width"] = width
    return kw


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the subprocess: warm up, then convert one model and measure it."""
    import resource
    import tempfile
    import warnings

    import torch

    warnings.simplefilter("ignore")
    torch.set_num_threads(int(spec.get("threads", 1)))
    from compactify.converter import convert as C
    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import build_model, default_input_shape

    def rss_mb() -> float:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def convert(meta: dict, folder: Path) -> None:
        ckpt = save_checkpoint(folder / "model.safetensors", build_model(meta).state_dict(), meta)
        C.convert_checkpoint(ckpt, folder / "out", C.ConvertOptions(onnx=spec["onnx"], force=True))

    timings: dict[str, float] = {}
    inner = C.contract

    def timed_contract(*args, **kwargs):
        t = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            timings["contract_s"] = time.perf_counter() - t

    with tempfile.TemporaryDirectory() as tmp:
        tiny = {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.25, "hidden": 8}, "expand": "cl",
                "rate": 4, "input_shape": [1, 3, 8, 8]}
        (Path(tmp) / "warm").mkdir()
        convert(tiny, Path(tmp) / "warm")
        meta = {"arch": spec["base"], "arch_kwargs": spec["kwargs"], "expand": spec["mode"], "rate": 4}
        meta["input_shape"] = list(default_input_shape(meta))
        params = sum(p.numel() for p in build_model(meta).parameters())
        (Path(tmp) / "model").mkdir()
        before = rss_mb()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        C.contract = timed_contract
        try:
            t = time.perf_counter()
            convert(meta, Path(tmp) / "model")
            total = time.perf_counter() - t
        finally:
            C.contract = inner
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        report = json.loads((Path(tmp) / "model" / "out" / "report.json").read_text())
    return {
        "params": params, "params_after": report["params_after"], "total_s": total,
        "contract_s": timings.get("contract_s"), "rss_before_mb": before, "peak_mb": peak,
        "peak_grew": peak > peak_before, "extra_mb": max(0.0, peak - before),
        "regions": len(report["regions"]), "merged": sum(r["decision"] == "dense" for r in report["regions"]),
    }


def measure(base: str, mode: str | None, width: float | None, *, onnx: bool, threads: int) -> dict[str, Any]:
    spec = {"base": base, "mode": mode, "kwargs": _kwargs(base, width), "onnx": onnx, "threads": threads}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"converting {base}-{mode} failed in the child: {tail}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    name = base + (f"-{mode}" if mode else "")
    return {"model": name, "width": width if width is not None else 1.0, **spec["kwargs"], **result}


def run(models: Sequence[tuple[str, str | None]], width_models: Sequence[tuple[str, str | None, Sequence[float]]],
        *, onnx: bool = True, threads: int = 1, log=print) -> tuple[list, list]:
    per_model = []
    cache: dict[tuple, dict] = {}
    for base, mode in models:
        row = measure(base, mode, None, onnx=onnx, threads=threads)
        cache[(base, mode, 1.0)] = row
        per_model.append(row)
        log(f"{row['model']}: {row['total_s']:.1f} s, +{row['extra_mb']:.0f} MB")
    growth = []
    for base, mode, widths in width_models:
        rows = []
        for w in widths:
            row = cache.get((base, mode, float(w))) if w == 1.0 else None
            if row is None:
                row = measure(base, mode, w, onnx=onnx, threads=threads)
                log(f"{row['model']} width {w}: {row['total_s']:.1f} s, +{row['extra_mb']:.0f} MB")
            rows.append(dict(row, width=w))
        ref = next((r for r in rows if r["width"] == 1.0), rows[0])
        for r in rows:
            r["time_ratio"] = r["total_s"] / ref["total_s"]
            r["contract_ratio"] = (r["contract_s"] / ref["contract_s"]) if ref["contract_s"] else None
            r["memory_ratio"] = (r["extra_mb"] / ref["extra_mb"]) if ref["extra_mb"] > 0 else None
            r["params_ratio"] = r["params"] / ref["params"]
        growth.extend(rows)
    return per_model, growth


def _model_columns():
    from compactify.harness.report import Column

    return [Column("model"), Column("params", "params", ",d"), Column("params_after", "params after", ",d"),
            Column("merged", "merged regions"), Column("contract_s", "contract s", ".2f"),
            Column("total_s", "convert s", ".2f"), Column("extra_mb", "peak extra MB", ".0f"),
            Column("peak_mb", "peak RSS MB", ".0f")]


def _growth_columns():
    from compactify.harness.report import Column

    return [Column("model"), Column("width"), Column("params", "params", ",d"),
            Column("params_ratio", "params x", ".2f"), Column("total_s", "convert s", ".2f"),
            Column("time_ratio", "time x", ".2f"), Column("contract_ratio", "contract time x", ".2f"),
            Column("extra_mb", "peak extra MB", ".0f"), Column("memory_ratio", "memory x", ".2f")]


def plot(growth: Sequence[dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from compactify.outputs import atomic_file

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    for model in dict.fromkeys(r["model"] for r in growth):
        rows = [r for r in growth if r["model"] == model]
        params = [r["params"] for r in rows]
        left.plot(params, [r["total_s"] for r in rows], marker="o", label=model)
        right.plot(params, [r["extra_mb"] for r in rows], marker="o", label=model)
    for ax, label in ((left, "conversion time (s)"), (right, "peak extra memory (MB)")):
        ax.set_xscale("log")
        ax.set_xlabel("parameters of the expanded model (widths 0.5, 1, 2)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmallNet-7 and MobileNetV2 width series only, no ONNX")
    parser.add_argument("--no-onnx", action="store_true", help="convert without the ONNX export")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in each conversion (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    onnx = not (args.no_onnx or args.quick)
    width_models = QUICK_WIDTH_MODELS if args.quick else WIDTH_MODELS
    info = machine()
    print(machine_line(info))
    t = time.perf_counter()
    if args.quick:  # width 1 comes from the growth series itself
        per_model, growth = run([], width_models, onnx=onnx, threads=args.threads)
        per_model = [r for r in growth if r["width"] == 1.0]
    else:
        per_model, growth = run(MODELS, width_models, onnx=onnx, threads=args.threads)
    wall = time.perf_counter() - t
    what = "contraction + compact.pt2" + (" + compact.onnx (onnxsim)" if onnx else "")
    print_table(per_model, _model_columns(), f"cost of `compactify convert` ({what}), one process each")
    print_table(growth, _growth_columns(), "growth with width (x = relative to width 1)")
    info_after = machine()
    print(f"load average after: {', '.join(f'{v:.1f}' for v in info_after['loadavg_1_5_15'])}; wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "onnx": onnx, "threads": args.threads, "imagenet_input": IMAGENET_SIZE}
    md = "\n".join([
        "## Conversion cost", "", f"Machine: {machine_line(info)}", "", f"Settings: {settings}; converts: {what}.", "",
        markdown_table(per_model, _model_columns()), "", "### Growth with width", "",
        markdown_table(growth, _growth_columns()),
    ])
    payload = {"machine": info, "machine_after": info_after, "settings": settings, "models": per_model,
               "growth": growth, "wall_s": wall}
    written = write_results("conversion_cost", payload, md, args.out)
    written.append(plot(growth, (args.out or _common.RESULTS) / "conversion_cost.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
