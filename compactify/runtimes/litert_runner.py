"""LiteRT runner: a .tflite model on LiteRT's interpreter (``ai_edge_litert``), on the cpu, with its
default XNNPACK delegate. ``threads`` is the interpreter's own ``num_threads``.

A .tflite written by litert-torch names its tensors after its signature (``args_0``, ``output_0``);
the runner calls them ``input0``, ``output0``, ... by position, as the .pte runner does. Its shapes are
static: compactify converts at the planned input shape.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from compactify.errors import BadInputError, CompactifyError, first_line
from compactify.optional import EDGE_INSTALL, missing_package, optional_import
from compactify.runtimes.base import TensorSpec, register_runner
from compactify.runtimes.edge_runner import EdgeRunner
from compactify.runtimes.native_output import native_output_kept


def litert_missing() -> str | None:
    """Why a .tflite cannot be run here (None when it can), without importing LiteRT."""
    return missing_package("ai_edge_litert", "ai-edge-litert")


@register_runner
class LiteRTRunner(EdgeRunner):
    """Runs a .tflite file's one signature (``serving_default``) on LiteRT's interpreter."""

    name = "litert"
    description = "LiteRT with XNNPACK, cpu"
    file_kind = "a LiteRT model"
    suffix = ".tflite"
    flag = "--litert"

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(path, device=device, threads=threads)
        self._interpreter = None
        self._input_index: list[int] = []
        self._output_index: list[int] = []
        self._inputs: list[TensorSpec] = []
        self._outputs: list[TensorSpec] = []

    @classmethod
    def recognises(cls, identifier: bytes) -> bool:
        return identifier == b"TFL3"

    def _load(self) -> None:
        self._check_file()
        with native_output_kept("LiteRT"):
            litert = optional_import("ai_edge_litert.interpreter", package="ai-edge-litert", what="running a .tflite",
                                     hint=EDGE_INSTALL)
            try:
                interpreter = litert.Interpreter(model_path=str(self.path), num_threads=self.threads)
                interpreter.allocate_tensors()
                inputs, outputs = _signature(interpreter)
            except (ValueError, RuntimeError) as exc:
                failure = exc
            else:
                failure = None
        if failure is not None:
            raise BadInputError(f"LiteRT cannot load {self.path}: {first_line(failure)}")
        self._interpreter = interpreter
        self._input_index = [d["index"] for d in inputs]
        self._output_index = [d["index"] for d in outputs]
        self._inputs = [_spec(f"input{i}", d) for i, d in enumerate(inputs)]
        self._outputs = [_spec(f"output{i}", d) for i, d in enumerate(outputs)]

    def _close(self) -> None:
        self._interpreter = None

    def _input_specs(self) -> list[TensorSpec]:
        return list(self._inputs)

    def _output_specs(self) -> list[TensorSpec]:
        return list(self._outputs)

    def _set_inputs(self, feeds: dict[str, np.ndarray]) -> None:
        for spec, index in zip(self._inputs, self._input_index):
            self._interpreter.set_tensor(index, feeds[spec.name])

    def _invoke(self) -> None:
        with native_output_kept("LiteRT"):
            try:
                self._interpreter.invoke()
                failure = None
            except RuntimeError as exc:
                failure = exc
        if failure is not None:
            raise CompactifyError(f"LiteRT failed to run {self.path.name}: {first_line(failure)}")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._set_inputs(feeds)
        self._invoke()
        return {spec.name: self._interpreter.get_tensor(index)  # get_tensor returns a copy
                for spec, index in zip(self._outputs, self._output_index)}

    def _bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        self._set_inputs(feeds)  # the interpreter keeps its own copy of the inputs
        self._invoke()  # surfaces errors here, not inside a timing loop
        return self._interpreter.invoke


def _signature(interpreter: Any) -> tuple[list[dict], list[dict]]:
    """The input and output tensor details in the order of the model's one signature (litert-torch names
    them args_0, args_1, ... and output_0, output_1, ...; the interpreter's own lists are in tensor order)."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise ValueError(f"it has {len(signatures)} signatures; compactify writes models with one")
    key = next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    del runner  # a live signature runner holds the interpreter: invoke() would refuse to run

    def position(name: str) -> int:
        found = re.search(r"(\d+)$", name)
        return int(found.group(1)) if found else 0

    return ([inputs[n] for n in sorted(inputs, key=position)], [outputs[n] for n in sorted(outputs, key=position)])


def _spec(name: str, details: dict) -> TensorSpec:
    return TensorSpec(name, tuple(int(d) for d in details["shape"]), np.dtype(details["dtype"]).name)
