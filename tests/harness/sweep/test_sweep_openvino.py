"""A sweep on OpenVINO (--runtime openvino): a worker's job converts to the IR and judges it on OpenVINO, and
the latency task times the IR from the files the job sent back (its .bin with it). The jobs run here in
this process, as Ray would run them in a worker: the Ray sweep itself is tested in test_sweep_ray."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from compactify.errors import BadInputError
from compactify.harness.sweep.conversion_job import JobSpec, run_job
from compactify.harness.sweep.grid import check_precisions, convert_flags, precision_target
from compactify.harness.sweep.latency_job import time_points

# The registry's choices need no OpenVINO; converting and timing do.
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                    reason="the OpenVINO target needs openvino (pip install compactify[edge])")


def test_the_openvino_runtime_times_the_ir_and_refuses_other_precisions():
    assert precision_target("fp32", "openvino").file == "compact.xml"
    with pytest.raises(BadInputError, match="--fp16 writes the fp16 ONNX model, which runs on ort: use --runtime ort"):
        check_precisions(["fp16"], "openvino")


@needs_openvino
def test_a_point_on_openvino_is_converted_judged_and_timed_from_its_files(tiny_digits):
    assert check_precisions([], "openvino") == ("fp32",)
    spec = JobSpec(id="tiny-none", checkpoint_name="tiny.pt", budget="none", precisions=("fp32",), runtime="openvino",
                   data="digits")
    result = run_job(spec, Path(tiny_digits).read_bytes())
    assert result["status"] == "ok", result.get("error")
    (point,) = result["points"]
    assert point["artifact"] == "compact.xml"
    assert point["agreement"] == 1.0  # the exact compact IR predicts what the source predicts
    files = result["files"]
    assert {"compact.xml", "compact.bin", "compact.onnx"} <= set(files)
    shipped = {name: files[name] for name in ("compact.xml", "compact.bin")}
    timed = time_points([("tiny-none:fp32", "tiny none fp32", "compact.xml", shipped, result["input_shape"])],
                        "openvino", [1, 3], threads=1, iters=2, warmup=0)
    assert timed["runtime"] == "openvino" and timed["threads"] == 1
    for batch in ("1", "3"):
        assert timed["latency"][batch]["tiny-none:fp32"]["p50_ms"] > 0


def test_int8_on_openvino_is_the_ir_of_the_int8_model():
    assert precision_target("int8", "openvino").file == "compact.int8.xml"
    assert convert_flags(("fp32", "int8"), "openvino") == {"onnx": True, "openvino": True, "int8": True}


@needs_openvino
def test_an_int8_point_on_openvino_is_converted_and_judged(tiny_digits):
    assert check_precisions(["int8"], "openvino") == ("fp32", "int8")
    spec = JobSpec(id="tiny-none", checkpoint_name="tiny.pt", budget="none", precisions=("fp32", "int8"),
                   runtime="openvino", data="digits")
    result = run_job(spec, Path(tiny_digits).read_bytes())
    assert result["status"] == "ok", result.get("error")
    fp32, int8 = result["points"]
    assert (fp32["artifact"], int8["artifact"]) == ("compact.xml", "compact.int8.xml")
    assert int8["agreement"] >= 0.9  # int8 on the digits test split, against the source's own predictions
    assert {"compact.int8.xml", "compact.int8.bin"} <= set(result["files"])
