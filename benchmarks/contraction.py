"""What contraction buys on ONNX Runtime CPU, and how close it gets to the physical limit.

For SmallNet-7 (CL, CK, CK+FC expansions, CIFAR layout 3x32x32) and MobileNetV2-CL (3x224x224;
--quick: 3x64x64), three ONNX models are timed interleaved (A B C, B C A, ...) at batch 1 and 32:

- expanded: the ExpandNets model after the best pipeline a peer tool offers without
  contraction: ONNX export, onnxsim, then ONNX Runtime with every graph optimization
  (ORT_ENABLE_ALL folds BatchNorm into convs and fuses activations, but never merges two convs);
- contracted: `compactify` contraction of the same model, exported the same way;
- hand-written: the compact architecture built directly (with its BatchNorms, which ORT folds),
  exported the same way: the best the contracted model can do.

Printed: p50 latencies, speedup = expanded / contracted, and contracted / hand-written (target
1.00 within 0.02), as ratios of medians and as medians of per-round (paired) ratios, each from
its own interleaved A/B run. Weights
are random with non-trivial BatchNorm statistics: latency does not depend on their values.

    python benchmarks/contraction.py            # full run, a few minutes
    python benchmarks/contraction.py --quick    # < 2 minutes
Results: benchmarks/results/contraction.{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import machine, machine_line, print_table, randomize_batchnorm, write_results

VARIANTS = ("expanded", "contracted", "hand-written")


@dataclasses.dataclass(frozen=True)
class Config:
    base: str
    mode: str
    kwargs: tuple = ()

    @property
    def name(self) -> str:
        size = dict(self.kwargs).get("input_size")
        return f"{self.base}-{self.mode}" + (f" @{size}" if size else "")


FULL = [Config("smallnet7", "cl"), Config("smallnet7", "ck"), Config("smallnet7", "ck+fc"), Config("mobilenetv2", "cl")]
QUICK = FULL[:3] + [Config("mobilenetv2", "cl", (("input_size", 64),))]


def build(config: Config, folder: Path, exporter: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Export the three ONNX models of one configuration into ``folder``; returns paths and sizes."""
    import torch

    from compactify.converter.pipeline.contraction import contract
    from compactify.converter.backends.onnx_export import export_onnx
    from compactify.models import create_model, model_entry

    kwargs = dict(config.kwargs)
    shape = model_entry(config.base).input_shape(**kwargs)
    torch.manual_seed(seed)
    expanded = create_model(f"{config.base}-{config.mode}", **kwargs).eval()
    randomize_batchnorm(expanded, seed)
    hand = create_model(config.base, **kwargs).eval()
    randomize_batchnorm(hand, seed)
    t = time.perf_counter()
    result = contract(expanded, shape)
    contract_s = time.perf_counter() - t
    example = torch.randn(2, *shape[1:])
    paths, nodes = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for variant, module in zip(VARIANTS, (expanded, result.compact, hand)):
            paths[variant] = folder / f"{variant}.onnx"
            exported = export_onnx(module, example, paths[variant], exporter=exporter)
            nodes[variant] = exported.nodes_after
    params = {
        "expanded": result.params_before,
        "contracted": result.params_after,
        "hand-written": sum(p.numel() for p in hand.parameters()),
    }
    return {"paths": paths, "nodes": nodes, "params": params, "input_shape": list(shape),
            "max_rel_error": result.max_rel_error, "contract_s": contract_s}


def _rounds(candidates, seconds: float, minimum: int) -> int:
    """How many interleaved rounds fit in ``seconds``, from one timed round (after the warm-up)."""
    t = time.perf_counter()
    for c in candidates:
        c.fn()
    per_round = max(time.perf_counter() - t, 1e-6)
    return max(minimum, min(2000, int(seconds / per_round)))


