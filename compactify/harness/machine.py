"""What a latency number was measured on: CPU, threads, library versions, GPU.

A benchmark without this is not reproducible; every report embeds ``machine_info()``. Missing
libraries are reported as None rather than raising, since a CPU-only machine is normal.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from importlib import metadata
from typing import Any

import onnxruntime
import torch

from compactify import __version__


def cpu_model() -> str:
    """The CPU's marketing name; falls back to ``platform.processor()`` off Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tensorrt_version() -> str | None:
    # The wheel's distribution name varies (tensorrt, tensorrt-cu12, ...); the module knows.
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # ImportError, or a broken install that fails on load
        return None
    return getattr(trt, "__version__", None) or "unknown"


def _torch_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cuda": torch.version.cuda,
        "cuda_device": None,
        "cuda_capability": None,
    }
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        info["cuda_device"] = torch.cuda.get_device_name(index)
        info["cuda_capability"] = ".".join(str(v) for v in torch.cuda.get_device_capability(index))
    return info


def _ort_providers() -> list[str] | None:
    return list(onnxruntime.get_available_providers())


def machine_info() -> dict[str, Any]:
    """A flat, JSON-ready description of this machine and the versions that matter for speed."""
    info: dict[str, Any] = {
        "compactify": __version__,
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
    }
    info.update(_torch_info())
    info["onnx"] = _version("onnx")
    info["onnxruntime"] = _version("onnxruntime") or _version("onnxruntime-gpu")
    info["onnxruntime_providers"] = _ort_providers()
    info["tensorrt"] = _tensorrt_version()
    info["openvino"] = _version("openvino")  # the distribution's metadata: OpenVINO is not imported for it
    info["executorch"] = _version("executorch")
    info["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    return info


def machine_summary(info: dict[str, Any] | None = None) -> str:
    """One line for the top of a table: CPU, cores, threads, versions, GPU."""
    info = info or machine_info()
    parts = [f"{info['cpu']} ({info['usable_cores']}/{info['logical_cores']} cores)"]
    if info.get("torch"):
        threads = info.get("torch_threads")
        parts.append(f"torch {info['torch']} ({threads} thread{'' if threads == 1 else 's'})")
    if info.get("onnxruntime"):
        parts.append(f"onnxruntime {info['onnxruntime']}")
    if info.get("tensorrt"):
        parts.append(f"TensorRT {info['tensorrt']}")
    if info.get("openvino"):
        parts.append(f"OpenVINO {info['openvino']}")
    if info.get("cuda_device"):
        parts.append(f"{info['cuda_device']} (CUDA {info.get('torch_cuda')})")
    parts.append(f"python {info['python']}")
    return ", ".join(parts)


if __name__ == "__main__":  # pragma: no cover
    import json

    json.dump(machine_info(), sys.stdout, indent=2)
    print()
