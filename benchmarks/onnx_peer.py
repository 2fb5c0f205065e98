"""ONNX in, contracted ONNX out, against the best peer pipeline on the same ONNX file.

For SmallNet-7 (CL, CK, CK+FC expansions, 3x32x32) and MobileNetV2-CL (3x224x224; --quick:
3x64x64), the expanded model is exported to ONNX once (torch.onnx, symbolic batch), as a user who
holds only that file has it. Three models are then timed on ONNX Runtime CPU (ORT_ENABLE_ALL):

- peer: the file after the best pipeline a peer tool offers: onnxsim, then ONNX Runtime with
  every graph optimization (BatchNorm folded into convs, activations fused, but no conv merged
  into a conv);
- ours: `compactify`'s ONNX front-end on the same file (contract_onnx, then onnxsim as
  `compactify convert MODEL.onnx` does), checked against the file run in float64;
- hand-written: the compact architecture built directly, exported and simplified the same way as
  the source: the physical limit for the contracted model.

As benchmarks/contraction.py does, each row is two interleaved A/B runs (peer vs ours: the speedup;
ours vs hand-written: the gap to the limit, target 1.00 within 0.02), with thread counts pinned
(ORT intra-op threads, torch threads), p50 latencies and ratios of medians (and medians of
per-round ratios). Weights are random with non-trivial BatchNorm statistics.

    python benchmarks/onnx_peer.py                 # full run, 1 thread, a few minutes
    python benchmarks/onnx_peer.py --threads 1,2   # also with every core
    python benchmarks/onnx_peer.py --quick         # about 2 minutes
Results: benchmarks/results/onnx_peer.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

from _common import machine, machine_line, print_table, randomize_batchnorm, write_results
from contraction import FULL, QUICK, Config, time_models

# The roles of benchmarks/contraction.py's time_models: "expanded" is the peer pipeline here.
ROLES = {"expanded": "peer", "contracted": "ours", "hand-written": "hand-written"}


def _export(module, example, *, exporter: str):
    import onnx
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings(), open(os.devnull, "w") as null, \
            contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            torch.onnx.export(module, (example,), f, dynamo=True, input_names=["x"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        else:
            torch.onnx.export(module, (example,), f, dynamo=False, opset_version=13, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


def onnx_params(model) -> int:
    """Elements of the stored float tensors: initializers and Constant nodes."""
    from onnx import TensorProto

    floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)
    total = sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in floats)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(math.prod(a.t.dims) for a in node.attribute if a.name == "value" and a.t.data_type in floats)
    return int(total)


def build(config: Config, folder: Path, exporter: str = "torchscript", seed: int = 0) -> dict[str, Any]:
    """Write peer.onnx, ours.onnx and hand-written.onnx for one configuration into ``folder``
    (under time_models' role names); returns paths, node and parameter counts and errors."""
    import numpy as np
    import onnx
    import torch

    from compactify.converter.pipeline.contraction import contract_onnx
    from compactify.targets.onnx_simplify import simplify_checked
    from compactify.measure.onnx_float64 import Float64Reference
    from compactify.models import create_model, model_entry

    kwargs = dict(config.kwargs)
    shape = model_entry(config.base).input_shape(**kwargs)
    torch.manual_seed(seed)
    expanded = create_model(f"{config.base}-{config.mode}", **kwargs).eval()
    randomize_batchnorm(expanded, seed)
    hand = create_model(config.base, **kwargs).eval()
    randomize_batchnorm(hand, seed)
    example = torch.randn(2, *shape[1:])
    source = _export(expanded, example, exporter=exporter)
    feeds = [{"x": np.random.default_rng(seed + 1).standard_normal((2, *shape[1:])).astype(np.float32)}]

    t = time.perf_counter()
    peer, _ = simplify_checked(source, feeds)
    peer_s = time.perf_counter() - t
    t = time.perf_counter()
    result = contract_onnx(source)
    ours, _ = simplify_checked(result.compact, feeds)
    ours_s = time.perf_counter() - t
    limit, _ = simplify_checked(_export(hand, example, exporter=exporter), feeds)

    # ours against the source file in float64, on fresh inputs (independent of contract_onnx's check)
    from compactify.targets.onnx_io import run_ort

    (truth,) = Float64Reference(source).run(feeds[0])
    (got,) = run_ort(ours, feeds[0])
    rel = float(np.abs(got.astype(np.float64) - truth).max() / np.abs(truth).max())

    paths, nodes, params = {}, {}, {}
    for role, model in (("expanded", peer), ("contracted", ours), ("hand-written", limit)):
        paths[role] = folder / f"{ROLES[role]}.onnx"
        onnx.save(model, str(paths[role]))
        nodes[role] = len(model.graph.node)
        params[role] = onnx_params(model)
    return {"paths": paths, "nodes": nodes, "params": params, "input_shape": list(shape),
            "source_nodes": len(source.graph.node), "source_params": onnx_params(source),
            "max_rel_error": rel, "contract_max_rel_error": result.max_rel_error,
            "peer_s": peer_s, "ours_s": ours_s}


def run(configs: Sequence[Config], batches: Sequence[int] = (1, 32), *, seconds: float = 10.0,
        threads: Sequence[int] = (1,), warmup: int = 5, min_rounds: int = 5, exporter: str = "torchscript",
        log=print) -> list[dict[str, Any]]:
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="compactify-onnx-peer-") as tmp:
        for config in configs:
            folder = Path(tmp) / config.name.replace(" ", "").replace("@", "_")
            folder.mkdir()
            built = build(config, folder, exporter)
            log(f"{config.name}: {built['source_nodes']} source nodes; peer {built['nodes']['expanded']}, "
                f"ours {built['nodes']['contracted']}, hand-written {built['nodes']['hand-written']}; "
                f"ours vs source in float64 {built['max_rel_error']:.1e}; timing")
            for n in threads:
                before = torch.get_num_threads()
                torch.set_num_threads(n)
                try:
                    timed = time_models(built["paths"], built["input_shape"], batches, seconds=seconds, threads=n,
                                        warmup=warmup, min_rounds=min_rounds)
                finally:
                    torch.set_num_threads(before)
                for row in timed:
                    rows.append({"model": config.name, "threads": n, **_renamed(row), "params": built["params"],
                                 "onnx_nodes": built["nodes"], "source_nodes": built["source_nodes"],
                                 "max_rel_error": built["max_rel_error"], **_texts(built)})
    return rows


