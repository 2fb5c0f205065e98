"""What INT8 costs and buys on re-parameterized networks, after merging and before.

For networks trained here on the built-in digits (a RepVGG-style block net, registry ``repvgg``:
3x3+BN, 1x1+BN and identity-BN branches summed; and SmallNet-7 in its ExpandNets CL expansion),
each is converted with ``compactify convert --int8`` (per-channel weights, MinMax calibration on
256 digits training images) and compared, on the 360 held-out digits test images, with other
ways of quantizing the same network, all with onnxruntime.quantization.quantize_static:

- merged, per-tensor weights: one scale per weight tensor after merging (the known wall: merged
  branches spread the channels' ranges apart);
- merged and equalized (``--int8-equalize``), per tensor and per channel: cross-layer equalization of
  the merged graph's Conv -> ReLU -> Conv pairs before quantizing (an exact rescaling);
- merged and bias-corrected (``--int8-bias-correction``), per tensor and per channel: each layer's mean
  output shift, measured on the calibration inputs, subtracted from its bias;
- merged, per-channel, with the sensitivity fallback (``--int8-min-agreement 1``): the most
  sensitive layers kept in float until the bar is met;
- unmerged, per-channel and per-tensor: the training-time network exported as it is, after ONNX
  Runtime's recommended ``quant_pre_process`` (which folds BatchNorm into each branch's conv but
  never sums branches), so every branch is quantized on its own and the sums run on int8 inputs.

For each: top-1 agreement with the fp32 compact model, accuracy, max error against the source in
float64, the share of output values beyond the calibrated range (clipped by the int8 output), and
the layer adding the most error. Then the ONNX Runtime CPU latency of the int8 model
against the fp32 compact model at batch 1 and 32, interleaved (harness.latency.compare_latency),
ONNX Runtime and torch threads pinned, as ratios of medians and medians of per-round ratios.

Then, at real sizes (full run only): ResNet-18 expanded with ExpandNets' CK scheme and
MobileNetV2 with CL (rate 4, random weights and BatchNorm statistics: latency does not depend on
what was learnt), each converted with ``--int8`` calibrated on 64 seeded random inputs, fp32
compact against int8 at 224x224, batch 1 and 8, on ONNX Runtime; then on OpenVINO's CPU plugin (IRs
of compact.onnx and of compact.int8.onnx, which OpenVINO reads and runs with its int8 kernels) and
on ExecuTorch's XNNPACK at batch 1 (compact.pt2 lowered as it is, and quantized by the PT2E flow
with XNNPACK's quantizer on the same calibration inputs), each runtime's fp32 against its int8.

    python benchmarks/int8.py --quick     # short training and timing (about 1 minute here)
    python benchmarks/int8.py             # longer training, wider nets, 10 s of timing per batch
    python benchmarks/int8.py --sizes-only  # only the real-size latency table
Results: benchmarks/results/int8{,-quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import RESULTS, machine, machine_line, print_table, randomize_batchnorm, write_results

VARIANTS = ("merged per-channel", "merged per-tensor", "merged per-tensor, equalized", "merged per-channel, equalized",
            "merged per-tensor, bias-corrected", "merged per-channel, bias-corrected",
            "merged per-channel, sensitivity fallback", "unmerged per-channel", "unmerged per-tensor")
FALLBACK_AGREEMENT = 1.0  # the bar the sensitivity-fallback variant is asked to meet: every prediction as fp32


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    meta: dict  # checkpoint metadata as `compactify train` writes it (arch, arch_kwargs, expand, rate, input_shape)
    epochs: int
    lr: float = 2e-3  # `compactify train`'s defaults
    weight_decay: float = 1e-4


QUICK = [
    Config("RepVGG (blocks 1-2-2-1, width 0.25) @32",
           {"arch": "repvgg", "arch_kwargs": {"width": 0.25, "num_blocks": [1, 2, 2, 1], "input_size": 32,
                                              "num_classes": 10},
            "expand": None, "rate": None, "input_shape": [1, 3, 32, 32]}, 3),
    Config("SmallNet-7 CL (rate 4, width 0.5) @8",
           {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.5, "hidden": 32}, "expand": "cl",
            "rate": 4, "input_shape": [1, 3, 8, 8]}, 3),
]
FULL = [
    # Trained hot (lr 0.05, weight decay 0.05, both 25x and 500x train's defaults): at the defaults the merged
    # kernels' channels spread at most 6x and per-tensor int8 loses 0.3 points of agreement; these settings
    # spread the summed BatchNorm'd branches further apart, the case equalization is for.
    Config("RepVGG (blocks 2-4-4-1, width 0.5) @32, lr 0.05, wd 0.05",
           {"arch": "repvgg", "arch_kwargs": {"width": 0.5, "num_blocks": [2, 4, 4, 1], "input_size": 32,
                                              "num_classes": 10},
            "expand": None, "rate": None, "input_shape": [1, 3, 32, 32]}, 8, lr=0.05, weight_decay=0.05),
    Config("SmallNet-7 CK+FC (rate 4) @32",
           {"arch": "smallnet7", "arch_kwargs": {"input_size": 32}, "expand": "ck+fc", "rate": 4,
            "input_shape": [1, 3, 32, 32]}, 8),
]


# (label, registry name, expansion) of the real-size latency table, all at 224x224.
REAL_SIZES = (("ResNet-18 CK (rate 4), contracted", "resnet18", "ck"),
              ("MobileNetV2 CL (rate 4), contracted", "mobilenetv2", "cl"))
REAL_SHAPE = (1, 3, 224, 224)
REAL_CALIBRATION = 64


def real_size_checkpoint(name: str, mode: str, folder: Path, seed: int = 0) -> Path:
    """An expanded registry model with random weights and non-trivial BatchNorm statistics, saved as
    `compactify expand` saves it."""
    import torch

    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import build_model

    meta = {"arch": name, "arch_kwargs": {}, "expand": mode, "rate": 4, "input_shape": list(REAL_SHAPE)}
    torch.manual_seed(seed)
    model = build_model(meta)
    randomize_batchnorm(model, seed)
    return save_checkpoint(folder / f"{name}-{mode}.safetensors", model.state_dict(), meta, force=True)


def real_size_int8(name: str, mode: str, folder: Path) -> tuple[Path, dict[str, Any], float]:
    """Convert the expanded checkpoint with --int8; (folder, report.json, conversion seconds)."""
    import numpy as np

    from compactify.converter.pipeline.convert import convert_checkpoint
    from compactify.converter.pipeline.options import ConvertOptions

    ckpt = real_size_checkpoint(name, mode, folder)
    calibration = folder / "calibration.npz"
    rng = np.random.default_rng(0)
    np.savez(calibration, x=rng.standard_normal((REAL_CALIBRATION, *REAL_SHAPE[1:])).astype(np.float32))
    out = folder / "converted"
    t = time.perf_counter()
    report = convert_checkpoint(ckpt, out, ConvertOptions(int8=True, int8_calibration=str(calibration), force=True))
    return out, report, time.perf_counter() - t


def train_checkpoint(config: Config, folder: Path, epochs: int | None = None, seed: int = 0) -> tuple[Path, float]:
    """Train the configuration on digits and save it with the metadata `compactify train` writes."""
    import torch

    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import build_model
    from compactify.models.train import train

    epochs = config.epochs if epochs is None else epochs
    torch.manual_seed(seed)
    model = build_model(config.meta)
    result = train(model, epochs, input_shape=config.meta["input_shape"], seed=seed, progress=False, lr=config.lr,
                   weight_decay=config.weight_decay)
    meta = dict(config.meta, training={"dataset": "digits", "epochs": epochs, "lr": config.lr,
                                       "weight_decay": config.weight_decay, "seed": seed, "data_seed": 0,
                                       "test_fraction": 0.2, "test_accuracy": result.test_accuracy})
    return save_checkpoint(folder / "source.safetensors", model.state_dict(), meta, force=True), result.test_accuracy


def quantize_variants(checkpoint: Path, folder: Path, exporter: str = "auto") -> dict[str, Any]:
    """Convert with --int8 (the merged per-channel artifact), then quantize the merged network per tensor
    and the unmerged one both ways on the same calibration inputs; measure all four on the same held-out
    inputs against the same fp32 compact model and float64 source."""
    import onnx
    import torch
    from onnxruntime.quantization import quant_pre_process

    from compactify.converter.backends.onnx_export import export_onnx
    from compactify.converter.frontends.fx.capture import select_outputs
    from compactify.converter.frontends.fx.check import example_input, float64_outputs
    from compactify.converter.load.checkpoint import load_checkpoint
    from compactify.converter.load.ingest import build_source
    from compactify.converter.pipeline.convert import convert_checkpoint
    from compactify.converter.pipeline.options import ConvertOptions
    from compactify.targets import TARGETS
    from compactify.targets import int8_measure as M
    from compactify.targets import int8_quantize as Q
    from compactify.errors import CompactifyError
    from compactify.targets import Int8Settings
    from compactify.targets.calibration import calibration_set
    from compactify.targets.int8_artifact import write_int8
    from compactify.targets.int8_bias import correct_biases
    from compactify.targets.int8_equalize import equalize_graph

    out = folder / "converted"
    t = time.perf_counter()
    report = convert_checkpoint(checkpoint, out, ConvertOptions(int8=True, force=True))
    convert_s = time.perf_counter() - t
    source = build_source(load_checkpoint(checkpoint), None, None, None)
    model = select_outputs(source.model, None, example_input(source.input_shape)).eval()
    data = calibration_set(None, source.input_shape, source.meta)
    fp32 = out / "compact.onnx"
    names = report["output_names"]
    paths = {"merged per-channel": out / TARGETS["onnx_int8"].file, "merged per-tensor": folder / "merged-per-tensor.onnx"}
    Q.quantize(fp32, paths["merged per-tensor"], data.calibration, per_channel=False)
    equalized = onnx.load(str(fp32))
    equalize_graph(equalized)
    onnx.save(equalized, str(folder / "equalized.onnx"))
    for per_channel in (False, True):
        key = f"merged per-{'channel' if per_channel else 'tensor'}, equalized"
        paths[key] = folder / f"merged-{'channel' if per_channel else 'tensor'}-equalized.onnx"
        Q.quantize(folder / "equalized.onnx", paths[key], data.calibration, per_channel=per_channel)
    for per_channel in (False, True):
        key = f"merged per-{'channel' if per_channel else 'tensor'}, bias-corrected"
        paths[key] = folder / f"merged-{'channel' if per_channel else 'tensor'}-bias-corrected.onnx"
        Q.quantize(fp32, paths[key], data.calibration, per_channel=per_channel)
        correct_biases(fp32, paths[key], data.calibration)
    reference = functools.partial(float64_outputs, model)
    key = "merged per-channel, sensitivity fallback"
    paths[key] = folder / "merged-fallback.onnx"
    try:
        fallback = write_int8(Int8Settings(min_agreement=FALLBACK_AGREEMENT), data, fp32, paths[key], names, reference)
    except CompactifyError as exc:
        fallback = {"error": str(exc)}
        paths.pop(key)

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        export_onnx(model, torch.randn(2, *source.input_shape[1:]), folder / "unmerged.onnx", output_names=names,
                    exporter=exporter)
        with Q._quiet():
            quant_pre_process(str(folder / "unmerged.onnx"), str(folder / "unmerged-pre.onnx"))
    for per_channel in (True, False):
        key = f"unmerged per-{'channel' if per_channel else 'tensor'}"
        paths[key] = folder / f"{key.replace(' ', '-')}.onnx"
        Q.quantize(folder / "unmerged-pre.onnx", paths[key], data.calibration, per_channel=per_channel)

    rows = []
    for variant in VARIANTS:
        if variant not in paths:
            rows.append({"variant": variant, "worst_layer": fallback.get("error")})
            continue
        measured = report["int8"] if variant == "merged per-channel" else M.measure(
            fp32, paths[variant], data, reference, names)
        # Layer by layer against the float graph that was quantized: equalization rescales the activations.
        base = (folder / "equalized.onnx" if variant.endswith("equalized") else fp32) if variant.startswith("merged") \
            else folder / "unmerged-pre.onnx"
        layers = report["int8"]["layers"] if variant == "merged per-channel" else M.layer_errors(
            base, paths[variant], data.held_out)
        worst = layers[0] if layers else None
        rows.append({
            "variant": variant, "agreement": measured["top1_agreement"], "accuracy": measured["accuracy_int8"],
            "accuracy_fp32": measured["accuracy_fp32"], "max_abs": measured["max_abs_error"],
            "max_rel": measured["max_rel_error"], "clipped": measured["clipped"],
            "worst_layer": None if worst is None else f"{worst['layer']} (+{worst['added']:.2g})",
            "int8_layers": sum(r["weight"] is not None for r in Q.qdq_structure(onnx.load(str(paths[variant])))),
            "kept_in_float": ", ".join(fallback["kept_in_float"]) if variant.endswith("fallback") else None,
        })
    return {"rows": rows, "paths": {k: str(v) for k, v in paths.items()}, "fp32": str(fp32), "report": report,
            "convert_s": convert_s, "input_shape": list(source.input_shape)}


def time_pair(fp32: Path, int8: Path, input_shape: Sequence[int], batches: Sequence[int], *, seconds: float,
              threads: int, warmup: int, runtime: str = "ort") -> list[dict[str, Any]]:
    """Per batch size, fp32 compact against int8 on ``runtime`` (CPU), interleaved A/B rounds."""
    import numpy as np

    from compactify.measure.latency import Candidate, compare_latency, pinned_threads
    from compactify.runtimes import open_runner, thread_options

    options = thread_options(runtime, threads) | ({"inter_op_threads": 1} if runtime == "ort" else {})
    runners = {"fp32": open_runner(fp32, runtime=runtime, **options),
               "int8": open_runner(int8, runtime=runtime, **options)}
    rows = []
    try:
        with pinned_threads(threads):
            for batch in batches:
                x = np.random.default_rng(batch).standard_normal((batch, *input_shape[1:])).astype(np.float32)
                cands = [Candidate(k, r.bind({r.inputs[0].name: x}), r.synchronize, "cpu", batch)
                         for k, r in runners.items()]
                result = compare_latency(cands, warmup=warmup, seconds=seconds, baseline=1, progress=False,
                                         description=f"batch {batch}")
                rows.append({
                    "batch": batch, "rounds": result.rounds,
                    "fp32_ms": result.by_label("fp32").p50_ms, "int8_ms": result.by_label("int8").p50_ms,
                    "speedup": result.ratios_p50["fp32"], "speedup_paired": result.ratios_paired["fp32"],
                    "max_cv": max(s.cv for s in result.stats),
                    "stats": [s.to_dict() for s in result.stats],
                })
    finally:
        for r in runners.values():
            r.close()
    return rows


def run_real_sizes(*, batches: Sequence[int], seconds: float, threads: int, log=print) -> list[dict]:
    """fp32 compact against int8 at 224x224 on ONNX Runtime (with how much of the int8 graph runs as integers),
    OpenVINO and ExecuTorch's XNNPACK, each runtime's fp32 against its own int8."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="compactify-int8-real-") as tmp:
        for i, (label, name, mode) in enumerate(REAL_SIZES):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            out, report, convert_s = real_size_int8(name, mode, folder)
            kernels = report["int8"]["kernels"]
            n_int, n_float = sum(kernels["integer_ops"].values()), sum(kernels["float_ops"].values())
            log(f"{label}: converted with --int8 in {convert_s:.0f} s ({report['params_before']:,} -> "
                f"{report['params_after']:,} parameters); {n_int} of {n_int + n_float} ops integer; timing")
            for row in time_pair(out / "compact.onnx", out / "compact.int8.onnx", REAL_SHAPE, batches,
                                 seconds=seconds, threads=threads, warmup=20):
                rows.append({"model": label, "runtime": "ONNX Runtime (QDQ, compact.int8.onnx)",
                             "integer_ops": f"{n_int}/{n_int + n_float}",
                             "float_ops": ", ".join(f"{op} x{n}" for op, n in kernels["float_ops"].items()) or "-",
                             **row})
            for runtime, pair, pair_batches in _edge_pairs(out, folder, log):
                for row in time_pair(*pair, REAL_SHAPE, pair_batches, seconds=seconds, threads=threads, warmup=20,
                                     runtime=runtime):
                    rows.append({"model": label, "runtime": EDGE_INT8[runtime], "integer_ops": "-",
                                 "float_ops": "-", **row})
    return rows


