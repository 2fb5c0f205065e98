"""Benchmark models: load each on its runtime, time them interleaved per batch size, compare.

The Python API behind ``compactify bench``. Each model is an artifact of a registered target
(``compactify.targets``: a .pt2 on torch, an .onnx on ONNX Runtime, a TensorRT engine, ...), opened
through its target, or a checkpoint (.pt/.pth/.bin/.ckpt/.safetensors) that is rebuilt from its
metadata and run on the torch runtime (``harness.model_files``). All models of one batch size run
round-robin (see ``latency``), on one pinned thread unless asked, and each is quoted as how many times
faster than the first it is (the first's p50 over its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from compactify import __version__
from compactify.arguments import existing_file, parse_batches, parse_input_shape
from compactify.converter.load.checkpoint import load_checkpoint
from compactify.converter.load.input_fit import check_declared_dims, check_input_fits
from compactify.errors import BadInputError
from compactify.harness.devices import device_for, only_device
from compactify.harness.machine import machine_info, machine_summary
from compactify.harness.model_files import (
    CHECKPOINT,
    is_checkpoint,
    model_target,
    runtime_mismatch,
)
from compactify.harness.report import Column, markdown_table
from compactify.measure.latency import (
    DEFAULT_WARMUP,
    Candidate,
    InterleavedResult,
    compare_latency,
    pinned_threads,
)
from compactify.models import build_model, default_input_shape
from compactify.runtimes import RUNTIMES, Runner, open_runner, thread_options
from compactify.targets import Target

DEVICES = ("cpu", "cuda")

# One thread unless asked: a second thread on a busy machine waits on the first far longer than it computes
# (a torch p50 of 689 ms against 27 ms quiet), and `train` and `demo` use one too.
DEFAULT_THREADS = 1

# Without --wide the terminal shows the median, its spread and the speed-up; --wide adds the rest.
BENCH_COLUMNS = [
    Column("model"),
    Column("runtime"),
    Column("device", wide=True),
    Column("batch"),
    Column("p50_ms", "p50 ms", ".3f"),
    Column("p90_ms", "p90", ".3f"),
    Column("p99_ms", "p99", ".3f", wide=True),
    Column("mean_ms", "mean", ".3f", wide=True),
    Column("std_ms", "std", ".3f", wide=True),
    Column("cv", "CV", ".1%"),
    Column("throughput", "items/s", ",.1f", wide=True),
    Column("speedup", "faster than first", lambda v: f"{v:.2f}x"),  # the first's p50 over this p50: "4.90x"
]


@dataclasses.dataclass
class BenchModel:
    """One model to time: where it is, which runtime runs it, the name it gets in tables."""

    path: Path
    runtime: str
    label: str
    target: Target | None = None  # None: a checkpoint, rebuilt from its metadata
    precision: str | None = None  # the compute precision, where its runtime lets it be chosen (OpenVINO)

    @property
    def kind(self) -> str:
        return self.target.name if self.target is not None else "checkpoint"


def resolve_models(paths: Sequence[str | Path], runtime: str | None = None,
                   precisions: Sequence[str] = ()) -> list[BenchModel]:
    """Check files and runtimes; ``runtime=None`` picks each file's own runtime from its suffix. A model
    whose runtime can also compute at one of ``precisions`` (OpenVINO at bf16) is timed once more at it."""
    if not paths:
        raise BadInputError("give at least one MODEL file to benchmark")
    if runtime is not None and runtime not in RUNTIMES:
        raise BadInputError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
    models = []
    for p in paths:
        path = Path(p)
        existing_file(path, "model file")
        target = None if is_checkpoint(path) else model_target(path, f"cannot benchmark {path.name}")
        native = target.runtime if target is not None else CHECKPOINT.runtime
        chosen = runtime or native
        if chosen != native:
            raise BadInputError(runtime_mismatch(path, chosen))
        extra = [p for p in precisions if target is not None and p in target.extra_precisions]
        default = target.precision if target is not None and target.extra_precisions else None
        models.append(BenchModel(path, chosen, "", target, default))
        models += [BenchModel(path, chosen, "", target, p) for p in extra]
    _assign_labels(models)
    return models


def _assign_labels(models: list[BenchModel]) -> None:
    """File names when they are distinct, else paths, else numbered: labels must be unique. A model whose
    runtime lets the precision be chosen says it: "compact.xml (bf16)"."""
    def precision(m: BenchModel) -> str:
        return f" ({m.precision})" if m.precision else ""

    for m in models:
        m.label = m.path.name + precision(m)
    if len({m.label for m in models}) < len(models):
        for m in models:
            m.label = str(m.path) + precision(m)
    seen: dict[str, int] = {}
    for m in models:
        if m.label in seen:
            seen[m.label] += 1
            m.label = f"{m.label}#{seen[m.label]}"
        else:
            seen[m.label] = 1


@dataclasses.dataclass
class _Loaded:
    model: BenchModel
    runner: Runner
    shape_hint: tuple[int, ...] | None  # dims after the batch from checkpoint metadata


def _open(model: BenchModel, device: str, threads: int | None, trust_pickle: bool,
          full_shape: tuple[int, ...] | None) -> tuple[Runner, tuple[int, ...] | None]:
    """The model's loaded runner, and for a checkpoint the input dims its metadata gives (``full_shape``:
    --input-shape, N,C,H,W, checked against the checkpoint's network)."""
    input_shape = full_shape[1:] if full_shape else None
    if model.target is None:
        module, hint = _module_from_checkpoint(model.path, trust_pickle)
        if full_shape:
            check_input_fits(module, full_shape, (full_shape[0], *hint) if hint else None)
        shape = input_shape or hint
        opts = {"input_shape": (None, *shape)} if shape else {}
        return open_runner(module, runtime=CHECKPOINT.runtime, device=device, **opts), shape
    opts: dict[str, Any] = thread_options(model.runtime, threads)  # torch's are pinned process-wide (pinned_threads)
    if model.precision in model.target.extra_precisions:
        opts["precision"] = model.precision
    return model.target.open(model.path, device=device_for(model.runtime, device), **opts), None


