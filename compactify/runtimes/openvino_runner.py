"""OpenVINO runner: an IR (.xml with its .bin) compiled for the CPU plugin.

The CPU plugin's default compute precision is bf16 on CPUs with AVX512-BF16 or AMX, which costs
1e-3 to 1.2e-2 of the largest output where fp32 costs what ONNX Runtime does (6e-8 to 4e-6, measured
on SmallNet-7 CL, RepVGG-A0 and MobileOne-S0): this runner compiles at fp32 unless bf16 is
asked for, and reports the precision the compiled model really runs at (``precision``), read back
from the plugin, so that a table never says fp32 of a bf16 run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from compactify.errors import BadInputError, MissingRuntimeError
from compactify.optional import optional_import
from compactify.runtimes.base import Runner, TensorSpec, register_runner

INSTALL_EDGE = "pip install compactify[edge]"

# compactify's names for compute precisions, and OpenVINO's for the same.
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
_FROM_OPENVINO = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}

# An IR is an XML file whose root element is <net ...>; this much of the file holds it.
_IR_HEAD_BYTES = 512


def import_openvino(what: str) -> Any:
    """The openvino module, or MissingRuntimeError naming the extra that installs it."""
    return optional_import("openvino", what=what, hint=INSTALL_EDGE)


def is_ir(path: Path) -> bool:
    """Whether ``path`` starts like an OpenVINO IR (asked before OpenVINO tries every front-end on it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_IR_HEAD_BYTES)
    except OSError:
        return False
    return b"<net " in head and (head.lstrip().startswith(b"<?xml") or head.lstrip().startswith(b"<net "))


def weights_of(xml: Path) -> Path:
    """The weights file OpenVINO reads beside an IR: the same name with .bin."""
    return xml.with_suffix(".bin")


# Lines of OpenVINO's messages that say where it failed, not what failed.
_WHERE = ("Exception from", "Check '", "FrontEnd API failed", "Model wasn't fully converted", "Summary:")


def openvino_message(exc: BaseException) -> str:
    """What went wrong, in one line, from an OpenVINO error (its messages open with source locations, and a
    conversion lists what it could not convert as "-- ..." lines after a summary)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    listed = [line[3:] for line in lines if line.startswith("-- ")]
    useful = listed or [line for line in lines if not line.startswith(_WHERE)]
    return "; ".join(useful or lines or [type(exc).__name__])[:300]


@register_runner
class OpenVinoRunner(Runner):
    """Runs an OpenVINO IR on the CPU plugin at ``precision`` (fp32 or bf16), on ``threads`` threads
    (None: the plugin's default), one stream, one infer request."""

    name = "openvino"
    description = "OpenVINO, cpu"
    devices = ("cpu",)
    threads_option = "threads"

    def __init__(self, path: str | Path, *, device: str = "cpu", precision: str = "fp32",
                 threads: int | None = None) -> None:
        super().__init__()
        if device != "cpu":
            raise BadInputError(f"the openvino runner runs on cpu (OpenVINO's CPU plugin), not {device!r}")
        if precision not in PRECISIONS:
            raise BadInputError(f"the openvino runner computes at {' or '.join(PRECISIONS)}, not {precision!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise BadInputError(f"threads must be a positive integer, got {threads!r}")
        self.path = Path(path)
        self.device = device
        self.requested_precision = precision
        self.precision: str | None = None  # what the compiled model runs at, once loaded
        self.threads = threads
        self._compiled = None
        self._request = None

    def _load(self) -> None:
        weights = weights_of(self.path)
        if not self.path.is_file():
            raise BadInputError(f"OpenVINO IR {self.path} does not exist")
        if not is_ir(self.path):
            raise BadInputError(f"{self.path} is not an OpenVINO IR (an XML file whose root is <net>)")
        if not weights.is_file():
            raise BadInputError(f"{self.path.name} is an OpenVINO IR without its weights: {weights.name} is missing "
                                "beside it")
        ov = import_openvino("running an OpenVINO IR")
        config = {"INFERENCE_PRECISION_HINT": PRECISIONS[self.requested_precision], "PERFORMANCE_HINT": "LATENCY",
                  "NUM_STREAMS": 1}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = self.threads
        core = ov.Core()
        try:
            model = core.read_model(str(self.path), str(weights))
            compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as exc:
            raise BadInputError(f"OpenVINO cannot load {self.path}: {openvino_message(exc)}") from exc
        ran_at = _FROM_OPENVINO.get(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name(), "?")
        if ran_at != self.requested_precision:  # the plugin falls back where the CPU lacks the instructions
            raise MissingRuntimeError(f"OpenVINO's CPU plugin runs {self.path.name} at {ran_at} on this CPU, not at "
                                      f"{self.requested_precision}")
        self.precision = ran_at
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    def _close(self) -> None:
        self._request = None
        self._compiled = None

    def _input_specs(self) -> list[TensorSpec]:
        return [_spec(port) for port in self._compiled.inputs]

    def _output_specs(self) -> list[TensorSpec]:
        return [_spec(port) for port in self._compiled.outputs]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self._run(lambda: self._request.infer(feeds))
        return {port.get_any_name(): np.array(results[port]) for port in self._compiled.outputs}

    def _bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        ov = import_openvino("running an OpenVINO IR")
        request = self._compiled.create_infer_request()
        for name, value in feeds.items():  # the request reads the arrays in place: no copy per run
            request.set_tensor(name, ov.Tensor(value, shared_memory=True))
        self._run(request.infer)  # surfaces errors here, not inside a timing loop

        def run() -> None:
            request.infer(share_outputs=True)

        run.keepalive = feeds  # type: ignore[attr-defined]  # the shared input arrays must outlive the callable
        return run

    def _run(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except RuntimeError as exc:
            raise BadInputError(f"OpenVINO rejected the input of {self.path.name}: {openvino_message(exc)}") from exc


def _spec(port: Any) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = None if shape.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in shape)
    return TensorSpec(port.get_any_name(), dims, np.dtype(port.get_element_type().to_dtype()).name)