def time_models(paths: dict[str, Path], input_shape: Sequence[int], batches: Sequence[int], *, seconds: float,
                threads: int, warmup: int, min_rounds: int) -> list[dict[str, Any]]:
    """Per batch size, two interleaved A/B comparisons: expanded vs contracted (the speedup), then
    contracted vs hand-written (the gap to the limit).

    Pairs, not one three-way rotation: with three models a rotation (A B C, B C A, C A B) runs
    B right after A in two rounds of three but C after A in one, and a model that runs after the
    large expanded one finds its weights evicted from the cache. Two models alternate evenly.
    """
    import numpy as np

    from compactify.measure.latency import Candidate, compare_latency
    from compactify.runtimes import open_runner

    runners = {v: open_runner(paths[v], runtime="ort", intra_op_threads=threads) for v in VARIANTS}
    rows = []
    try:
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, *input_shape[1:])).astype(np.float32)
            cands = {v: Candidate(v, runners[v].bind({runners[v].inputs[0].name: x}), runners[v].synchronize, "cpu",
                                  batch) for v in VARIANTS}
            results = []
            for pair in (("expanded", "contracted"), ("contracted", "hand-written")):
                chosen = [cands[v] for v in pair]
                for _ in range(warmup):
                    for c in chosen:
                        c.fn()
                # The gap to the hand-written model is the small effect: it gets more rounds.
                least = min_rounds if pair[0] == "expanded" else 3 * min_rounds
                iters = _rounds(chosen, seconds / 2, least)
                results.append(compare_latency(chosen, warmup=1, iters=iters, baseline=1, progress=False,
                                               description=f"batch {batch}"))
            speed, limit = results
            rows.append({
                "batch": batch,
                "rounds": speed.rounds,
                "rounds2": limit.rounds,
                "expanded_ms": speed.by_label("expanded").p50_ms,
                "contracted_ms": speed.by_label("contracted").p50_ms,
                "contracted2_ms": limit.by_label("contracted").p50_ms,
                "hand_ms": limit.by_label("hand-written").p50_ms,
                "speedup": speed.ratios_p50["expanded"],
                "speedup_paired": speed.ratios_paired["expanded"],
                "vs_hand": limit.ratios_p50["contracted"],
                "vs_hand_paired": limit.ratios_paired["contracted"],
                "max_cv": max(s.cv for r in results for s in r.stats),
                "stats": [dict(s.to_dict(), comparison=i) for i, r in enumerate(results) for s in r.stats],
            })
    finally:
        for r in runners.values():
            r.close()
    return rows


def run(configs: Sequence[Config], batches: Sequence[int] = (1, 32), *, seconds: float = 10.0, threads: int = 1,
        warmup: int = 5, min_rounds: int = 5, exporter: str = "auto", log=print) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="compactify-bench-") as tmp:
        for config in configs:
            folder = Path(tmp) / config.name.replace(" ", "").replace("@", "_")
            folder.mkdir()
            t = time.perf_counter()
            built = build(config, folder, exporter)
            log(f"{config.name}: contracted {built['params']['expanded']:,} -> {built['params']['contracted']:,} "
                f"parameters in {built['contract_s']:.1f} s (exports {time.perf_counter() - t:.1f} s); timing")
            for row in time_models(built["paths"], built["input_shape"], batches, seconds=seconds, threads=threads,
                                   warmup=warmup, min_rounds=min_rounds):
                rows.append({"model": config.name, "params": built["params"], "onnx_nodes": built["nodes"],
                             "max_rel_error": built["max_rel_error"], **row})
    return rows


def _columns():
    from compactify.harness.report import Column

    return [
        Column("model"), Column("batch"),
        Column("expanded_ms", "expanded p50 ms", ".3f"), Column("contracted_ms", "contracted p50 ms", ".3f"),
        Column("speedup", "speedup", ".2f"), Column("speedup_paired", "speedup (paired)", ".2f"),
        Column("rounds"),
        Column("contracted2_ms", "contracted p50 ms", ".3f"), Column("hand_ms", "hand-written p50 ms", ".3f"),
        Column("vs_hand", "contracted / hand", ".3f"), Column("vs_hand_paired", "contr. / hand (paired)", ".3f"),
        Column("rounds2", "rounds"), Column("max_cv", "max CV", ".0%"),
    ]