def _module_from_checkpoint(path: Path, trust_pickle: bool) -> tuple[torch.nn.Module, tuple[int, ...] | None]:
    """Rebuild the network a checkpoint stands for, weights loaded, in eval mode."""
    ckpt = load_checkpoint(path, trust_pickle=trust_pickle)
    meta = ckpt.meta or {}
    shape = meta.get("input_shape")
    hint = tuple(int(d) for d in shape[1:]) if shape else None
    if ckpt.module is not None:  # a whole pickled module, loaded because the user trusts it
        module = ckpt.module
    else:
        if not meta.get("arch"):
            raise BadInputError(
                f"checkpoint {path} has no compactify metadata naming its architecture; benchmark its .pt2 or .onnx export instead"
            )
        module = build_model(meta)
        try:
            module.load_state_dict(ckpt.state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BadInputError(f"checkpoint {path} does not fit the architecture in its metadata: {first}") from None
        if hint is None:
            full = default_input_shape(meta)
            hint = tuple(full[1:]) if full else None
    module.eval()
    return module, hint


def make_feeds(specs, batch: int, input_shape: tuple[int, ...] | None, label: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs that fit ``specs`` at ``batch``; dynamic dims after the batch come from ``input_shape``."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for k, spec in enumerate(specs):
        if k == 0 and input_shape is not None and spec.shape:  # a fixed size is never silently kept
            check_declared_dims(spec.shape, (batch, *input_shape), f"{label}'s input {spec.name!r}")
        if spec.shape is None:
            if input_shape is None:
                raise BadInputError(f"{label}: the rank of input {spec.name!r} is unknown; pass --input-shape N,C,H,W")
            dims = (batch, *input_shape)
        else:
            if not spec.shape:
                raise BadInputError(f"{label}: input {spec.name!r} is a scalar; bench needs a batched input")
            first = spec.shape[0]
            if first is not None and first != batch:
                raise BadInputError(
                    f"{label}: input {spec.name!r} has a fixed batch of {first}; re-export it with a dynamic batch or use --batch {first}"
                )
            rest = list(spec.shape[1:])
            if any(d is None for d in rest):
                if input_shape is None or len(input_shape) != len(rest):
                    raise BadInputError(
                        f"{label}: input {spec.name!r} has dynamic dims {spec.describe()}; pass --input-shape N,... with "
                        f"{len(rest)} dims after the batch N"
                    )
                rest = [d if d is not None else s for d, s in zip(rest, input_shape)]
            dims = (batch, *rest)
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[spec.name] = np.zeros(dims, dtype=dtype)  # index-like inputs: 0 is always in range
    return feeds


@dataclasses.dataclass
class BenchResult:
    """Rows for tables (one per model and batch) and the interleaved runs behind them."""

    rows: list[dict[str, Any]]
    runs: dict[int, InterleavedResult]
    settings: dict[str, Any]
    machine: dict[str, Any]
    warnings: list[str]

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        return {
            "compactify_version": __version__,
            "machine": self.machine,
            "settings": self.settings,
            "rows": self.rows,
            "runs": {str(b): r.to_dict(samples=samples) for b, r in self.runs.items()},
            "warnings": self.warnings,
        }


def bench(
    models: Sequence[str | Path],
    *,
    runtime: str | None = None,
    device: str | None = None,
    batches: Sequence[int] | str | None = None,
    threads: int | None = DEFAULT_THREADS,
    warmup: int = DEFAULT_WARMUP,
    iters: int | None = None,
    seconds: float | None = None,
    input_shape: Sequence[int] | str | None = None,
    trust_pickle: bool = False,
    progress: bool | None = None,
    rotate: bool = True,
    seed: int = 0,
    precisions: Sequence[str] = (),
) -> BenchResult:
    """Time every model at every batch size, interleaved, and compare each with the first.

    ``device=None`` means cuda when a TensorRT engine is among the models, else cpu. ``input_shape`` is
    N,C,H,W as in every command (its dims after the batch fill the models' dynamic dims; N is the batch
    when ``batches`` is not given).
    ``iters`` rounds (each model once per round) or ``seconds`` of rounds per batch size. ``threads``:
    the intra-op threads of torch and of every runtime with its own setting (ONNX Runtime, OpenVINO,
    ExecuTorch's XNNPACK pool, LiteRT; None: leave them as they are). ``precisions`` (bf16): each model
    whose runtime can compute at one is timed once more at it, a row of its own. ``progress``: True/False
    forces the progress bar on/off; None shows it on a terminal and, off one, writes a line per batch
    and per model timed to stderr, so that a log shows a long run moving.
    """
    if device is not None and device not in DEVICES:
        raise BadInputError(f"unknown device {device!r}; use cpu or cuda")
    if threads is not None and threads < 1:
        raise BadInputError(f"--threads must be >= 1, got {threads}")
    # N,C,H,W like every command (N is the default batch); an empty --input-shape is a mistake here, not "no shape"
    full_shape = parse_input_shape(input_shape, empty_ok=False)
    shape = full_shape[1:] if full_shape else None
    if batches is None:
        batches = (full_shape[0],) if full_shape else (1,)
    batch_list = parse_batches(batches)
    resolved = resolve_models(models, runtime, precisions)
    if device is None:  # a model whose runtime runs on one device only (TensorRT: cuda) sets it; else cpu
        device = next((d for m in resolved if (d := only_device(m.runtime))), "cpu")
    if iters is not None and seconds is not None:
        raise BadInputError("give either --iters or --seconds, not both")

    rows: list[dict[str, Any]] = []
    runs: dict[int, InterleavedResult] = {}
    warnings: list[str] = []
    lines = progress is None and not sys.stderr.isatty()
    with contextlib.ExitStack() as stack, pinned_threads(threads):
        loaded = []
        for m in resolved:
            runner, hint = _open(m, device, threads, trust_pickle, full_shape)
            stack.enter_context(runner)
            loaded.append(_Loaded(m, runner, hint))
        machine = machine_info()  # after loading: torch threads are pinned by now
        for batch in batch_list:
            candidates = []
            for item in loaded:
                feeds = make_feeds(item.runner.inputs, batch, shape or item.shape_hint, item.model.label, seed)
                fn = item.runner.bind(feeds)
                candidates.append(Candidate(item.model.label, fn, item.runner.synchronize, item.runner.device, batch))
            if lines:
                _progress_line(f"batch {batch}: timing {len(candidates)} model(s) interleaved")
            result = compare_latency(
                candidates,
                warmup=warmup,
                iters=iters,
                seconds=seconds,
                rotate=rotate,
                progress=progress,
                description=f"batch {batch}",
            )
            runs[batch] = result
            warnings.extend(result.warnings)
            for item, stats in zip(loaded, result.stats):
                row = {
                    "model": item.model.label,
                    "path": str(item.model.path),
                    "runtime": item.model.runtime,
                    "precision": item.runner.precision,
                    "device": item.runner.device,
                    **stats.to_dict(),
                    "ratio": result.ratios_p50[stats.label],
                    "ratio_paired": result.ratios_paired[stats.label],
                    "speedup": result.stats[0].p50_ms / stats.p50_ms if stats.p50_ms > 0 else math.nan,
                }
                row.pop("label")
                rows.append(row)
                if lines:
                    speed = "the first" if item is loaded[0] else f"{row['speedup']:.2f}x faster than first"
                    _progress_line(f"batch {batch}: {row['model']} ({row['runtime']}) p50 {row['p50_ms']:.3f} ms, {speed}")
    settings = {
        "models": [str(m.path) for m in resolved],
        "runtimes": [m.runtime for m in resolved],
        "precisions": [m.precision for m in resolved],
        "device": device,
        "batches": batch_list,
        "threads": threads,
        "warmup": warmup,
        "iters": iters,
        "seconds": seconds,
        "input_shape": list(full_shape) if full_shape else None,
        "rotate": rotate,
        "seed": seed,
        "baseline": resolved[0].label,
    }
    return BenchResult(rows=rows, runs=runs, settings=settings, machine=machine, warnings=warnings)


def _progress_line(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def bench_header(result: BenchResult) -> str:
    """The line above the table: the machine, and the threads the models were timed on."""
    threads = result.settings["threads"]
    pinned = f"{threads} thread{'' if threads == 1 else 's'} per model (--threads)" if threads else "threads unpinned"
    return f"{machine_summary(result.machine)}; timed on {pinned}"


def markdown_report(result: BenchResult) -> str:
    """The bench table in Markdown, with the machine and settings it was measured with."""
    s = result.settings
    budget = f"{s['seconds']} s" if s["seconds"] is not None else f"{s['iters'] or 'default'} iterations"
    lines = [
        "## compactify bench",
        "",
        f"Machine: {machine_summary(result.machine)}",
        "",
        f"Settings: warm-up {s['warmup']}, {budget}, threads {s['threads'] or 'default'}, "
        f"interleaved{' with rotation' if s['rotate'] else ''}; faster than first = p50 of {s['baseline']} / p50.",
        "",
        markdown_table(result.rows, BENCH_COLUMNS),
    ]
    if result.warnings:
        lines += ["Warnings:", ""] + [f"- {w}" for w in result.warnings] + [""]
    return "\n".join(lines)

