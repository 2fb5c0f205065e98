"""One job of a sweep, run in a worker: convert a checkpoint at one rank budget, then judge every
precision it exported on the held-out data.

It runs wherever Ray puts it, so it needs nothing from the driver's disk: the checkpoint arrives
as bytes (and a ``--data`` file as arrays) and the artifacts go back as bytes, which the driver
writes into the sweep's folder. Any error becomes the job's one-line result, so one bad budget
(``flops:0.3`` out of reach, say) never stops the rest of the sweep.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compactify.converter.load.checkpoint import load_checkpoint
from compactify.converter.load.ingest import build_source
from compactify.converter.lowrank.rule_syntax import UNTRUNCATED
from compactify.converter.pipeline.convert import convert_checkpoint
from compactify.converter.pipeline.options import ConvertOptions
from compactify.errors import CompactifyError, first_line, one_line
from compactify.harness.sweep.evaluation import DIGITS, PREDICT_BATCH, EvalData, load_eval_data, predict, scores
from compactify.harness.sweep.grid import convert_flags, precision_target
from compactify.runtimes import thread_options
from compactify.targets import Target


@dataclasses.dataclass
class JobSpec:
    """What a worker needs besides the checkpoint's bytes (plain data: it travels through Ray)."""

    id: str
    checkpoint_name: str
    budget: str
    precisions: tuple[str, ...]
    runtime: str
    data: str  # "digits" or "file" (the arrays come with the job)
    arch: str | None = None
    arch_kwargs: dict | None = None
    input_shape: tuple[int, ...] | None = None
    calibration: bool = False  # an int8 calibration file comes with the job
    threads: int = 1


def run_job(spec: JobSpec, checkpoint: bytes, data: EvalData | None = None,
            calibration: bytes | None = None) -> dict[str, Any]:
    """The job's result: ``status`` ok or failed (with ``error``, one line), its artifacts' bytes, and
    per precision the accuracy and top-1 agreement on the held-out data."""
    start = time.perf_counter()
    torch.set_num_threads(spec.threads)  # a worker shares its node with the others
    try:
        with tempfile.TemporaryDirectory(prefix="compactify-sweep-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _convert_and_judge(spec, checkpoint, data, calibration, Path(tmp))
    except Exception as exc:  # the job's failure, reported whole in its row: never cut mid-word
        error = one_line(exc) if isinstance(exc, CompactifyError) else \
            f"{type(exc).__name__}: {first_line(exc, limit=None)}"
        result = {"status": "failed", "error": error}
    result.update(id=spec.id, seconds=round(time.perf_counter() - start, 2))
    return result


def _convert_and_judge(spec: JobSpec, checkpoint: bytes, data: EvalData | None, calibration: bytes | None,
                       tmp: Path) -> dict[str, Any]:
    ckpt_path = tmp / spec.checkpoint_name
    ckpt_path.write_bytes(checkpoint)
    cal_path = None
    if calibration is not None:
        cal_path = tmp / "calibration.npz"
        cal_path.write_bytes(calibration)
    timed = {precision_target(p, spec.runtime).name for p in spec.precisions}  # the artifacts the points need
    options = ConvertOptions(arch=spec.arch, arch_kwargs=spec.arch_kwargs, input_shape=spec.input_shape,
                             rank=None if spec.budget == UNTRUNCATED else spec.budget,
                             int8_calibration=str(cal_path) if cal_path else None,
                             **convert_flags(spec.precisions, spec.runtime))
    out = tmp / "conversion"
    report = convert_checkpoint(ckpt_path, out, options)
    shape = tuple(int(d) for d in report["input_shape"])
    if data is None:
        data = load_eval_data(DIGITS, shape)
    reference = predict(_source_runner(ckpt_path, spec), data.x)
    source_accuracy = float(np.mean(reference == data.labels)) if data.labels is not None else None
    points = []
    for precision in spec.precisions:
        target = precision_target(precision, spec.runtime)
        artifact = report["artifacts"][target.name]
        preds = _artifact_predictions(target, out / artifact, spec, data.x)
        points.append({"precision": precision, "artifact": artifact, "source_accuracy": source_accuracy,
                       **scores(preds, reference, data.labels)})
    truncation = report.get("truncation") or {}
    batch = max(2, shape[0])  # the converter counts FLOPs at its example batch (at least 2)
    return {
        "status": "ok",
        "input_shape": list(shape),
        "params": report["params_after"],
        "params_source": report["params_before"],
        "flops": report["flops_after"] // batch,
        "flops_source": report["flops_before"] // batch,
        "flops_ratio": truncation.get("flops_ratio", 1.0),
        "truncation_error": (truncation.get("output_error") or {}).get("max_rel_error"),
        "warnings": report["warnings"],
        "data": data.what,
        "points": points,
        "files": {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()},
        "source_checkpoint": str(ckpt_path.resolve()),  # report.json names it; the driver puts the real path
    }


def _source_runner(path: Path, spec: JobSpec):
    """The untruncated source network (float32, torch): the reference of top-1 agreement."""
    model = build_source(load_checkpoint(path), spec.arch, spec.arch_kwargs, spec.input_shape).model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x)))
        return (out[0] if isinstance(out, (tuple, list)) else out).numpy()

    return run


def _artifact_predictions(target: Target, path: Path, spec: JobSpec, x: np.ndarray) -> np.ndarray:
    """Top-1 classes of ``x`` from the artifact itself, on the runtime the sweep times it on."""
    opts = thread_options(spec.runtime, spec.threads)  # torch's: set_num_threads
    with target.open(path, **opts) as runner:
        name, shape = runner.inputs[0].name, runner.inputs[0].shape
        fixed = shape[0] if shape and shape[0] is not None else None  # a .pte is lowered at one batch

        def run(batch: np.ndarray) -> np.ndarray:
            n = len(batch)
            if fixed is not None and n < fixed:  # the last chunk, padded to the artifact's batch
                batch = np.concatenate([batch, np.zeros((fixed - n, *batch.shape[1:]), batch.dtype)])
            return next(iter(runner.infer({name: np.ascontiguousarray(batch)}).values()))[:n]

        return predict(run, x, batch=fixed or PREDICT_BATCH)
