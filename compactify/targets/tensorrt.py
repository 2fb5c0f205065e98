"""compact.engine: a serialized TensorRT engine built from compact.onnx (or its int8 or fp16 copy),
run on TensorRT; CUDA only.

An engine has no magic bytes of its own, so it is recognised by its suffix only (``sniff`` stays
False): deserializing an unknown file with TensorRT to find out is neither cheap nor safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from compactify.runtimes import Runner
from compactify.runtimes.devices import tensorrt_missing
from compactify.targets.base import TARGETS, Target, register_target


@register_target
class EngineTarget(Target):
    name = "engine"
    file = "compact.engine"
    suffixes = (".engine", ".plan", ".trt")
    description = "TensorRT engine"
    runtime = "trt"
    flag = "--trt"
    builds_from = ("onnx_int8", "onnx_fp16", "onnx")

    def missing(self) -> str | None:
        return tensorrt_missing()

    def open(self, path: str | Path, device: str = "cuda", **opts: Any) -> Runner:
        return super().open(path, device=device, **opts)

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        """The engine computes in the precision of the graph it was built from: the first of
        ``builds_from`` the folder holds."""
        source = next((name for name in self.builds_from if name in artifacts), "onnx")
        return TARGETS[source].tolerance(atol, rtol, artifacts)
