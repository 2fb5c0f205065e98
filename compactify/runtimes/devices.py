"""What this machine can run: CUDA, TensorRT, ONNX Runtime providers.

Every GPU path asks here first, so a missing piece is reported as one line naming it
(the same words the tests use as skip reasons) instead of an import traceback.
"""

from __future__ import annotations

import functools
from types import ModuleType

import onnxruntime as ort
import torch

from compactify.errors import MissingRuntimeError
from compactify.optional import optional_import

NEEDS_CUDA = "needs a CUDA device"
NEEDS_TENSORRT = "needs TensorRT (tensorrt Python package)"
NEEDS_ORT_CUDA = "needs onnxruntime with the CUDAExecutionProvider (onnxruntime-gpu)"


def cuda_available() -> bool:
    return bool(torch.cuda.is_available())


@functools.lru_cache(maxsize=1)
def _import_tensorrt() -> tuple[ModuleType | None, str | None]:
    try:
        tensorrt = optional_import("tensorrt", what="TensorRT")
    except MissingRuntimeError:
        return None, None
    except Exception as exc:  # a broken install (missing libnvinfer, wrong CUDA) fails with OSError & co.
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return tensorrt, None


def tensorrt_version() -> str | None:
    trt, _ = _import_tensorrt()
    return None if trt is None else str(getattr(trt, "__version__", "unknown"))


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot run here (a skip reason), or None when it can."""
    trt, broken = _import_tensorrt()
    if trt is None:
        return NEEDS_TENSORRT + (f"; import failed: {broken}" if broken else "")
    if not cuda_available():
        return NEEDS_CUDA
    return None


def require_cuda(what: str) -> None:
    if not cuda_available():
        raise MissingRuntimeError(f"{what} {NEEDS_CUDA}, and none is visible here (torch.cuda.is_available() is False)")


def require_tensorrt(what: str) -> ModuleType:
    """Return the tensorrt module, or raise MissingRuntimeError naming what is missing."""
    trt, broken = _import_tensorrt()
    if trt is None:
        detail = f" (import failed: {broken})" if broken else "; install it on a machine with an NVIDIA GPU (pip install tensorrt)"
        raise MissingRuntimeError(f"{what} {NEEDS_TENSORRT}, which is not importable here{detail}")
    require_cuda(what)
    return trt


def ort_providers() -> list[str]:
    return list(ort.get_available_providers())


def ort_cuda_missing() -> str | None:
    if "CUDAExecutionProvider" not in ort_providers():
        return NEEDS_ORT_CUDA
    if not cuda_available():
        return NEEDS_CUDA
    return None
