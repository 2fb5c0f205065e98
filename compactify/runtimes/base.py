"""One way to run every artifact: the Runner interface and feed validation.

Runners follow Polygraphy's split: a runner loads, describes its inputs and outputs, and
infers; comparing outputs is someone else's job (harness/verify.py). ``bind`` exists for
timing: it puts the inputs on the device once and returns a callable that runs exactly one
inference with no host copies, so latency measurements time the model and not PCIe.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

import numpy as np

from compactify.errors import BadInputError, CompactifyError
from compactify.registry import Registry


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | None, ...] | None  # None for a dynamic dim; None overall when the rank is unknown
    dtype: str  # numpy dtype name: "float32", "float16", "float64", "int64", ...

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name}: {self.dtype}[?]"
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


class Runner(abc.ABC):
    """Base of every runtime. Use as ``with open_runner(...) as r: r.infer({"x": x})``.

    A runtime is one subclass registered in ``RUNNERS`` under its ``name``; ``open_runner`` finds
    it there, so adding a runtime is one module."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # for --help: "ONNX Runtime, cpu or cuda"
    default_device: ClassVar[str] = "cpu"
    runs_objects: ClassVar[bool] = False  # whether it also runs an in-memory model, not only a file
    threads_option: ClassVar[str | None] = None  # its option for the intra-op threads; None: torch's process-wide count
    device: str = "cpu"

    def __init__(self) -> None:
        self._loaded = False

    # ---- lifecycle
    def load(self) -> "Runner":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def close(self) -> None:
        if self._loaded:
            self._close()
            self._loaded = False

    def __enter__(self) -> "Runner":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def loaded(self) -> bool:
        return self._loaded

    # ---- metadata
    @property
    def inputs(self) -> list[TensorSpec]:
        self._require_loaded()
        return self._input_specs()

    @property
    def outputs(self) -> list[TensorSpec]:
        self._require_loaded()
        return self._output_specs()

    # ---- running
    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on host arrays and return host arrays keyed by output name."""
        self._require_loaded()
        return self._infer(self.validate_feeds(feeds))

    def bind(self, feeds: Mapping[str, np.ndarray]) -> Callable[[], None]:
        """Copy ``feeds`` to the device once; the returned callable runs one inference, no host copies."""
        self._require_loaded()
        return self._bind(self.validate_feeds(feeds))

    def synchronize(self) -> None:
        """Wait until work queued by a bound callable has finished (no-op on cpu)."""

    def validate_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return validate_feeds(self.inputs, feeds, where=f"{self.name} runner")

    # ---- implemented by each runtime
    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _close(self) -> None: ...

    @abc.abstractmethod
    def _input_specs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def _output_specs(self) -> list[TensorSpec]: ...

    @abc.abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]: ...

    def _require_loaded(self) -> None:
        if not self._loaded:
            raise CompactifyError(f"the {self.name} runner is not loaded; call load() or use it in a with block")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name} device={self.device} loaded={self._loaded}>"


RUNNERS: Registry[type[Runner]] = Registry("runtime")


def register_runner(cls: type[Runner]) -> type[Runner]:
    RUNNERS.add(cls.name, cls)
    return cls


RUNNERS: Registry[type[Runner]] = Registry("runtime")


def register_runner(cls: type[Runner]) -> type[Runner]:
    RUNNERS.add(cls.name, cls)
    return cls


def validate_feeds(specs: list[TensorSpec], feeds: Mapping[str, np.ndarray], where: str = "model") -> dict[str, np.ndarray]:
    """Check names, dtypes and static dims; return C-contiguous arrays. Any mismatch is a BadInputError."""
    if not isinstance(feeds, Mapping):
        raise BadInputError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}")
    expected = {s.name: s for s in specs}
    unknown = sorted(set(feeds) - set(expected))
    missing = sorted(set(expected) - set(feeds))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise BadInputError(f"{where}: {' and '.join(parts)}; it expects {', '.join(s.describe() for s in specs)}")
    out: dict[str, np.ndarray] = {}
    batch: dict[str, int] = {}
    for name, spec in expected.items():
        value = feeds[name]
        if not isinstance(value, np.ndarray):
            raise BadInputError(f"{where}: input {name!r} must be a numpy array, got {type(value).__name__}")
        if value.dtype.name != spec.dtype:
            raise BadInputError(f"{where}: input {name!r} has dtype {value.dtype.name}, expected {spec.dtype}")
        if spec.shape is not None:
            if value.ndim != len(spec.shape) or any(d is not None and d != v for d, v in zip(spec.shape, value.shape)):
                raise BadInputError(f"{where}: input {name!r} has shape {tuple(value.shape)}, expected {spec.describe()}")
            if value.ndim and spec.shape[0] is None:
                batch[name] = value.shape[0]
        out[name] = np.ascontiguousarray(value)
    if len(set(batch.values())) > 1:
        raise BadInputError(f"{where}: inputs disagree on the batch size: {batch}")
    return out

