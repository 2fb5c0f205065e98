"""compact.engine: a serialized TensorRT engine built from compact.onnx (or its int8 or fp16 copy),
run on TensorRT; CUDA only.

An engine has no magic bytes of its own, so it is recognised by its suffix only (``sniff`` stays
False): deserializing an unknown file with TensorRT to find out is neither cheap nor safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from compactify.errors import BadInputError
from compactify.runtimes import Runner
from compactify.runtimes.devices import require_tensorrt, tensorrt_missing
from compactify.targets.base import (
    TARGETS,
    Built,
    CompactModel,
    Target,
    register_target,
)
from compactify.targets.tensorrt_build import build_engine


@dataclass(frozen=True)
class EngineSettings:
    max_batch: int = 32  # the optimization profile covers batch 1 .. max_batch
    timing_cache: str | None = None  # loaded before and saved after the build: a rebuild skips kernel timing

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) or self.max_batch < 1:
            raise BadInputError(f"--max-batch must be a positive integer, got {self.max_batch!r}")


@register_target
class EngineTarget(Target):
    name = "engine"
    file = "compact.engine"
    suffixes = (".engine", ".plan", ".trt")
    description = "TensorRT engine"
    runtime = "trt"
    flag = "--trt"
    install_hint = "install it on a machine with an NVIDIA GPU (pip install tensorrt)"
    builds_from = ("onnx_int8", "onnx_fp16", "onnx")
    settings_type = EngineSettings

    def missing(self) -> str | None:
        return tensorrt_missing()

    def prepare(self, settings: EngineSettings, source_meta: Mapping[str, Any],
                input_shape: Sequence[int]) -> EngineSettings:
        require_tensorrt("--trt")  # before any work, so that nothing is half-written
        return settings

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: EngineSettings) -> Built:
        source = next(name for name in self.builds_from if name in built)
        info = build_engine(built[source], folder / self.file, max_batch=settings.max_batch,
                            timing_cache=settings.timing_cache, fp16=source == "onnx_fp16")
        return Built(self.file, {self.name: {k: v for k, v in info.as_dict().items() if k != "path"}})

    def open(self, path: str | Path, device: str = "cuda", **opts: Any) -> Runner:
        return super().open(path, device=device, **opts)

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        """The engine computes in the precision of the graph it was built from: the first of
        ``builds_from`` the folder holds."""
        source = next((name for name in self.builds_from if name in artifacts), "onnx")
        return TARGETS[source].tolerance(atol, rtol, artifacts)
