import json
import platform

import torch

from compactify.harness import machine
from compactify.harness.machine import machine_info, machine_summary


def test_machine_info_fields():
    info = machine_info()
    json.dumps(info)  # JSON-ready as it is
    assert info["python"] == platform.python_version()
    assert info["torch"] == torch.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert info["logical_cores"] >= 1 and 1 <= info["usable_cores"] <= info["logical_cores"]
    for key in ("onnx", "onnxruntime", "onnxruntime_providers", "tensorrt", "cuda_device", "numpy"):
        assert key in info
    if not torch.cuda.is_available():
        assert info["cuda_device"] is None


def test_tensorrt_absent_is_none(monkeypatch):
    def fail(name):
        raise ImportError(name)

    monkeypatch.setattr(machine.importlib, "import_module", fail)
    assert machine._tensorrt_version() is None


def test_summary_line():
    info = machine_info()
    info.update(tensorrt="10.0.1", cuda_device="Fake GPU", torch_cuda="12.4")
    line = machine_summary(info)
    assert info["cpu"] in line and f"torch {torch.__version__}" in line
    assert "TensorRT 10.0.1" in line and "Fake GPU (CUDA 12.4)" in line
    assert "\n" not in line