def _texts(built: dict) -> dict:
    p, n = built["params"], built["nodes"]
    return {"params_text": f"{p['expanded']:,} / {p['contracted']:,} / {p['hand-written']:,}",
            "nodes_text": f"{built['source_nodes']} -> {n['expanded']} / {n['contracted']} / {n['hand-written']}"}


def _renamed(row: dict) -> dict:
    """time_models' row with the roles of this benchmark: peer, ours, hand-written."""
    out = dict(row)
    out["peer_ms"] = out.pop("expanded_ms")
    out["ours_ms"] = out.pop("contracted_ms")
    out["ours2_ms"] = out.pop("contracted2_ms")
    for s in out["stats"]:
        s["label"] = ROLES.get(s["label"], s["label"])
    return out


def _columns():
    from compactify.harness.report import Column

    return [
        Column("model"), Column("threads", "threads"), Column("batch"),
        Column("peer_ms", "peer p50 ms", ".3f"), Column("ours_ms", "ours p50 ms", ".3f"),
        Column("speedup", "speedup peer/ours", ".2f"), Column("speedup_paired", "speedup (paired)", ".2f"),
        Column("ours2_ms", "ours p50 ms", ".3f"), Column("hand_ms", "hand-written p50 ms", ".3f"),
        Column("vs_hand", "ours / hand", ".3f"), Column("vs_hand_paired", "ours / hand (paired)", ".3f"),
        Column("params_text", "params peer / ours / hand"), Column("nodes_text", "nodes source -> peer / ours / hand"),
        Column("max_rel_error", "ours vs f64", ".1e"), Column("max_cv", "max CV", ".0%"),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="MobileNetV2 at 64x64, short timings (about 2 minutes)")
    parser.add_argument("--threads", default="1", help="comma-separated ORT/torch thread counts (default 1; e.g. 1,2)")
    parser.add_argument("--seconds", type=float, default=None, help="timing budget per model pair and batch (default 10; quick 4)")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--exporter", default="torchscript", choices=["dynamo", "torchscript"],
                        help="how the source ONNX file is made (default torchscript)")
    parser.add_argument("--models", default=None, help="only these configurations, e.g. mobilenetv2-cl")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    seconds = args.seconds or (4.0 if args.quick else 10.0)
    configs = QUICK if args.quick else FULL
    if args.models:
        wanted = args.models.split(",")
        configs = [c for c in configs if f"{c.base}-{c.mode}" in wanted]
        if not configs:
            parser.error(f"--models {args.models} matches none of {[f'{c.base}-{c.mode}' for c in FULL]}")

    import torch

    torch.set_num_threads(threads[0])  # the exports and the contraction, not the timed ORT sessions
    info = machine()
    print(machine_line(info))
    t = time.perf_counter()
    rows = run(configs, batches, seconds=seconds, threads=threads, warmup=2 if args.quick else 5,
               min_rounds=3 if args.quick else 5, exporter=args.exporter)
    wall = time.perf_counter() - t
    title = ("ONNX Runtime CPU (ORT_ENABLE_ALL): peer = onnxsim on the exported file; ours = compactify's ONNX "
             "contraction of the same file; two interleaved A/B runs per row; ratios of p50 (and paired)")
    print_table(rows, _columns(), title)
    off = [r for r in rows if not math.isclose(r["vs_hand"], 1.0, abs_tol=0.02)]
    if off:
        print("outside 1.00 +/- 0.02 (ours / hand-written): "
              + ", ".join(f"{r['model']} t{r['threads']} b{r['batch']} {r['vs_hand']:.3f}" for r in off))
    info_after = machine()
    print(f"load average after: {', '.join(f'{v:.1f}' for v in info_after['loadavg_1_5_15'])}; wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "threads": threads, "seconds": seconds, "batches": batches,
                "exporter": args.exporter, "configs": [c.name for c in configs]}
    md = "\n".join([
        "## ONNX in: compactify vs onnxsim + ORT_ENABLE_ALL on the same file", "", f"Machine: {machine_line(info)}", "",
        f"Settings: {settings}; speedup = peer p50 / ours p50; ours / hand = ours p50 / hand-written p50 "
        "(target 1.00 +/- 0.02).", "", markdown_table(rows, _columns()),
    ])
    payload = {"machine": info, "machine_after": info_after, "settings": settings, "rows": rows, "wall_s": wall}
    written = write_results("onnx_peer", payload, md, args.out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
