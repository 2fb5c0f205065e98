"""The compact network on each edge runtime: what contraction is worth where it ships.

None of these runtimes merges what compactify merges: XNNPACK's passes fuse BatchNorm, padding
and activations, OpenVINO folds BatchNorm, Mul and Add into a conv, ONNX Runtime fuses Conv+BN;
none merges a conv chain or sums parallel branches. So for each model, each runtime gets:

- the expanded (training-time) network, handed to the runtime as it is, with that runtime's own
  optimizer (ONNX Runtime at ORT_ENABLE_ALL; OpenVINO's conversion and CPU plugin transformations;
  ExecuTorch's edge passes and the XNNPACK partitioner; litert-torch's conversion, run by LiteRT's
  interpreter with its XNNPACK delegate);
- compactify's compact network, built the way ``convert`` builds each target (compact.onnx; the
  IR from it; the .pte and .tflite lowered from the compact network at a static shape);
- for timm's RepVGG-A0, the family's own deploy form (``timm.utils.model.reparameterize_model``).

Models: SmallNet-7 CL (rate 4) at 32x32, MobileNetV2 CL (rate 4) at 224x224 (random weights and
BatchNorm statistics: latency does not depend on what was learnt), timm RepVGG-A0 at 224x224.
Every candidate of one model on every runtime is timed interleaved in one run (batch 1; threads
pinned: ONNX Runtime intra-op, OpenVINO INFERENCE_NUM_THREADS, ExecuTorch's XNNPACK pool, LiteRT's
interpreter, torch), and quoted as ratios of
medians: ``expanded / compact`` (what contraction buys on that runtime) beside the same ratio on
ONNX Runtime, and ``deploy / compact`` (ours against the family's own conversion).
Each artifact is also checked against the source in float64 before it is timed.

    python benchmarks/edge_targets.py            # 5 s of timing per model and runtime set
    python benchmarks/edge_targets.py --quick    # SmallNet-7 only, 1 s
Results: benchmarks/results/edge_targets{,-quick}.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import _common  # noqa: F401  (puts the repository on sys.path)
from _common import RESULTS, machine, machine_line, print_table, randomize_batchnorm, write_results

RUNTIMES = ("ort", "openvino", "executorch", "litert")
RUNTIME_NAMES = {"ort": "ONNX Runtime", "openvino": "OpenVINO CPU (fp32)", "executorch": "ExecuTorch XNNPACK",
                 "litert": "LiteRT (XNNPACK)"}
_PACKAGES = {"openvino": "openvino", "executorch": "executorch", "litert": "litert_torch"}


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    source: str  # "registry" or "timm"
    model: str  # registry arch or timm name
    mode: str | None  # expansion of a registry model
    size: int


CONFIGS = (
    Config("SmallNet-7 CL (rate 4) @32", "registry", "smallnet7", "cl", 32),
    Config("MobileNetV2 CL (rate 4) @224", "registry", "mobilenetv2", "cl", 224),
    Config("RepVGG-A0 (timm) @224", "timm", "repvgg_a0", None, 224),
)


def models(config: Config, seed: int = 0):
    """(expanded network, the family's deploy network or None, input shape), in eval mode."""
    import torch

    shape = (1, 3, config.size, config.size)
    if config.source == "registry":
        from compactify.models import build_model

        torch.manual_seed(seed)
        model = build_model({"arch": config.model, "arch_kwargs": {"input_size": config.size}
                             if config.model == "smallnet7" else {}, "expand": config.mode, "rate": 4})
        randomize_batchnorm(model.eval(), seed)
        return model.eval(), None, shape
    from tests.families.public import timm

    tm = timm()
    torch.manual_seed(seed)
    model = tm.create_model(config.model, pretrained=False, num_classes=1000).eval()
    randomize_batchnorm(model, seed)
    return model, tm.utils.model.reparameterize_model(copy.deepcopy(model)).eval(), shape


def _quiet() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    return stack


def build_onnx(module, example, path: Path) -> Path:
    from compactify.converter.backends.onnx_export import export_onnx
    from compactify.converter.frontends.fx.capture import capture_graph

    with _quiet():
        # Every network through the same exporter (the fx writer on a captured graph), as convert does.
        export_onnx(capture_graph(module, example), example, path)
    return path


def build_ir(onnx_path: Path, path: Path) -> Path:
    """The IR from the ONNX file, as compactify's openvino target builds it (fp32 weights)."""
    from compactify.targets.openvino import write_ir

    write_ir(onnx_path, path)
    return path


def build_pte(module, example, path: Path) -> Path:
    """The .pte as compactify's executorch target lowers it (static shape, XNNPACK partitioner)."""
    from compactify.targets.pte import lower_to_xnnpack

    path.write_bytes(lower_to_xnnpack(module, example).buffer)
    return path


def build_tflite(module, example, path: Path) -> Path:
    """The .tflite as compactify's litert target converts it."""
    from compactify.targets.tflite import convert_to_tflite

    path.write_bytes(convert_to_tflite(module, example))
    return path


def build_all(config: Config, folder: Path, runtimes: Sequence[str]) -> dict[str, Any]:
    """Every variant's artifact for every runtime, each checked against the source in float64."""
    import numpy as np
    import torch

    from compactify.converter.frontends.fx.check import float64_forward
    from compactify.converter.pipeline.contraction import contract
    from compactify.runtimes import open_runner

    expanded, deployed, shape = models(config)
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    t = time.perf_counter()
    with _quiet():
        result = contract(expanded, shape)
    contract_s = time.perf_counter() - t
    variants = {"expanded": expanded, "compact": result.compact}
    if deployed is not None:
        variants["deploy"] = deployed
    with torch.no_grad():
        reference = float64_forward(expanded, example)[0][0].numpy()
    paths: dict[tuple[str, str], Path] = {}
    errors: dict[str, float] = {}
    for variant, module in variants.items():
        onnx_path = build_onnx(module, example, folder / f"{variant}.onnx")
        for runtime in runtimes:
            if runtime == "ort":
                paths[variant, runtime] = onnx_path
            elif runtime == "openvino":
                paths[variant, runtime] = build_ir(onnx_path, folder / f"{variant}.xml")
            elif runtime == "executorch":
                paths[variant, runtime] = build_pte(module, example, folder / f"{variant}.pte")
            else:
                paths[variant, runtime] = build_tflite(module, example, folder / f"{variant}.tflite")
            with open_runner(paths[variant, runtime], runtime=runtime) as runner:
                out = next(iter(runner.infer({runner.inputs[0].name: example.numpy()}).values()))
            errors[f"{variant} {runtime}"] = float(np.abs(out - reference).max() / np.abs(reference).max())
    return {"paths": paths, "shape": shape, "errors": errors, "contract_s": contract_s,
            "params": {"expanded": result.params_before, "compact": result.params_after},
            "variants": list(variants)}


def time_all(built: dict[str, Any], runtimes: Sequence[str], *, seconds: float, threads: int,
             warmup: int) -> dict[tuple[str, str], float]:
    """Every (variant, runtime) of one model, interleaved in one run; p50 ms of each."""
    import numpy as np

    from compactify.measure.latency import Candidate, compare_latency, pinned_threads
    from compactify.runtimes import open_runner, thread_options

    x = np.random.default_rng(0).standard_normal(built["shape"]).astype(np.float32)
    runners, candidates = {}, []
    try:
        for (variant, runtime), path in built["paths"].items():
            options = thread_options(runtime, threads)
            if runtime == "ort":
                options["graph_optimization_level"] = "all"
            runner = runners[variant, runtime] = open_runner(path, runtime=runtime, **options)
            candidates.append(Candidate(f"{variant} {runtime}", runner.bind({runner.inputs[0].name: x}),
                                        runner.synchronize, "cpu", 1))
        with pinned_threads(threads):
            result = compare_latency(candidates, warmup=warmup, seconds=seconds * len(candidates), baseline=0,
                                     progress=False, description="batch 1")
    finally:
        for runner in runners.values():
            runner.close()
    return {key: result.by_label(f"{key[0]} {key[1]}").p50_ms for key in built["paths"]} | {
        ("rounds", ""): result.rounds, ("max_cv", ""): max(s.cv for s in result.stats)}


def rows_of(config: Config, built: dict[str, Any], p50: dict, runtimes: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    ort_ratio = p50["expanded", "ort"] / p50["compact", "ort"] if "ort" in runtimes else None
    for runtime in runtimes:
        row = {"model": config.name, "runtime": RUNTIME_NAMES[runtime],
               "expanded_ms": p50["expanded", runtime], "compact_ms": p50["compact", runtime],
               "speedup": p50["expanded", runtime] / p50["compact", runtime], "speedup_ort": ort_ratio,
               "deploy_ms": p50.get(("deploy", runtime)),
               "deploy_ratio": (p50["deploy", runtime] / p50["compact", runtime]
                                if ("deploy", runtime) in p50 else None),
               "compact_error": built["errors"][f"compact {runtime}"],
               "rounds": p50["rounds", ""], "max_cv": p50["max_cv", ""]}
        rows.append(row)
    return rows


def available_runtimes(requested: Sequence[str], log: Callable[[str], None]) -> list[str]:
    from compactify.optional import available

    out = []
    for runtime in requested:
        if runtime == "ort" or available(_PACKAGES[runtime]):
            out.append(runtime)
        else:
            log(f"{RUNTIME_NAMES[runtime]}: not installed here (pip install compactify[edge]); its rows are left out")
    return out


def run(configs: Sequence[Config], runtimes: Sequence[str], *, seconds: float, threads: int, warmup: int,
        log=print) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="compactify-edge-") as tmp:
        for i, config in enumerate(configs):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            t = time.perf_counter()
            built = build_all(config, folder, runtimes)
            log(f"{config.name}: built {len(built['paths'])} artifacts in {time.perf_counter() - t:.0f} s "
                f"(contraction {built['contract_s']:.1f} s, {built['params']['expanded']:,} -> "
                f"{built['params']['compact']:,} parameters); worst error against float64 "
                f"{max(built['errors'].values()):.2g}; timing")
            p50 = time_all(built, runtimes, seconds=seconds, threads=threads, warmup=warmup)
            rows.extend(rows_of(config, built, p50, runtimes))
    return rows


def _columns():
    from compactify.harness.report import Column

    return [Column("model"), Column("runtime"), Column("expanded_ms", "expanded p50 ms", ".2f"),
            Column("compact_ms", "compact p50 ms", ".2f"), Column("speedup", "expanded / compact", ".2f"),
            Column("speedup_ort", "same on ORT", ".2f"), Column("deploy_ms", "timm deploy p50 ms", ".2f"),
            Column("deploy_ratio", "deploy / compact", ".2f"), Column("compact_error", "compact rel err", ".1e"),
            Column("rounds"), Column("max_cv", "max CV", ".0%")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="SmallNet-7 only, 1 s of timing per candidate")
    parser.add_argument("--threads", type=int, default=1, help="threads of every runtime (default 1)")
    parser.add_argument("--seconds", type=float, default=None, help="timing per candidate (default 5; quick 1)")
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help="comma-separated: ort,openvino,executorch,litert")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    configs = CONFIGS[:1] if args.quick else CONFIGS

    import torch

    torch.set_num_threads(args.threads)
    info = machine()
    print(machine_line(info))
    runtimes = available_runtimes([r.strip() for r in args.runtimes.split(",") if r.strip()], print)
    t = time.perf_counter()
    rows = run(configs, runtimes, seconds=seconds, threads=args.threads, warmup=5 if args.quick else 20)
    wall = time.perf_counter() - t
    title = f"Batch 1, {args.threads} thread(s), p50 of interleaved rounds: expanded vs compact on each runtime"
    print_table(rows, _columns(), title)
    info_after = machine()
    print(f"load average after: {', '.join(f'{v:.1f}' for v in info_after['loadavg_1_5_15'])}; wall {wall:.0f} s")

    from compactify.harness.report import markdown_table

    settings = {"quick": args.quick, "threads": args.threads, "seconds": seconds, "runtimes": runtimes,
                "configs": [dataclasses.asdict(c) for c in configs]}
    md = "\n".join([f"## {title}" + (" (--quick)" if args.quick else ""), "", f"Machine: {machine_line(info)}", "",
                    f"Settings: {json.dumps(settings)}", "", markdown_table(rows, _columns())])
    payload = {"machine": info, "machine_after": info_after, "settings": settings, "rows": rows, "wall_s": wall}
    written = write_results("edge_targets-quick" if args.quick else "edge_targets", payload, md, args.out or RESULTS)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