# How the edge runtimes get their int8 model: OpenVINO reads compactify's QDQ file itself (its low-precision
# transformations turn the Q/DQ pairs into int8 kernels); ExecuTorch's is quantized by the PT2E flow with
# XNNPACK's own quantizer, since XNNPACK takes the graph that flow writes, not an ONNX file.
EDGE_INT8 = {"openvino": "OpenVINO CPU (IR of compact.int8.onnx)",
             "executorch": "ExecuTorch XNNPACK (PT2E XNNPACKQuantizer, per channel)"}


def _edge_pairs(out: Path, folder: Path, log) -> list[tuple[str, tuple[Path, Path], list[int]]]:
    """(runtime, (fp32 file, int8 file), batches) for each edge runtime installed here."""
    from compactify.optional import available

    pairs = []
    if available("openvino"):
        from compactify.targets.openvino import write_ir

        files = []
        for name in ("compact.onnx", "compact.int8.onnx"):
            xml = folder / name.replace(".onnx", ".xml")
            write_ir(out / name, xml)
            files.append(xml)
        pairs.append(("openvino", tuple(files), [1, 8]))
    else:
        log("OpenVINO is not installed here (pip install compactify[edge]): no OpenVINO int8 row")
    if available("executorch"):
        pairs.append(("executorch", _pte_pair(out, folder), [1]))  # a .pte is lowered at one batch
    else:
        log("ExecuTorch is not installed here (pip install compactify[edge]): no XNNPACK int8 row")
    return pairs


