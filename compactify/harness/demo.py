"""The demo: train a small expanded net on the built-in digits, contract it, verify it, time it.

Every step is the public API a user would call: ``models.train``, ``converter.convert_checkpoint``,
``harness.verify.verify_conversion`` and ``harness.bench.bench``. The folder it writes holds the
trained checkpoint, the conversion (compact.pt2, compact.onnx, compact.int8.onnx, report.json),
the expanded model exported the same way (expanded.onnx, for a fair ONNX Runtime comparison) and
the results.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

from compactify.converter.backends.onnx_export import export_onnx
from compactify.converter.load.checkpoint import save_checkpoint
from compactify.converter.pipeline.convert import convert_checkpoint
from compactify.converter.pipeline.options import ConvertOptions
from compactify.errors import BadInputError
from compactify.harness.bench import bench
from compactify.harness.report import write_json
from compactify.harness.verify import verify_conversion
from compactify.measure.latency import pinned_threads
from compactify.models import create_model
from compactify.models.metadata import CheckpointMeta
from compactify.models.train import train

MARKER = "demo.json"  # written first: a folder holding it is the demo's own and may be overwritten


@dataclasses.dataclass
class DemoConfig:
    arch: str = "smallnet7"
    mode: str = "cl"
    rate: int = 4
    input_size: int = 8  # the digits' own resolution
    width: float = 0.5
    hidden: int = 32
    epochs: int = 3
    seed: int = 0
    # One thread: on a small shared machine two OpenMP threads mostly wait for each other
    # (measured: 3 epochs take 17 s on one thread and 125 s on two under load).
    threads: int = 1
    batches: tuple[int, ...] = (1, 32)
    bench_seconds: float = 1.0  # per batch size and runtime
    bench_warmup: int = 5
    int8: bool = True  # also compact.int8.onnx, calibrated on digits, verified and timed on ONNX Runtime

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "width": self.width, "hidden": self.hidden}

    @property
    def input_shape(self) -> list[int]:
        return [1, 3, self.input_size, self.input_size]


@dataclasses.dataclass
class DemoResult:
    out_dir: Path
    config: DemoConfig
    training: dict[str, Any]
    report: dict[str, Any]
    verification: Any  # harness.verify.VerifyResult
    benches: dict[str, Any]  # runtime -> harness.bench.BenchResult
    seconds: dict[str, float]

    def speedups(self) -> list[dict[str, Any]]:
        """Expanded p50 / contracted p50, per runtime and batch size (and, where the int8 model was timed
        too, contracted fp32 p50 / int8 p50)."""
        rows = []
        for runtime, result in self.benches.items():
            for batch, run in result.runs.items():
                expanded, contracted = run.stats[0], run.stats[1]
                row = {
                    "runtime": runtime, "batch": batch,
                    "expanded_ms": expanded.p50_ms, "contracted_ms": contracted.p50_ms,
                    "speedup": expanded.p50_ms / contracted.p50_ms,
                    "speedup_paired": 1.0 / run.ratios_paired[contracted.label],
                }
                if len(run.stats) > 2:
                    int8 = run.stats[2]
                    row.update(int8_ms=int8.p50_ms, int8_speedup=contracted.p50_ms / int8.p50_ms)
                rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "training": self.training,
            "conversion": {k: self.report.get(k) for k in ("params_before", "params_after", "flops_before",
                                                             "flops_after", "max_abs_error", "max_rel_error")},
            "int8": {k: v for k, v in (self.report.get("int8") or {}).items() if k != "layers"} or None,
            "verification": self.verification.to_dict(),
            "bench": {k: v.to_dict(samples=False) for k, v in self.benches.items()},
            "speedups": self.speedups(),
            "seconds": self.seconds,
        }


def prepare_folder(out_dir: str | Path, force: bool = False) -> Path:
    """An empty folder for the demo: a previous demo's folder is replaced, anything else needs ``force``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out} exists and is not a folder; choose another -o")
    real, cwd, home = out.resolve(), Path.cwd().resolve(), Path.home().resolve()
    taken = {real == cwd: "the current folder", real in cwd.parents: "above the current folder",
             real == home: "your home folder", real == Path(real.anchor): "the root folder"}
    if True in taken:  # even --force never empties these
        raise BadInputError(f"-o {out_dir} is {taken[True]}; the demo needs a folder of its own "
                            "(the default is ./compactify-demo)")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file() and not force:
            raise BadInputError(f"{out} exists and is not a compactify demo folder; choose another -o or pass --force")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"status": "running"}) + "\n")
    return out


