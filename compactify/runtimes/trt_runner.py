"""TensorRT runner: a serialized engine, named I/O tensors, execute_async_v3 on a CUDA stream.

Device memory comes from torch CUDA tensors, so no pycuda / cuda-python dependency is
needed: TensorRT only wants raw addresses and a stream handle, which torch provides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from compactify.errors import BadInputError, CompactifyError
from compactify.runtimes.base import Runner, TensorSpec, register_runner
from compactify.runtimes.devices import require_tensorrt


def make_logger(trt: Any, verbose: bool = False) -> Any:
    """A TensorRT logger that keeps errors (for one-line messages) instead of printing pages."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.warnings: list[str] = []

        def log(self, severity, msg):  # noqa: D401 - TensorRT callback
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))
            elif severity == trt.ILogger.Severity.WARNING:
                self.warnings.append(str(msg))
            elif verbose:
                print(f"[TensorRT] {msg}")

        def last_error(self) -> str:
            return self.errors[-1].strip().splitlines()[0] if self.errors else ""

    return _Logger()


@register_runner
class TrtRunner(Runner):
    """Runs a serialized TensorRT engine on the current CUDA device.

    An engine is tied to the GPU model and the TensorRT version that built it: when
    deserialization fails the error says so and how to rebuild.
    """

    name = "trt"
    description = "TensorRT, cuda"
    default_device = "cuda"
    devices = ("cuda",)

    def __init__(self, path: str | Path, *, device: str = "cuda", device_id: int = 0) -> None:
        super().__init__()
        if device != "cuda":
            raise BadInputError(f"TensorRT engines run on cuda only, not {device!r}")
        self.device = "cuda"
        self.device_id = device_id
        self.path = Path(path)
        self._trt = None
        self._logger = None
        self._runtime = None
        self._engine = None
        self._context = None
        self._stream = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []
        self._ranges: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._active: object | None = None  # which bound callable the context's addresses belong to

    def _load(self) -> None:
        if not self.path.is_file():
            raise BadInputError(f"engine file {self.path} does not exist")
        trt = require_tensorrt("running a TensorRT engine")
        self._trt = trt
        self._logger = make_logger(trt)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            gpu = _gpu_name(self.device_id)
            detail = self._logger.last_error()
            raise BadInputError(
                f"{self.path} is not a TensorRT engine this machine can load (built for another GPU or TensorRT version? "
                f"here: TensorRT {trt.__version__} on {gpu}); rebuild it here with `compactify engine`"
                + (f" [{detail}]" if detail else "")
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise CompactifyError(f"TensorRT could not create an execution context for {self.path}: {self._logger.last_error()}")
        self._stream = torch.cuda.Stream(device=self.device_id)
        self._inputs, self._outputs, self._ranges = [], [], {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            spec = TensorSpec(name, tuple(None if d < 0 else d for d in shape), _np_dtype(trt, engine.get_tensor_dtype(name)))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(spec)
                if any(d < 0 for d in shape):
                    lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
                    self._ranges[name] = (tuple(int(d) for d in lo), tuple(int(d) for d in hi))
            else:
                self._outputs.append(spec)

    def _close(self) -> None:
        # Context before engine before runtime: TensorRT objects must die in reverse creation order.
        self._context = None
        self._engine = None
        self._runtime = None
        self._stream = None

    def _input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def _output_specs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def validate_feeds(self, feeds):
        feeds = super().validate_feeds(feeds)
        for name, (lo, hi) in self._ranges.items():
            shape = feeds[name].shape
            if any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
                raise BadInputError(
                    f"trt runner: input {name!r} has shape {tuple(shape)}, outside the engine's profile "
                    f"{tuple(lo)} .. {tuple(hi)}; rebuild the engine with a wider --min-batch/--max-batch"
                )
        return feeds

    def _prepare(self, feeds: dict[str, np.ndarray]):
        context = self._context
        with torch.cuda.stream(self._stream):
            inputs = {}
            for spec in self._inputs:
                tensor = torch.from_numpy(feeds[spec.name]).to(f"cuda:{self.device_id}", non_blocking=False).contiguous()
                if not context.set_input_shape(spec.name, tuple(tensor.shape)):
                    raise BadInputError(f"TensorRT refused shape {tuple(tensor.shape)} for input {spec.name!r}: {self._logger.last_error()}")
                context.set_tensor_address(spec.name, tensor.data_ptr())
                inputs[spec.name] = tensor
            outputs = {}
            for spec in self._outputs:
                shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise CompactifyError(f"output {spec.name!r} has a data-dependent shape {shape}; not supported")
                tensor = torch.empty(shape, dtype=_torch_dtype(spec.dtype), device=f"cuda:{self.device_id}")
                context.set_tensor_address(spec.name, tensor.data_ptr())
                outputs[spec.name] = tensor
        self._stream.synchronize()  # the input copies are done before anyone times the engine
        return inputs, outputs

    def _execute(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise CompactifyError(f"TensorRT execution failed: {self._logger.last_error()}")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        _inputs, outputs = self._prepare(feeds)
        self._active = None
        self._execute()
        self._stream.synchronize()
        return {name: t.cpu().numpy() for name, t in outputs.items()}

    def _bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        inputs, outputs = self._prepare(feeds)
        token = object()
        self._active = token
        context = self._context

        def run() -> None:
            if self._active is not token:  # another bind() or infer() re-pointed the context since
                for name, tensor in inputs.items():
                    context.set_input_shape(name, tuple(tensor.shape))
                for name, tensor in {**inputs, **outputs}.items():
                    context.set_tensor_address(name, tensor.data_ptr())
                self._active = token
            self._execute()

        return run

    def synchronize(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()


def _gpu_name(device_id: int) -> str:
    try:
        return torch.cuda.get_device_name(device_id)
    except Exception:  # the name only decorates an error message
        return "this GPU"


def _np_dtype(trt: Any, dtype: Any) -> str:
    try:
        return np.dtype(trt.nptype(dtype)).name
    except Exception as exc:  # bf16, fp8, int4 have no numpy type
        raise CompactifyError(f"engine tensor type {dtype} has no numpy equivalent; runners support fp32/fp16/int tensors") from exc


def _torch_dtype(name: str):
    return torch.from_numpy(np.empty(0, dtype=name)).dtype
