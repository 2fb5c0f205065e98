"""compactify against each public re-parameterization family's own deploy conversion.

For every family, one training-time network (random weights, non-trivial BatchNorm statistics,
eval mode) is converted twice:

- theirs: the family's own deploy conversion. timm models (RepVGG, MobileOne, RepGhostNet,
  FastViT, RepViT, LeViT): ``timm.utils.model.reparameterize_model(copy.deepcopy(model))``;
  the reproductions in tests/families/catalog.py (DBB, ACNet, RepLKNet, YOLOv6, ExpandNets):
  ``Family.deploy(model)``, written from the public code;
- ours: ``compactify.converter.pipeline.contraction.contract(model, input_shape).compact``.

Both are exported the same way (``export_onnx``: same exporter, onnxsim, dynamic batch, fixed
height and width) and timed interleaved (theirs, ours, ours, theirs, ...) on ONNX Runtime CPU
with every graph optimization (ORT_ENABLE_ALL) and 1 intra-op thread, at batch 1 and 8.

Printed per family: parameters ours / theirs, ONNX nodes (after onnxsim) ours / theirs,
latency ours / theirs at each batch as the ratio of p50s and as the median of per-round
(paired) ratios, and the max relative error of compactify's output against the training-time
model in float64 (theirs too, for scale). A ratio below 1 means compactify's model is smaller
or faster. BatchNorm statistics are randomized before conversion (the catalog's builds do
that themselves), and biases a public init leaves at exactly zero get random values too:
compactify drops a zero bias, a family deploy keeps it, and no trained checkpoint has one.
timm models are built with num_classes=10 at 3x64x64 (--quick: 3x32x32 and fewer models);
catalog families at the catalog's own input size.

    python benchmarks/families.py                   # full run, several minutes
    python benchmarks/families.py --quick           # < 2 minutes
    python benchmarks/families.py --models repvgg_a0,dbb-resnet18
Results: benchmarks/results/families.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import machine, machine_line, print_table, randomize_batchnorm, write_results

SIDES = ("theirs", "ours")  # theirs first: the timing baseline


@dataclasses.dataclass(frozen=True)
class Config:
    model: str  # a timm model name or a tests/families/catalog.py key
    source: str  # "timm" or "catalog"
    size: int | None = None  # timm: input height = width; catalog: None (the catalog's own shape)

    @property
    def name(self) -> str:
        return self.model + (f" @{self.size}" if self.size else "")


TIMM = ("repvgg_a0", "mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4",
        "repghostnet_050", "fastvit_t8", "repvit_m0_9", "levit_128s")
# The whole-network entries of the catalog (the others are single blocks); yolov6-bepc3 is a
# stack of RepVGG blocks in a CSP layout, YOLOv6's re-parameterizable neck unit.
CATALOG = ("dbb-resnet18", "dbb-mobilenet", "acnet-rc", "acnet-cfqk", "replknet-net", "yolov6-bepc3",
           "expandnets-cl-fc", "expandnets-shufflenet-cl")
QUICK_TIMM = ("repvgg_a0", "mobileone_s0", "repghostnet_050")
QUICK_CATALOG = ("dbb-resnet18", "acnet-rc", "yolov6-bepc3", "expandnets-cl-fc")
SIZE, QUICK_SIZE = 64, 32
NUM_CLASSES = 10


def configs(quick: bool = False, models: Sequence[str] | None = None) -> list[Config]:
    """The configurations of a run; ``models`` picks any known model (at the run's size)."""
    size = QUICK_SIZE if quick else SIZE
    if models:
        unknown = [m for m in models if m not in TIMM + CATALOG]
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}; known: {', '.join(TIMM + CATALOG)}")
        timm_names, catalog_names = [m for m in TIMM if m in models], [m for m in CATALOG if m in models]
    else:
        timm_names, catalog_names = (QUICK_TIMM, QUICK_CATALOG) if quick else (TIMM, CATALOG)
    return [Config(m, "timm", size) for m in timm_names] + [Config(m, "catalog") for m in catalog_names]


