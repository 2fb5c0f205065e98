"""One Runner interface over PyTorch, ONNX Runtime, TensorRT, ExecuTorch and LiteRT.

    with open_runner("compact.onnx", runtime="ort", device="cpu") as runner:
        outputs = runner.infer({"x": x})

Every runtime is a Runner class registered in ``RUNNERS`` under its name. Which runtime runs a
*file* is the artifact's business (``compactify.targets.target_for(path).runtime``, or
``compactify.targets.open_artifact(path)``); this layer only knows that an in-memory PyTorch
model runs on torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compactify.errors import BadInputError
# Each module registers its runner on import, in this order (the order of RUNTIMES and of the help texts).
from compactify.runtimes import torch_runner, ort_runner, trt_runner, openvino_runner, executorch_runner, litert_runner  # noqa: F401, I001
from compactify.runtimes.base import RUNNERS, Runner, TensorSpec, thread_options, validate_feeds

RUNTIMES: tuple[str, ...] = tuple(RUNNERS.keys())

__all__ = ["RUNNERS", "RUNTIMES", "Runner", "TensorSpec", "object_runtime", "open_runner", "runtimes_help",
           "thread_options", "validate_feeds"]


def runtimes_help() -> str:
    """One line for --help texts: every runtime and where it runs."""
    return ", ".join(f"{name} ({cls.description})" for name, cls in RUNNERS.items())


def thread_options(runtime: str, threads: int | None) -> dict[str, int]:
    """The options that give ``runtime``'s runner ``threads`` intra-op threads: {} for None, and for a
    runtime that follows torch's process-wide count (``measure.latency.pinned_threads`` sets that)."""
    option = RUNNERS[runtime].threads_option
    return {option: threads} if threads and option else {}


def object_runtime(model: Any) -> str:
    """The runtime of an in-memory model (torch for a module or an ExportedProgram)."""
    if isinstance(model, (str, Path)):
        raise BadInputError(f"cannot tell which runtime runs {Path(model).name} here: name the runtime, or open it "
                            "with compactify.targets.open_artifact, which knows the artifact kinds")
    if isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        return "torch"
    raise BadInputError(f"cannot run a {type(model).__name__}; pass an nn.Module or a .pt2/.onnx/.engine path")


def open_runner(model: Any, runtime: str | None = None, device: str | None = None, **opts: Any) -> Runner:
    """Build and load the ``runtime`` runner for ``model`` (a module or a file path).

    ``runtime`` may be left out for an in-memory PyTorch model. ``device`` defaults to the
    runner's own (cpu, cuda for TensorRT). Extra options go to the runner: torch: dtype,
    input_names, input_shape, output_names; ort: graph_optimization_level, intra_op_threads,
    inter_op_threads, device_id; trt: device_id; openvino: precision (fp32 or bf16), threads; executorch and
    litert: threads.
    """
    runtime = runtime or object_runtime(model)
    runner_class = RUNNERS.get(runtime)
    if runner_class is None:
        raise BadInputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if not isinstance(model, (str, Path)) and not runner_class.runs_objects:
        raise BadInputError(f"the {runtime} runtime runs a file; export the model first (got a {type(model).__name__})")
    try:
        runner = runner_class(model, device=device or runner_class.default_device, **opts)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise BadInputError(f"the {runtime} runner does not take option {str(exc).split('argument')[-1].strip()}") from exc
    return runner.load()
