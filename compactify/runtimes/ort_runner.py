"""ONNX Runtime runner: CPUExecutionProvider, or CUDAExecutionProvider with IOBinding."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort

from compactify.errors import BadInputError, MissingRuntimeError
from compactify.runtimes.base import Runner, TensorSpec, register_runner
from compactify.runtimes.devices import (
    NEEDS_CUDA,
    NEEDS_ORT_CUDA,
    cuda_available,
    ort_providers,
)

GRAPH_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

# ONNX Runtime names element types "tensor(float)"; runners speak numpy dtype names.
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@register_runner
class OrtRunner(Runner):
    """Runs an .onnx file. ``graph_optimization_level`` is one of disable/basic/extended/all;
    thread counts of 0 or None leave ONNX Runtime's defaults. On cuda, inputs and outputs go
    through an IOBinding so ``bind`` times the graph without host copies."""

    name = "ort"
    description = "ONNX Runtime, cpu or cuda"
    threads_option = "intra_op_threads"

    def __init__(
        self,
        path: str | Path,
        *,
        device: str = "cpu",
        graph_optimization_level: str = "all",
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        device_id: int = 0,
    ) -> None:
        super().__init__()
        if device not in ("cpu", "cuda"):
            raise BadInputError(f"ort runner device must be cpu or cuda, got {device!r}")
        if graph_optimization_level not in GRAPH_OPTIMIZATION_LEVELS:
            raise BadInputError(f"graph optimization level must be one of {', '.join(GRAPH_OPTIMIZATION_LEVELS)}, got {graph_optimization_level!r}")
        for label, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise BadInputError(f"{label} must be a non-negative int, got {value!r}")
        self.path = Path(path)
        self.device = device
        self.device_id = device_id
        self.graph_optimization_level = graph_optimization_level
        self.intra_op_threads = intra_op_threads
        self.inter_op_threads = inter_op_threads
        self._session = None
        self._binding = None

    @property
    def providers(self) -> list[str]:
        self._require_loaded()
        return list(self._session.get_providers())

    def _load(self) -> None:
        if not self.path.is_file():
            raise BadInputError(f"ONNX file {self.path} does not exist")
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort_providers():
                raise MissingRuntimeError(f"the ort runner on cuda {NEEDS_ORT_CUDA}; this onnxruntime has {', '.join(ort_providers())}")
            if not cuda_available():
                raise MissingRuntimeError(f"the ort runner on cuda {NEEDS_CUDA}")
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id}), "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.graph_optimization_level]
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        if self.inter_op_threads:
            options.inter_op_num_threads = self.inter_op_threads
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # InvalidProtobuf, Fail, InvalidGraph, NotImplemented ... all mean "not a model we can run"
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BadInputError(f"ONNX Runtime cannot load {self.path}: {first}") from exc
        if self.device == "cuda" and "CUDAExecutionProvider" not in self._session.get_providers():
            raise MissingRuntimeError(f"ONNX Runtime could not start the CUDAExecutionProvider for {self.path} (check the CUDA/cuDNN libraries)")

    def _close(self) -> None:
        self._binding = None
        self._session = None

    def _input_specs(self) -> list[TensorSpec]:
        return [_spec(v) for v in self._session.get_inputs()]

    def _output_specs(self) -> list[TensorSpec]:
        return [_spec(v) for v in self._session.get_outputs()]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self._session.get_outputs()]
        if self.device == "cpu":
            return dict(zip(names, self._run(lambda: self._session.run(names, feeds))))
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, "cuda", self.device_id)
        self._run(lambda: self._session.run_with_iobinding(binding))
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def _bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        session = self._session
        binding = session.io_binding()
        device_type = "cuda" if self.device == "cuda" else "cpu"
        # OrtValues copy the inputs to the device now, once; outputs are allocated there by ORT.
        values = {n: ort.OrtValue.ortvalue_from_numpy(v, device_type, self.device_id) for n, v in feeds.items()}
        for name, value in values.items():
            binding.bind_ortvalue_input(name, value)
        for out in session.get_outputs():
            binding.bind_output(out.name, device_type, self.device_id)
        self._run(lambda: session.run_with_iobinding(binding))  # surfaces errors here, not inside a timing loop
        self._binding = binding

        def run() -> None:
            session.run_with_iobinding(binding)

        run.keepalive = values  # type: ignore[attr-defined]  # the device buffers must outlive the callable
        return run

    def synchronize(self) -> None:
        if self._binding is not None and self.device == "cuda":
            self._binding.synchronize_outputs()

    @staticmethod
    def _run(fn):
        try:
            return fn()
        except Exception as exc:
            # ORT reports bad feeds it could not be told about in advance (a dynamic dim out of range).
            if type(exc).__name__ == "InvalidArgument":
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise BadInputError(f"ONNX Runtime rejected the input: {first}") from exc
            raise


def _spec(value) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in value.shape) if value.shape is not None else None
    return TensorSpec(value.name, shape, _ORT_TYPES.get(value.type, value.type))