def randomize_zero_biases(model, seed: int = 0) -> None:
    """Give every all-zero bias (timm initializes its classifier biases to zero) small random values,
    as a trained net has: compactify drops a bias that is exactly zero, a family deploy keeps it, and
    that would otherwise show up as a parameter saving no trained checkpoint would see."""
    import torch

    g = torch.Generator().manual_seed(30_000 + seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "bias" and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def training_and_deploy(config: Config, seed: int = 0):
    """The training-time model (eval mode, BatchNorm randomized), the family's deploy model, the input shape."""
    import torch

    if config.source == "timm":
        from tests.families.public import timm

        tm = timm()
        kwargs = {"img_size": config.size} if config.model.startswith("levit") else {}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = tm.create_model(config.model, pretrained=False, num_classes=NUM_CLASSES, **kwargs).eval()
        randomize_batchnorm(model, seed)
        randomize_zero_biases(model, seed)
        deployed = tm.utils.model.reparameterize_model(copy.deepcopy(model)).eval()
        return model, deployed, (2, 3, config.size, config.size)
    if config.source == "catalog":
        from tests.families.catalog import FAMILIES

        family = FAMILIES[config.model]
        model = family.build()  # seeded, BatchNorm statistics and affine parameters far from identity
        randomize_zero_biases(model)
        return model, family.deploy(model).eval(), tuple(family.input_shape)
    raise ValueError(f"unknown source {config.source!r}")


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _onnx_weights(path: Path) -> int:
    """Elements in the file's initializers: a parameter count that buffers and constants cannot hide from."""
    import math

    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def build(config: Config, folder: Path, exporter: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Contract one model, deploy it the family's way, export both into ``folder``."""
    import torch

    from compactify.converter.pipeline.contraction import contract

    from compactify.converter.frontends.fx.check import measure_error
    from compactify.converter.backends.onnx_export import export_onnx
    from compactify.converter.frontends.fx.capture import capture_graph

    model, deployed, shape = training_and_deploy(config, seed)
    t = time.perf_counter()
    result = contract(model, shape)
    contract_s = time.perf_counter() - t
    _, deploy_rel = measure_error(model, deployed, shape)
    example = torch.randn(2, *shape[1:], generator=torch.Generator().manual_seed(seed))
    paths, nodes, exporters, weights = {}, {}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Theirs captured as ours is, so that both go through the same exporter (the fx writer for a
        # captured graph, by default).
        theirs = capture_graph(deployed.eval(), example) if exporter in ("auto", "fx") else deployed
        for side, module in zip(SIDES, (theirs, result.compact)):
            paths[side] = folder / f"{side}.onnx"
            exported = export_onnx(module, example, paths[side], exporter=exporter)
            nodes[side], exporters[side] = exported.nodes_after, exported.exporter
            weights[side] = _onnx_weights(paths[side])
    return {
        "paths": paths, "input_shape": list(shape), "contract_s": contract_s,
        "params": {"training": result.params_before, "theirs": _count(deployed), "ours": result.params_after},
        "onnx_weights": weights, "onnx_nodes": nodes, "exporters": exporters,
        "max_rel_error": result.max_rel_error, "deploy_max_rel_error": deploy_rel,
    }


def time_pair(paths: dict[str, Path], input_shape: Sequence[int], batches: Sequence[int], *, seconds: float,
              threads: int, warmup: int) -> list[dict[str, Any]]:
    """Per batch size, one interleaved A/B run of theirs (the baseline) against ours."""
    import numpy as np

    from compactify.measure.latency import Candidate, compare_latency
    from compactify.runtimes import open_runner

    runners = {s: open_runner(paths[s], runtime="ort", intra_op_threads=threads, graph_optimization_level="all")
               for s in SIDES}
    rows = []
    try:
        for batch in batches:
            x = np.random.default_rng(batch).standard_normal((batch, *input_shape[1:])).astype(np.float32)
            cands = [Candidate(s, runners[s].bind({runners[s].inputs[0].name: x}), runners[s].synchronize, "cpu", batch)
                     for s in SIDES]
            res = compare_latency(cands, warmup=warmup, seconds=seconds, baseline=0, progress=False,
                                  description=f"batch {batch}")
            rows.append({
                "batch": batch, "rounds": res.rounds,
                "theirs_ms": res.by_label("theirs").p50_ms, "ours_ms": res.by_label("ours").p50_ms,
                "ratio": res.ratios_p50["ours"], "ratio_paired": res.ratios_paired["ours"],
                "max_cv": max(s.cv for s in res.stats), "stats": [s.to_dict() for s in res.stats],
            })
    finally:
        for r in runners.values():
            r.close()
    return rows


def measure(config: Config, folder: Path, batches: Sequence[int], *, seconds: float, threads: int, warmup: int,
            exporter: str) -> dict[str, Any]:
    """One table row: the built pair and its timings, flattened per batch (``b1``, ``b8`` ...)."""
    built = build(config, folder, exporter)
    timings = time_pair(built["paths"], built["input_shape"], batches, seconds=seconds, threads=threads,
                        warmup=warmup)
    p, n = built["params"], built["onnx_nodes"]
    row = {
        "family": config.name, "source": config.source, "input_shape": built["input_shape"],
        "params": p, "params_ratio": p["ours"] / p["theirs"],
        "params_pair": f"{p['ours']:,} / {p['theirs']:,}",
        "onnx_weights": built["onnx_weights"], "onnx_nodes": n, "nodes_pair": f"{n['ours']} / {n['theirs']}",
        "exporters": built["exporters"], "max_rel_error": built["max_rel_error"],
        "deploy_max_rel_error": built["deploy_max_rel_error"], "contract_s": built["contract_s"],
        "max_cv": max(t["max_cv"] for t in timings), "timings": timings,
    }
    for t in timings:
        row[f"b{t['batch']}"] = t["ratio"]
        row[f"b{t['batch']}_paired"] = t["ratio_paired"]
    return row


def run(cfgs: Sequence[Config], batches: Sequence[int] = (1, 8), *, seconds: float = 10.0, threads: int = 1,
        warmup: int = 10, exporter: str = "auto", log=print) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="compactify-families-") as tmp:
        for k, config in enumerate(cfgs):
            folder = Path(tmp) / f"{k}"
            folder.mkdir()
            t = time.perf_counter()
            try:
                row = measure(config, folder, batches, seconds=seconds, threads=threads, warmup=warmup,
                              exporter=exporter)
            except Exception as exc:  # one family that fails must not cost the others their numbers
                log(f"{config.name}: FAILED {type(exc).__name__}: {exc}")
                rows.append({"family": config.name, "source": config.source,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                             "traceback": traceback.format_exc()})
                continue
            log(f"{config.name}: params ours/theirs {row['params_pair']}, contracted in {row['contract_s']:.1f} s, "
                f"{time.perf_counter() - t:.1f} s in all")
            if row["exporters"]["ours"] != row["exporters"]["theirs"]:
                log(f"{config.name}: exported differently: {row['exporters']}")
            rows.append(row)
    return rows


def _columns(batches: Sequence[int], rows: Sequence[dict] = ()):
    from compactify.harness.report import Column

    columns = [
        Column("family"), Column("params_pair", "params ours / theirs", align="right"),
        Column("params_ratio", "params ratio", ".4f"), Column("nodes_pair", "ONNX nodes ours / theirs", align="right"),
        *[Column(f"b{b}", f"latency b{b}", ".3f") for b in batches],
        *[Column(f"b{b}_paired", f"b{b} paired", ".3f") for b in batches],
        Column("max_rel_error", "max rel err", ".1e"), Column("deploy_max_rel_error", "theirs rel err", ".1e"),
        Column("max_cv", "max CV", ".0%"),
    ]
    return columns + ([Column("error")] if any("error" in r for r in rows) else [])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"timm at {QUICK_SIZE}x{QUICK_SIZE}, fewer models, short timings")
    parser.add_argument("--models", default=None, help="comma-separated model names, e.g. repvgg_a0,dbb-resnet18")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timing budget per model and batch (default 10; quick 1)")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--exporter", default=None, choices=["auto", "dynamo", "torchscript"],
                        help="ONNX exporter for both models (default auto). torchscript is faster but bakes the "
                        "example's batch into the reshapes of compactify's GraphModules (their aten.sym_size "
                        "calls trace as constants), so a batch other than 2 fails there")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    seconds = args.seconds or (1.0 if args.quick else 10.0)
    exporter = args.exporter or "auto"
    try:
        cfgs = configs(args.quick, args.models.split(",") if args.models else None)
    except ValueError as exc:
        parser.error(str(exc))

    import torch

    torch.set_num_threads(args.threads)  # the contraction and the exports; ORT sessions get intra_op_threads
    info = machine()
    print(machine_line(info))
    t = time.perf_counter()
    rows = run(cfgs, batches, seconds=seconds, threads=args.threads, warmup=3 if args.quick else 10,
               exporter=exporter)
    wall = time.perf_counter() - t
    title = (f"compactify (ours) vs each family's own deploy conversion (theirs); ONNX Runtime CPU, ORT_ENABLE_ALL, "
             f"{args.threads} thread(s); latency = ours p50 / theirs p50 of one interleaved A/B run per batch "
             "(paired: median of per-round ratios); < 1 = ours smaller / faster")
    print_table(rows, _columns(batches, rows), title)
    info_after = machine()
    print(f"load average after: {', '.join(f'{v:.1f}' for v in info_after['loadavg_1_5_15'])}; wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "threads": args.threads, "seconds": seconds, "batches": batches,
                "exporter": exporter, "num_classes": NUM_CLASSES, "configs": [c.name for c in cfgs]}
    md = "\n".join([
        "## compactify vs each family's own deploy conversion (ONNX Runtime CPU)", "",
        f"Machine: {machine_line(info)}", "",
        f"Settings: {settings}; params ratio = compactify / family deploy; latency bN = compactify p50 / deploy p50 "
        "at batch N from one interleaved A/B run (paired: median of per-round ratios); max rel err: compactify vs "
        "the training-time model in float64 (theirs rel err: the family's deploy, same measure).", "",
        markdown_table(rows, _columns(batches, rows)),
    ])
    payload = {"machine": info, "machine_after": info_after, "settings": settings, "rows": rows, "wall_s": wall}
    written = write_results("families", payload, md, args.out)
    print("wrote " + ", ".join(str(p) for p in written))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