def _pte_pair(out: Path, folder: Path) -> tuple[Path, Path]:
    """compact.pt2 lowered for XNNPACK at batch 1 as it is, and quantized to int8 by the PT2E flow with
    XNNPACK's quantizer (per-channel symmetric weights), calibrated on the conversion's calibration inputs."""
    import numpy as np
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from compactify.targets.pte import lower_to_xnnpack

    module = torch.export.load(str(out / "compact.pt2")).module()
    example = torch.randn(1, *REAL_SHAPE[1:], generator=torch.Generator().manual_seed(0))
    fp32 = folder / "compact.pte"
    fp32.write_bytes(lower_to_xnnpack(module, example).buffer)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    calibration = np.load(folder / "calibration.npz")["x"]
    with torch.no_grad():
        for x in calibration:
            prepared(torch.from_numpy(x[None]))
    int8 = folder / "compact.int8.pte"
    int8.write_bytes(lower_to_xnnpack(convert_pt2e(prepared), example).buffer)
    return fp32, int8


def run(configs: Sequence[Config], *, quick: bool, batches: Sequence[int], seconds: float, threads: int,
        exporter: str, log=print) -> dict[str, list[dict]]:
    accuracy, latency = [], []
    with tempfile.TemporaryDirectory(prefix="compactify-int8-") as tmp:
        for i, config in enumerate(configs):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            t = time.perf_counter()
            ckpt, acc = train_checkpoint(config, folder)
            log(f"{config.name}: trained {config.epochs} epochs on digits, test accuracy {acc:.4f} "
                f"({time.perf_counter() - t:.0f} s); quantizing")
            built = quantize_variants(ckpt, folder, exporter)
            report = built["report"]
            for row in built["rows"]:
                accuracy.append({"model": config.name, "params": report["params_after"], **row})
            log(f"{config.name}: timing fp32 compact vs int8")
            for row in time_pair(Path(built["fp32"]), Path(built["paths"]["merged per-channel"]), built["input_shape"],
                                 batches, seconds=seconds, threads=threads, warmup=5 if quick else 20):
                latency.append({"model": config.name, **row})
    return {"accuracy": accuracy, "latency": latency}


