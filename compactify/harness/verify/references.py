"""What a conversion's artifacts are judged against. The two source formats differ only here: a PyTorch
source is rebuilt and run as a module in float64, an ONNX source is its own graph evaluated in float64
by onnx.reference. Either way the result is a ``Reference``: the float64 reference, the float32
baseline (how close float32 can get), the inputs it takes, and what else the verification must know."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import torch

from compactify.converter.frontends.fx.check import reference_float64
from compactify.converter.frontends.onnx.check import low_precision_outputs
from compactify.converter.frontends.onnx.read import read_onnx
from compactify.converter.frontends.onnx.shapes import graph_inputs
from compactify.errors import BadInputError
from compactify.harness.verify.folder import read_onnx_source, rebuild_source
from compactify.harness.verify.runnable import (
    Runnable,
    onnx_float64_runnable,
    onnx_session_runnable,
    runner_runnable,
    torch_runnable,
)
from compactify.runtimes.base import TensorSpec
from compactify.targets import TARGETS


@dataclasses.dataclass
class Reference:
    """The float64 reference of one conversion and what comes with it."""

    reference: Runnable  # float64: the source, or the truncated network when --rank changed it
    baseline: Runnable  # the source in float32: shown, never judged
    input_names: list[str]
    input_dims: list[tuple[int, ...]]  # per input, the dims after the batch
    input_shape: tuple[int, ...]  # the planned shape of the first input, batch first
    truncated: bool  # judged against the truncated network (report.json has a truncation)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)  # the source's metadata (digits accuracy)
    low_precision: set[str] = dataclasses.field(default_factory=set)  # outputs float16 in the source graph
    module: torch.nn.Module | None = None  # the float32 source module, whose merged regions --per-region checks
    warnings: list[str] = dataclasses.field(default_factory=list)


def conversion_reference(outdir: Path, report: dict, stack: contextlib.ExitStack) -> Reference:
    """The reference of the conversion in ``outdir``, made the way its source format needs."""
    if report["source"].get("format") == "onnx":
        return onnx_reference(outdir, report)
    return pytorch_reference(outdir, report, stack)


def pytorch_reference(outdir: Path, report: dict, stack: contextlib.ExitStack) -> Reference:
    """The source checkpoint rebuilt and run in float64 (float32 when it cannot run in float64)."""
    artifacts = report.get("artifacts") or {}
    model, shape, meta = rebuild_source(report)
    warnings = []
    double = reference_float64(model)
    dtype = "float64"
    if double is None:
        double, dtype = model, "float32"
        warnings.append("the source model does not run in float64: the reference is its float32 run")
    checkpoint = report["source"]["checkpoint"]
    reference = torch_runnable(double, f"expanded {dtype} (reference)", dtype, checkpoint)
    baseline = torch_runnable(model, "expanded float32", "float32", checkpoint)
    truncated = report.get("truncation") is not None and "pt2" in artifacts
    if truncated:  # compact.pt2's weights, run in float64: the network --rank made
        path = outdir / artifacts["pt2"]
        runner = stack.enter_context(TARGETS["pt2"].open(path, dtype="float64"))
        reference = runner_runnable(runner, f"truncated {artifacts['pt2']} float64 (reference)", str(path))
    names = list(report.get("input_names") or ["x"])
    if len(names) != 1:
        raise BadInputError(f"report.json names {len(names)} inputs; compactify models take one input")
    return Reference(reference, baseline, names, [shape[1:]], shape, truncated, dict(meta or {}),
                     module=model, warnings=warnings)


def onnx_reference(outdir: Path, report: dict) -> Reference:
    """The ONNX source graph evaluated in float64 by onnx.reference; its baseline is ONNX Runtime in float32."""
    artifacts = report.get("artifacts") or {}
    model, path = read_onnx_source(report)
    names = list(report.get("input_names") or [])
    shapes = report.get("input_shapes") or ({names[0]: report["input_shape"]} if names else {})
    if not names or any(n not in shapes for n in names):
        raise BadInputError(f"{outdir / 'report.json'} does not state its input shapes; convert again")
    reference = onnx_float64_runnable(model, f"{path.name} float64 (onnx.reference, reference)", str(path), names)
    baseline = onnx_session_runnable(model, f"{path.name} float32 (ort)", str(path), names)
    truncated = report.get("truncation") is not None and "onnx" in artifacts
    if truncated:  # compact.onnx evaluated in float64: the network --rank made
        compact = outdir / artifacts["onnx"]
        reference = onnx_float64_runnable(read_onnx(compact), f"truncated {artifacts['onnx']} float64 "
                                          "(onnx.reference, reference)", str(compact), names)
    return Reference(reference, baseline, names, [tuple(shapes[n][1:]) for n in names],
                     tuple(int(d) for d in report["input_shape"]), truncated,
                     low_precision=set(low_precision_outputs(model)))


def onnx_file_reference(path: Path) -> tuple[Runnable, tuple[int, ...] | None]:
    """Any ONNX file as a float64 reference (onnx.reference), and its input shape when the file states
    every dim after the batch."""
    model = read_onnx(path)
    specs = graph_inputs(model)
    tensor_specs = [TensorSpec(s.name, tuple(d if isinstance(d, int) else None for d in s.dims), "float64")
                    for s in specs]
    runnable = onnx_float64_runnable(model, f"{path.name} (onnx.reference float64)", str(path),
                                     [s.name for s in specs], tensor_specs)
    shape = None
    if len(specs) == 1 and all(isinstance(d, int) for d in specs[0].dims[1:]):
        first = specs[0].dims[0]
        shape = (first if isinstance(first, int) else 1, *specs[0].dims[1:])
    return runnable, shape
