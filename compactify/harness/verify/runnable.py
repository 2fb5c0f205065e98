"""A model as verify runs it, whatever runs it (a PyTorch module, a loaded Runner, the ONNX graph in
float64 or on ONNX Runtime): float32 feeds in by position, outputs out by position. References,
baselines and artifacts are all ``Runnable``s, so one comparison serves them all."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch.utils import _pytree as pytree

from compactify.errors import BadInputError
from compactify.harness.inputs import Inputs
from compactify.measure.onnx_float64 import Float64Reference
from compactify.runtimes.base import Runner, TensorSpec

TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass
class Runnable:
    """Something that runs a batch of feeds (by position) and returns its outputs (by position)."""

    label: str
    runtime: str
    path: str | None
    run: Callable[[list[np.ndarray]], list[np.ndarray]]
    input_specs: list[TensorSpec] | None = None  # when the model declares them
    precision: str | None = None  # the compute precision, where its runtime lets it be chosen (OpenVINO: fp32, bf16)


def torch_runnable(module: torch.nn.Module, label: str, dtype: str, path: str | None = None) -> Runnable:
    """A PyTorch module fed in ``dtype`` ("float64" or "float32"); its tensor outputs in pytree order."""
    tdtype = TORCH_DTYPES[dtype]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*(torch.from_numpy(np.asarray(a)).to(tdtype) for a in arrays))
        return [t.detach().numpy() for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]

    return Runnable(label, "torch", path, run)


def runner_runnable(runner: Runner, label: str, path: str | None) -> Runnable:
    """A loaded Runner; float feeds are cast to the dtype each input declares (an fp16 model's inputs)."""
    specs = runner.inputs
    names = [s.name for s in specs]

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(names):
            raise BadInputError(f"{label} takes {len(names)} input(s) {names}, got {len(arrays)}")
        feeds = {}
        for spec, a in zip(specs, arrays):
            feeds[spec.name] = np.ascontiguousarray(a, dtype=np.dtype(spec.dtype)) if spec.dtype.startswith("float") else a
        return [np.asarray(v) for v in runner.infer(feeds).values()]

    return Runnable(label, runner.name, path, run, specs, runner.precision)


def onnx_float64_runnable(model: onnx.ModelProto, label: str, path: str, names: Sequence[str],
                          input_specs: list[TensorSpec] | None = None) -> Runnable:
    """An ONNX graph evaluated in float64 by onnx.reference (``measure.onnx_float64``)."""
    evaluator = Float64Reference(model)
    names = list(names)

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(names):
            raise BadInputError(f"{label} takes {len(names)} input(s) {names}, got {len(arrays)}")
        return evaluator.run(dict(zip(names, arrays)))

    return Runnable(label, "onnx.reference", path, run, input_specs)


def onnx_session_runnable(model: onnx.ModelProto, label: str, path: str, names: Sequence[str]) -> Runnable:
    """An ONNX graph held in memory (a source with its --outputs selection) on ONNX Runtime's CPU provider."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = list(names)

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays)))

    return Runnable(label, "ort", path, run)


def run_all(model: Runnable, inputs: Inputs, output_names: Sequence[str]) -> dict[str, np.ndarray]:
    """Outputs of every batch, concatenated along the batch axis, named by the reference's names."""
    per_batch = [model.run([feeds[n] for n in inputs.names]) for feeds in inputs.batches]
    if any(len(outs) != len(output_names) for outs in per_batch):
        got = len(per_batch[0])
        raise BadInputError(f"{model.label} returns {got} output(s), but the reference returns {len(output_names)} "
                            f"({', '.join(output_names)})")
    joined = {}
    for i, name in enumerate(output_names):
        parts = [outs[i] for outs in per_batch]
        joined[name] = np.concatenate(parts, axis=0) if parts[0].ndim else np.stack(parts)
    return joined


def fixed_batch(models: Sequence[Runnable]) -> tuple[int, str] | None:
    """The first fixed batch size a model declares, and which model: every batch must have that size."""
    for m in models:
        for spec in m.input_specs or []:
            if spec.shape and spec.shape[0] is not None:
                return int(spec.shape[0]), m.label
    return None
