"""TensorRT engines from int8 QDQ models (``convert --int8 --trt``, ``compactify engine compact.int8.onnx``).

As in test_tensorrt_build.py: here and everywhere against the recording stand-in of the TensorRT API
(strong typing, the INT8 flag only without it, the QDQ file parsed as it is, ONNX Runtime's form
refused), and on a machine with TensorRT and a GPU (``-m tensorrt``) a real engine compared with
ONNX Runtime running the same QDQ model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.backends.onnx_export import export_onnx
from compactify.converter.pipeline.contraction import contract
from compactify.errors import BadInputError
from compactify.runtimes import devices, open_runner
from compactify.runtimes.devices import tensorrt_missing
from compactify.targets import EngineSettings, Int8Settings, build_artifacts
from compactify.targets import int8_quantize as Q
from compactify.targets.tensorrt_build import build_engine
from test_int8 import SHAPE, Net, calib
from test_tensorrt_build import recorded  # noqa: F401  (the stand-in TensorRT, as a fixture)
from torch_compact import TorchCompact

TRT_MISSING = tensorrt_missing()
needs_tensorrt = pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")


@pytest.fixture(scope="module")
def qdq(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt8")
    export_onnx(Net().eval(), torch.randn(2, *SHAPE[1:]), folder / "net.onnx", exporter="torchscript", simplify=False)
    Q.quantize(folder / "net.onnx", folder / "trt.onnx", calib(), tensorrt=True)
    Q.quantize(folder / "net.onnx", folder / "ort.onnx", calib())
    return folder


def test_qdq_model_builds_strongly_typed_as_it_is(qdq, tmp_path, recorded):
    info = build_engine(qdq / "trt.onnx", tmp_path / "q.engine", max_batch=8)
    assert info.int8 and info.strongly_typed and not info.fp16
    assert recorded["network_flags"] == 1 << 5 and recorded["flags_set"] == []  # precision from the Q/DQ nodes
    assert info.network_layers == len(onnx.load(str(qdq / "trt.onnx")).graph.node)  # parsed unconverted
    assert onnx.TensorProto.INT8 in recorded["parsed_initializer_types"]
    assert any("explicit quantization" in w for w in info.warnings)
    assert info.as_dict()["int8"] is True


def test_int8_flag_only_without_strong_typing(qdq, tmp_path, recorded, monkeypatch):
    trt, _ = devices._import_tensorrt()
    monkeypatch.delattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    monkeypatch.setattr(trt.BuilderFlag, "INT8", "INT8", raising=False)
    info = build_engine(qdq / "trt.onnx", tmp_path / "q.engine")
    assert recorded["flags_set"] == ["INT8"] and not info.strongly_typed and info.int8


def test_onnxruntime_form_and_fp16_are_refused(qdq, tmp_path, recorded):
    with pytest.raises(BadInputError, match="non-zero zero points.*int32 DequantizeLinear.*--int8 --trt"):
        build_engine(qdq / "ort.onnx", tmp_path / "o.engine")
    with pytest.raises(BadInputError, match="drop --fp16"):
        build_engine(qdq / "trt.onnx", tmp_path / "h.engine", fp16=True)
    assert not (tmp_path / "o.engine").exists() and not (tmp_path / "h.engine").exists()


def test_engine_command_says_int8(qdq, tmp_path, recorded):
    result = CliRunner().invoke(main, ["engine", str(qdq / "trt.onnx"), "-o", str(tmp_path / "q.engine")])
    assert result.exit_code == 0, result.output
    assert ", int8, batch 1..32" in result.output


def test_int8_and_engine_build_the_engine_from_the_tensorrt_form(tmp_path, recorded):
    from compactify.models import build_model

    meta = {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.25, "hidden": 8}, "expand": "cl",
            "rate": 2, "input_shape": [1, 3, 8, 8], "training": {"dataset": "digits"}}
    torch.manual_seed(0)
    model = build_model(meta).eval()
    compact = TorchCompact(contract(model, (1, 3, 8, 8)).compact, model, (2, 3, 8, 8), meta)
    report = build_artifacts(compact, tmp_path, {"onnx": None, "onnx_int8": Int8Settings(),
                                                 "engine": EngineSettings(max_batch=8)})
    assert report["artifacts"]["engine"] == "compact.engine" and report["engine"]["int8"]
    assert report["int8"]["form"] == "tensorrt" and "symmetric" in report["int8"]["activations"]
    parsed = onnx.load(str(tmp_path / "compact.int8.onnx"))
    assert recorded["network_flags"] == 1 << 5
    assert report["engine"]["network_layers"] == len(parsed.graph.node)
    assert json.loads(json.dumps(report, default=str))["engine"]["int8"] is True


@pytest.mark.tensorrt
@needs_tensorrt
def test_real_int8_engine_matches_onnxruntime_on_the_same_qdq_model(qdq, tmp_path):
    import onnxruntime as ort

    info = build_engine(qdq / "trt.onnx", tmp_path / "q.engine", max_batch=16)
    assert info.int8 and info.layers >= 1
    x = calib(16, seed=3)
    ref = ort.InferenceSession(str(qdq / "trt.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with open_runner(info.path, "trt") as r:
        got = r.infer({"x": x})["y"]
    # The same scales on both; TensorRT may fuse differently (int8 accumulation, output rounding).
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.9
