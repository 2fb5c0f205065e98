"""A sweep timed on an edge runtime: the job converts with --executorch (--litert) and judges compact.pte
(compact.tflite) on its own runtime, at the batch it was lowered at; the timing runs it; what else a
sweep asks of an edge runtime is refused before any job."""

from __future__ import annotations

import pytest

from compactify.cli.sweep_cmd import SWEEP_RUNTIMES
from compactify.errors import BadInputError
from compactify.harness.sweep.conversion_job import JobSpec, run_job
from compactify.harness.sweep.grid import (
    RUNTIMES,
    check_precisions,
    convert_flags,
    precision_target,
)
from compactify.harness.sweep.latency_job import time_points


def test_each_runtime_times_its_own_fp32_target():
    timed = {r: precision_target("fp32", r).file for r in RUNTIMES}
    assert timed == {"ort": "compact.onnx", "torch": "compact.pt2", "openvino": "compact.xml",
                     "executorch": "compact.pte", "litert": "compact.tflite"}
    assert "trt" not in RUNTIMES  # the sweep times on the cpu
    assert set(SWEEP_RUNTIMES) == set(RUNTIMES)  # the CLI's own list, said without importing a runtime
    assert convert_flags(("fp32",), "executorch") == {"onnx": False, "executorch": True}
    assert convert_flags(("fp32",), "litert") == {"onnx": False, "litert": True}
    assert convert_flags(("fp32", "fp16", "int8"), "ort") == {"onnx": True, "fp16": True, "int8": True}
    assert convert_flags(("fp32",), "torch") == {"onnx": False}


def test_precisions_executorch_has_not_are_refused():
    with pytest.raises(BadInputError, match="^--fp16 writes the fp16 ONNX model, which runs on ort: use --runtime ort"):
        check_precisions(("fp16",), "executorch")


@pytest.mark.parametrize("runtime, module, artifact", [("executorch", "executorch.runtime", "compact.pte"),
                                                       ("litert", "litert_torch", "compact.tflite")])
def test_a_job_on_an_edge_runtime_judges_and_times_its_file(tiny_digits, runtime, module, artifact):
    pytest.importorskip(module, reason=f"needs {module.split('.')[0]} (pip install compactify[edge])")
    assert check_precisions((), runtime) == ("fp32",)
    spec = JobSpec("job", tiny_digits.name, "none", ("fp32",), runtime, "digits")
    result = run_job(spec, tiny_digits.read_bytes())
    assert result["status"] == "ok", result.get("error")
    point = result["points"][0]
    assert point["artifact"] == artifact and artifact in result["files"]
    assert point["agreement"] == 1.0  # the contracted network is the untruncated one, run on the edge runtime
    timed = time_points([("p", artifact, artifact, {artifact: result["files"][artifact]}, result["input_shape"])],
                        runtime, [1], iters=3, warmup=1)
    assert timed["latency"]["1"]["p"]["p50_ms"] > 0
