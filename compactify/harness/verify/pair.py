"""``verify_models(A, B)``: any two models (checkpoints, .pt2, ONNX files, engines) run on the same inputs
and compared, A the reference (float64 where it can run in float64), B the candidate."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from compactify.arguments import existing_path
from compactify.converter.frontends.fx.check import reference_float64
from compactify.converter.load.checkpoint import load_checkpoint
from compactify.converter.load.ingest import build_source
from compactify.errors import BadInputError, CompactifyError
from compactify.harness.devices import device_for
from compactify.harness.inputs import DEFAULT_SEED, inputs_for
from compactify.harness.model_files import is_checkpoint, model_target
from compactify.harness.verify.accuracy import classifier_output, digits_accuracy
from compactify.harness.verify.judging import judge
from compactify.harness.verify.references import onnx_file_reference
from compactify.harness.verify.results import VerifyResult
from compactify.harness.verify.runnable import (
    Runnable,
    fixed_batch,
    runner_runnable,
    torch_runnable,
)
from compactify.harness.verify.tolerances import check_tolerances
from compactify.measure.metrics import DEFAULT_ATOL, DEFAULT_RTOL
from compactify.models.data import trained_on_digits
from compactify.targets.onnx import read_onnx_model

DTYPES = ("float32", "float64")
PRECISE_RUNTIME = "torch"  # the one runtime that runs a model in float64 (its runner takes a dtype)


def verify_models(
    reference: str | Path,
    candidate: str | Path,
    *,
    runtime_a: str | None = None,
    runtime_b: str | None = None,
    device: str = "cpu",
    reference_dtype: str = "float64",
    inputs: str | Path | None = None,
    batches: int | None = None,
    batch_size: int | None = None,
    seed: int = DEFAULT_SEED,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    input_shape: Sequence[int] | None = None,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    trust_pickle: bool = False,
) -> VerifyResult:
    """Compare ``candidate`` against ``reference``: checkpoints, .pt2, .onnx or TensorRT engines.

    The reference runs in ``reference_dtype`` where it is a PyTorch model (checkpoint or .pt2) or an ONNX
    graph (evaluated by onnx.reference); ``input_shape`` (N,C,H,W) is needed only when neither model
    declares its input dims.
    """
    check_tolerances(atol, rtol)
    if reference_dtype not in DTYPES:
        raise BadInputError(f"--reference-dtype must be float32 or float64, got {reference_dtype!r}")
    shape_arg = tuple(int(d) for d in input_shape) if input_shape else None
    warnings: list[str] = []
    build = dict(arch=arch, arch_kwargs=arch_kwargs, input_shape=shape_arg, trust_pickle=trust_pickle)
    with contextlib.ExitStack() as stack:
        ref, ref_shape, ref_meta = _open_model(reference, runtime_a, device, reference_dtype, stack=stack,
                                               warnings=warnings, **build)
        cand, cand_shape, _ = _open_model(candidate, runtime_b, device, "float32", stack=stack, warnings=warnings,
                                          **build)
        if ref.label == cand.label:
            cand.label = f"{cand.label} [candidate]"
        shape = shape_arg or ref_shape or cand_shape
        if shape is None:
            raise BadInputError("neither model declares its input dims; pass --input-shape N,C,H,W")
        for m, s in ((ref, ref_shape), (cand, cand_shape)):
            if s is not None and tuple(s[1:]) != tuple(shape[1:]):
                raise BadInputError(f"{m.label} takes input dims {tuple(s[1:])}, not {tuple(shape[1:])}")
        counts = {m.label: len(m.input_specs) for m in (ref, cand) if m.input_specs is not None}
        if any(c != 1 for c in counts.values()):
            raise BadInputError(f"verify compares single-input models; input counts: {counts}")
        fixed = fixed_batch([ref, cand])
        data = inputs_for(["x"], [shape[1:]], inputs_file=inputs, batches=batches, batch_size=batch_size, seed=seed,
                          fixed_batch=fixed)
        # Neither file need name its outputs alike: they are compared by position, named output0, output1, ...
        per_batch = [ref.run([f["x"]]) for f in data.batches]
        out_names = [f"output{i}" for i in range(len(per_batch[0]))]
        ref_out = {n: np.concatenate([outs[i] for outs in per_batch], axis=0) for i, n in enumerate(out_names)}
        result = judge(cand, data, ref_out, (atol, rtol))
        ref_accuracy = None
        cls = classifier_output(ref_out) if trained_on_digits(ref_meta) else None
        if cls is not None:
            index = out_names.index(cls)
            fb = fixed[0] if fixed else None
            ref_accuracy = digits_accuracy(ref, ref_meta, shape, fb, index)
            result.accuracy = digits_accuracy(cand, ref_meta, shape, fb, index)
    return VerifyResult(ref.label, [result], data.description, ref_accuracy, None, warnings)


def _open_model(path: str | Path, runtime: str | None, device: str, dtype: str, *, arch: str | None,
                arch_kwargs: dict | None, input_shape: tuple[int, ...] | None, trust_pickle: bool,
                stack: contextlib.ExitStack, warnings: list[str]) -> tuple[Runnable, tuple[int, ...] | None, dict]:
    """Open a checkpoint, .pt2, .onnx or engine on its runtime; returns the model, its input shape and meta."""
    path = Path(path)
    existing_path(path, "model file")
    if is_checkpoint(path):
        return _open_checkpoint(path, runtime, dtype, arch, arch_kwargs, input_shape, trust_pickle, warnings)
    target = model_target(path)
    chosen = runtime or target.runtime
    if chosen != target.runtime:
        raise BadInputError(f"{path.name} runs on --runtime {target.runtime}, not --runtime {chosen}")
    if dtype == "float64" and chosen != PRECISE_RUNTIME and read_onnx_model(path) is not None:
        model, shape = onnx_file_reference(path)  # an ONNX reference: the graph itself, evaluated in float64
        return model, shape, {}
    opts: dict[str, Any] = {"dtype": dtype} if chosen == PRECISE_RUNTIME else {}
    device = device_for(chosen, device)
    try:
        runner = target.open(path, device=device, **opts)
    except CompactifyError:
        raise
    except Exception as exc:  # a .pt2 whose graph refuses float64: run it in float32, and say so
        if chosen != PRECISE_RUNTIME or dtype != "float64":
            raise
        warnings.append(f"{path.name} does not run in float64 ({type(exc).__name__}): it runs in float32")
        runner = target.open(path, device=device, dtype="float32")
        dtype = "float32"
    stack.enter_context(runner)
    precision = f" {runner.precision}" if runner.precision else ""  # where the runtime chooses it (OpenVINO)
    label = f"{path.name} ({chosen}{' ' + dtype if chosen == PRECISE_RUNTIME else ''}{precision})"
    model = runner_runnable(runner, label, str(path))
    specs = model.input_specs or []
    shape = None
    if len(specs) == 1 and specs[0].shape is not None and all(d is not None for d in specs[0].shape[1:]):
        shape = (specs[0].shape[0] or 1, *specs[0].shape[1:])
    return model, shape, {}


def _open_checkpoint(path: Path, runtime: str | None, dtype: str, arch: str | None, arch_kwargs: dict | None,
                     input_shape: tuple[int, ...] | None, trust_pickle: bool,
                     warnings: list[str]) -> tuple[Runnable, tuple[int, ...] | None, dict]:
    """A checkpoint rebuilt from its metadata (or --arch) and run as a PyTorch module."""
    if runtime not in (None, PRECISE_RUNTIME):
        raise BadInputError(f"{path.name} is a checkpoint and runs on --runtime torch, not {runtime}; "
                            "export it to ONNX first")
    source = build_source(load_checkpoint(path, trust_pickle=trust_pickle), arch, arch_kwargs, input_shape)
    module = source.model
    if dtype == "float64":
        double = reference_float64(module)
        if double is None:
            warnings.append(f"{path.name} does not run in float64: it runs in float32")
            dtype = "float32"
        else:
            module = double
    label = f"{path.name} (torch {dtype})"
    return torch_runnable(module, label, dtype, str(path)), source.input_shape, dict(source.meta)
