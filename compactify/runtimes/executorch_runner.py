"""ExecuTorch runner: a .pte program on ExecuTorch's Python runtime (``executorch.runtime``), on the cpu,
its delegated parts on XNNPACK.

Threads: ExecuTorch runs XNNPACK on one process-wide threadpool (by default one thread per performance
core). Its public Python API has no setting for it; ``threads`` resets that pool through
``executorch.extension.pybindings.portable_lib._unsafe_reset_threadpool``, an experimental function of
executorch 1.5 ("unsafe" while another method runs; compactify runs one at a time). The pool is shared:
the last runner loaded with ``threads`` sets it for every .pte in the process.

A .pte carries no input or output names: they are ``input0``, ``output0``, ... by position. Its shapes
are the memory-planned ones; compactify lowers at a static shape, so they are the shapes it takes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compactify.errors import BadInputError, CompactifyError, first_line
from compactify.optional import EDGE_INSTALL, missing_package, optional_import
from compactify.runtimes.base import TensorSpec, register_runner
from compactify.runtimes.edge_runner import EdgeRunner
from compactify.runtimes.native_output import native_output_kept

# ExecuTorch's ScalarType codes (c10's numbering) as numpy dtype names.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool"}


def executorch_missing() -> str | None:
    """Why a .pte cannot be built or run here (None when it can), without importing ExecuTorch."""
    return missing_package("executorch", "executorch")


def import_executorch(module: str, what: str) -> Any:
    """An ExecuTorch module, or the one-line error naming the extra to install."""
    return optional_import(module, package="executorch", what=what, hint=EDGE_INSTALL)


@register_runner
class ExecutorchRunner(EdgeRunner):
    """Runs a .pte file's ``forward`` method; ``threads`` resets the process-wide XNNPACK threadpool (see
    the module's note)."""

    name = "executorch"
    description = "ExecuTorch with XNNPACK, cpu"
    file_kind = "an ExecuTorch program"
    suffix = ".pte"
    flag = "--executorch"

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(path, device=device, threads=threads)
        self._method = None
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    @classmethod
    def recognises(cls, identifier: bytes) -> bool:
        return identifier[:2] == b"ET" and identifier[2:].isdigit()  # ET12

    def _load(self) -> None:
        self._check_file()
        with native_output_kept("ExecuTorch") as said:
            runtime = import_executorch("executorch.runtime", "running a .pte")
            if self.threads is not None:  # before loading: XNNPACK takes the pool when the method is loaded
                _set_threads(self.threads)
            try:
                program = runtime.Runtime.get().load_program(self.path)
                method = program.load_method("forward") if "forward" in program.method_names else None
            except RuntimeError as exc:
                method, failure = None, exc
            else:
                failure = None
        if failure is not None:
            raise BadInputError(f"ExecuTorch cannot load {self.path}: {said.last_native_line() or first_line(failure)}")
        if method is None:
            raise BadInputError(f"{self.path} has no forward method: not a compactify .pte")
        meta = method.metadata
        self._inputs = [_spec(f"input{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
        self._outputs = [_spec(f"output{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]
        self._method = method

    def _close(self) -> None:
        self._method = None

    def _input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def _output_specs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def _tensors(self, feeds: dict[str, np.ndarray]) -> list[torch.Tensor]:
        return [torch.from_numpy(feeds[spec.name]) for spec in self._inputs]

    def _execute(self, tensors: list[torch.Tensor]) -> list[Any]:
        with native_output_kept("ExecuTorch") as said:
            try:
                outputs, failure = self._method.execute(tensors), None
            except RuntimeError as exc:
                outputs, failure = None, exc
        if failure is not None:
            raise CompactifyError(f"ExecuTorch failed to run {self.path.name}: "
                                  f"{said.last_native_line() or first_line(failure)}")
        return list(outputs)

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._execute(self._tensors(feeds))
        return {spec.name: out.numpy().copy() for spec, out in zip(self._outputs, outputs)}

    def _bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        tensors = self._tensors(feeds)
        self._execute(tensors)  # surfaces errors here, not inside a timing loop
        execute = self._method.execute

        def run() -> None:
            execute(tensors)

        return run


def _set_threads(threads: int) -> None:
    threadpool = import_executorch("executorch.extension.pybindings.portable_lib", "setting ExecuTorch's threads")
    if threadpool._threadpool_get_thread_count() != threads:
        threadpool._unsafe_reset_threadpool(threads)


def _spec(name: str, info: Any) -> TensorSpec:
    code = int(info.dtype())
    if code not in _SCALAR_TYPES:
        raise BadInputError(f"a .pte tensor of ExecuTorch scalar type {code} has no numpy equivalent; compactify "
                            "runs float and integer tensors")
    return TensorSpec(name, tuple(int(d) for d in info.sizes()), _SCALAR_TYPES[code])
