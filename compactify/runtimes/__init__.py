"""One Runner interface over PyTorch, ONNX Runtime and TensorRT.

    with open_runner("compact.onnx", device="cpu") as runner:
        outputs = runner.infer({"x": x})

``open_runner`` picks the runtime from the object or the file suffix (.pt2 -> torch,
.onnx -> ort, .engine/.plan/.trt -> trt) unless ``runtime`` names one, and returns a
loaded runner. Runtime modules import lazily so that ONNX Runtime and TensorRT are only
needed by the runners that use them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compactify.errors import BadInputError
from compactify.runtimes.base import Runner, TensorSpec, validate_feeds

from compactify.runtimes.kinds import ENGINE_SUFFIXES, FILE_KINDS, RUNTIMES as _RUNTIME_NAMES, kind_of

RUNTIMES = tuple(_RUNTIME_NAMES)

__all__ = ["ENGINE_SUFFIXES", "FILE_KINDS", "RUNTIMES", "Runner", "TensorSpec", "guess_runtime", "open_runner",
           "validate_feeds"]


def guess_runtime(model: Any) -> str:
    """The runtime that opens ``model``: a module or a .pt2 (torch), .onnx (ort), an engine (trt); see runtimes.kinds."""
    if isinstance(model, (str, Path)):
        try:
            kind = kind_of(model)
        except BadInputError:
            kind = None
        if kind is None or kind.name == "checkpoint":
            what = "a checkpoint, which compactify bench and verify rebuild first" if kind else "of no known kind"
            raise BadInputError(f"cannot tell which runtime runs {Path(model).name}: it is {what}; runners open "
                                ".pt2 (torch), .onnx (ort) and TensorRT engines (trt)")
        return kind.runtime
    import torch

    if isinstance(model, (torch.nn.Module, torch.export.ExportedProgram)):
        return "torch"
    raise BadInputError(f"cannot run a {type(model).__name__}; pass an nn.Module or a .pt2/.onnx/.engine path")


def open_runner(model: Any, runtime: str | None = None, device: str | None = None, **opts: Any) -> Runner:
    """Build and load the runner for ``model`` (a module or a file path).

    ``device`` defaults to cpu, except for TensorRT (cuda only). Extra options go to the
    runner: torch: dtype, input_names, input_shape, output_names; ort:
    graph_optimization_level, intra_op_threads, inter_op_threads, device_id; trt: device_id.
    """
    runtime = runtime or guess_runtime(model)
    if runtime not in RUNTIMES:
        raise BadInputError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    try:
        runner = _make(model, runtime, device, opts)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise BadInputError(f"the {runtime} runner does not take option {str(exc).split('argument')[-1].strip()}") from exc
    return runner.load()


def _make(model: Any, runtime: str, device: str | None, opts: dict[str, Any]) -> Runner:
    is_path = isinstance(model, (str, Path))
    if runtime == "torch":
        from compactify.runtimes.torch_runner import TorchRunner

        runner: Runner = TorchRunner(model, device=device or "cpu", **opts)
    else:
        if not is_path:
            raise BadInputError(f"the {runtime} runtime runs a file; export the model first (got a {type(model).__name__})")
        if runtime == "ort":
            from compactify.runtimes.ort_runner import OrtRunner

            runner = OrtRunner(model, device=device or "cpu", **opts)
        else:
            from compactify.runtimes.trt_runner import TrtRunner

            runner = TrtRunner(model, device=device or "cuda", **opts)
    return runner