def _accuracy_columns():
    from compactify.harness.report import Column

    return [Column("model"), Column("variant"), Column("accuracy_fp32", "fp32 acc", ".4f"),
            Column("accuracy", "int8 acc", ".4f"), Column("agreement", "top-1 agree w/ fp32", ".4f"),
            Column("max_rel", "max err / scale", ".3g"), Column("clipped", "outputs clipped", ".2%"),
            Column("worst_layer", "layer adding most error"),
            Column("int8_layers", "int8 layers"), Column("kept_in_float", "kept in float")]


def _latency_columns(kernels: bool = False):
    from compactify.harness.report import Column

    extra = [Column("runtime"), Column("integer_ops", "integer ops"), Column("float_ops", "in float")] if kernels else []
    return [Column("model"), *extra, Column("batch"), Column("fp32_ms", "fp32 compact p50 ms", ".3f"),
            Column("int8_ms", "int8 p50 ms", ".3f"), Column("speedup", "fp32 / int8 (p50)", ".2f"),
            Column("speedup_paired", "fp32 / int8 (paired)", ".2f"), Column("rounds"),
            Column("max_cv", "max CV", ".0%")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small nets, 3 epochs, 1.5 s of timing per batch")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op (and torch) threads (default 1)")
    parser.add_argument("--seconds", type=float, default=None, help="timing per batch size (default 10; quick 1.5)")
    parser.add_argument("--batches", default="1,32", help="comma-separated batch sizes")
    parser.add_argument("--exporter", default=None, choices=["auto", "dynamo", "torchscript"],
                        help="ONNX exporter of the unmerged network (default auto; quick: torchscript)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--sizes-only", action="store_true", help="only the real-size latency table (224x224)")
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    seconds = args.seconds or (1.5 if args.quick else 10.0)
    exporter = args.exporter or ("torchscript" if args.quick else "auto")
    configs = QUICK if args.quick else FULL

    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    print(machine_line(info))
    t = time.perf_counter()
    rows = ({"accuracy": [], "latency": []} if args.sizes_only else
            run(configs, quick=args.quick, batches=batches, seconds=seconds, threads=args.threads, exporter=exporter))
    real_batches = [1, 8]
    rows["real_sizes"] = [] if args.quick else run_real_sizes(batches=real_batches, seconds=seconds,
                                                              threads=args.threads)
    wall = time.perf_counter() - t
    if rows["accuracy"]:
        print_table(rows["accuracy"], _accuracy_columns(),
                    "INT8 on the 360 held-out digits test images (calibrated on 256 training images, MinMax)")
        print_table(rows["latency"], _latency_columns(),
                    f"ONNX Runtime CPU, {args.threads} thread(s): fp32 compact vs int8 (merged, per-channel), interleaved")
    if rows["real_sizes"]:
        print_table(rows["real_sizes"], _latency_columns(kernels=True),
                    f"At 224x224, {args.threads} thread(s): fp32 compact vs int8 on each runtime, interleaved")
    info_after = machine()
    print(f"load average after: {', '.join(f'{v:.1f}' for v in info_after['loadavg_1_5_15'])}; wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "threads": args.threads, "seconds": seconds, "batches": batches,
                "exporter": exporter, "configs": [dataclasses.asdict(c) for c in configs]}
    md = "\n".join([
        "## INT8 on ONNX Runtime CPU" + (" (--quick)" if args.quick else ""), "", f"Machine: {machine_line(info)}", "",
        f"Settings: {json.dumps(settings)}", "", markdown_table(rows["accuracy"], _accuracy_columns()), "",
        markdown_table(rows["latency"], _latency_columns()), "",
        markdown_table(rows["real_sizes"], _latency_columns(kernels=True)) if rows["real_sizes"] else "",
    ])
    payload = {"machine": info, "machine_after": info_after, "settings": settings, **rows, "wall_s": wall}
    written = write_results("int8-quick" if args.quick else ("int8-sizes" if args.sizes_only else "int8"), payload, md, args.out or RESULTS)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