def plot(rows: Sequence[dict], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from compactify.outputs import atomic_file

    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    width = 0.8 / len(batches)
    for k, batch in enumerate(batches):
        sel = [next(r for r in rows if r["model"] == m and r["batch"] == batch) for m in models]
        xs = [i + (k - (len(batches) - 1) / 2) * width for i in range(len(models))]
        left.bar(xs, [r["speedup"] for r in sel], width, label=f"batch {batch}")
        right.bar(xs, [r["vs_hand"] for r in sel], width, label=f"batch {batch}")
    left.set_ylabel("expanded p50 / contracted p50")
    left.set_title("speedup from contraction (ORT CPU)")
    left.axhline(1.0, color="black", linewidth=0.8)
    right.set_title("contracted / hand-written (target 1.00 +/- 0.02)")
    right.axhspan(0.98, 1.02, color="green", alpha=0.15)
    right.axhline(1.0, color="black", linewidth=0.8)
    lo = min(0.9, min(r["vs_hand"] for r in rows) - 0.02)
    hi = max(1.1, max(r["vs_hand"] for r in rows) + 0.02)
    right.set_ylim(lo, hi)
    for ax in (left, right):
        ax.set_xticks(range(len(models)), models, rotation=20, ha="right", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 at 64x64, short timings, TorchScript exporter")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--seconds", type=float, default=None, help="timing budget per model and batch (default 10; quick 1.5)")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--exporter", default=None, choices=["auto", "dynamo", "torchscript"],
                        help="ONNX exporter for all three models (default auto; quick: torchscript, which is faster)")
    parser.add_argument("--models", default=None, help="only these configurations, e.g. mobilenetv2-cl")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    seconds = args.seconds or (1.5 if args.quick else 10.0)
    exporter = args.exporter or ("torchscript" if args.quick else "auto")
    configs = QUICK if args.quick else FULL
    if args.models:
        wanted = args.models.split(",")
        configs = [c for c in configs if f"{c.base}-{c.mode}" in wanted]
        if not configs:
            parser.error(f"--models {args.models} matches none of {[f'{c.base}-{c.mode}' for c in FULL]}")

    import torch

    torch.set_num_threads(args.threads)  # the exports and the contraction, not the timed ORT sessions
    info = machine()
    print(machine_line(info))
    t = time.perf_counter()
    rows = run(configs, batches, seconds=seconds, threads=args.threads, warmup=2 if args.quick else 5,
               min_rounds=3 if args.quick else 5, exporter=exporter)
    wall = time.perf_counter() - t
    title = (f"ONNX Runtime CPU, {args.threads} thread(s); two interleaved A/B runs per row: expanded vs contracted, "
             "then contracted vs hand-written; ratios of p50 (and medians of per-round ratios)")
    print_table(rows, _columns(), title)
    off = [r for r in rows if not math.isclose(r["vs_hand"], 1.0, abs_tol=0.02)]
    if off:
        print("outside 1.00 +/- 0.02 (contracted / hand-written): "
              + ", ".join(f"{r['model']} b{r['batch']} {r['vs_hand']:.3f}" for r in off))
    info_after = machine()
    print(f"load average after: {', '.join(f'{v:.1f}' for v in info_after['loadavg_1_5_15'])}; wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "threads": args.threads, "seconds": seconds, "batches": batches,
                "exporter": exporter, "configs": [c.name for c in configs]}
    md = "\n".join([
        "## Contraction on ONNX Runtime CPU", "", f"Machine: {machine_line(info)}", "",
        f"Settings: {settings}; speedup = expanded p50 / contracted p50; contracted / hand = contracted p50 / "
        "hand-written p50 (target 1.00 +/- 0.02).", "", markdown_table(rows, _columns()),
    ])
    payload = {"machine": info, "machine_after": info_after, "settings": settings, "rows": rows, "wall_s": wall}
    written = write_results("contraction", payload, md, args.out)
    written.append(plot(rows, (args.out or _common.RESULTS) / "contraction.png"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