def run_demo(out_dir: str | Path, config: DemoConfig | None = None, *, force: bool = False, progress: bool = True,
             log: Callable[[str], None] = lambda s: None) -> DemoResult:

    config = config or DemoConfig()
    if config.epochs < 1:
        raise BadInputError(f"--epochs must be >= 1, got {config.epochs}")
    out = prepare_folder(out_dir, force)
    seconds: dict[str, float] = {}
    name = f"{config.arch}-{config.mode}"
    with pinned_threads(config.threads):
        t = time.perf_counter()
        log(f"training {name} (rate {config.rate}, {config.arch_kwargs}) on digits for {config.epochs} epoch(s)")
        torch.manual_seed(config.seed)
        model = create_model(name, rate=config.rate, **config.arch_kwargs)
        trained = train(model, config.epochs, input_shape=config.input_shape, seed=config.seed, progress=progress)
        training = {"dataset": "digits", "epochs": config.epochs, "test_accuracy": trained.test_accuracy,
                    "train_accuracy": trained.train_accuracy, "seed": config.seed, "data_seed": 0,
                    "test_fraction": 0.2, "seconds": trained.seconds}
        meta = CheckpointMeta(arch=config.arch, arch_kwargs=config.arch_kwargs, expand=config.mode, rate=config.rate,
                              layers=None, aux=None, input_shape=config.input_shape, training=training,
                              given=("arch", "arch_kwargs", "expand", "rate", "layers", "aux", "input_shape",
                                     "training"))
        ckpt = save_checkpoint(out / "expanded.safetensors", model.state_dict(), meta)
        seconds["train"] = time.perf_counter() - t

        t = time.perf_counter()
        log("contracting and exporting (compact.pt2, compact.onnx"
            + (", compact.int8.onnx calibrated on digits)" if config.int8 else ")"))
        converted = out / "converted"
        report = convert_checkpoint(ckpt, converted, ConvertOptions(force=True, int8=config.int8))
        # The expanded model through the same exporter and onnxsim: the fair baseline on ONNX Runtime.
        export_onnx(model.eval(), torch.randn(2, *config.input_shape[1:]), out / "expanded.onnx",
                    output_names=report["output_names"])
        seconds["convert"] = time.perf_counter() - t

        t = time.perf_counter()
        log("verifying every artifact against the float64 expanded model")
        verification = verify_conversion(converted)
        seconds["verify"] = time.perf_counter() - t

        t = time.perf_counter()
        log(f"timing expanded vs contracted{' (and int8 on ONNX Runtime)' if config.int8 else ''}, "
            f"batch {', '.join(map(str, config.batches))}, interleaved")
        common = dict(batches=config.batches, threads=config.threads, warmup=config.bench_warmup,
                      seconds=config.bench_seconds, progress=progress)
        benches = {
            "ort": bench([out / "expanded.onnx", converted / report["artifacts"]["onnx"],
                          *([converted / report["artifacts"]["onnx_int8"]] if config.int8 else [])],
                         runtime="ort", **common),
            "torch": bench([ckpt, converted / report["artifacts"]["pt2"]], runtime="torch", **common),
        }
        seconds["bench"] = time.perf_counter() - t
    result = DemoResult(out, config, training, report, verification, benches, seconds)
    write_json(out / "results.json", result.to_dict())
    (out / MARKER).write_text(json.dumps({"status": "done", "seconds": seconds}) + "\n")
    return result
