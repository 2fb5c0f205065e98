"""TensorRT engine building and running.

Three layers of tests:
- here and everywhere: without TensorRT or CUDA the API and the ``engine`` command fail with
  one line and exit 2; bad arguments fail before TensorRT is even needed;
- here and everywhere: ``build_engine`` drives a stand-in of the TensorRT Python API that
  records every call, so the profile, workspace, TF32, strong typing, timing-cache and fp16
  logic is checked without a GPU (it checks our calls against the documented API names, not
  TensorRT itself);
- on a machine with TensorRT and a GPU (``-m tensorrt``): real engines, run by TrtRunner and
  compared with ONNX Runtime at batch 1 and 7.
"""

from __future__ import annotations

import json
import math
import types

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from compactify.cli import main
from compactify.converter.backends.onnx_export import export_onnx
from compactify.targets.tensorrt_build import build_engine
from compactify.errors import BadInputError, MissingRuntimeError
from compactify.runtimes import devices, open_runner
from compactify.runtimes.devices import tensorrt_missing

SHAPE = (1, 3, 8, 8)
TRT_MISSING = tensorrt_missing()
needs_tensorrt = pytest.mark.skipif(TRT_MISSING is not None, reason=TRT_MISSING or "")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                scale = 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1
                p.copy_(torch.randn(p.shape, generator=gen) * scale)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h) + h)
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    net = Net().eval()
    dynamic = export_onnx(net, torch.randn(SHAPE), folder / "net.onnx", exporter="torchscript", simplify=False).path
    static = export_onnx(net, torch.randn(SHAPE), folder / "static.onnx", exporter="torchscript", simplify=False,
                         dynamic_batch=False).path
    return net, dynamic, static


# ------------------------------------------------------------------ without TensorRT


@pytest.mark.skipif(TRT_MISSING is None, reason="checks the behaviour without TensorRT or CUDA")
def test_engine_command_without_tensorrt_exits_2_with_one_line(onnx_files, tmp_path):
    _, dynamic, _ = onnx_files
    result = CliRunner().invoke(main, ["engine", str(dynamic), "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "TensorRT" in lines[0] or "CUDA" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "m.engine").exists()


@pytest.mark.skipif(TRT_MISSING is None, reason="checks the behaviour without TensorRT or CUDA")
def test_build_engine_without_tensorrt_raises_missing_runtime(onnx_files, tmp_path):
    _, dynamic, _ = onnx_files
    with pytest.raises(MissingRuntimeError):
        build_engine(dynamic, tmp_path / "m.engine")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_batch": 4, "max_batch": 2}, "1 <= min <= opt <= max"),
        ({"min_batch": 0}, "1 <= min"),
        ({"opt_batch": 8, "max_batch": 4}, "opt 8"),
        ({"workspace_mb": 0}, "workspace"),
    ],
)
def test_bad_arguments_fail_before_tensorrt_is_needed(onnx_files, tmp_path, kwargs, match):
    _, dynamic, _ = onnx_files
    with pytest.raises(BadInputError, match=match):
        build_engine(dynamic, tmp_path / "m.engine", **kwargs)


def test_missing_onnx_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        build_engine(tmp_path / "none.onnx", tmp_path / "m.engine")
    result = CliRunner().invoke(main, ["engine", str(tmp_path / "none.onnx")])
    assert result.exit_code == 2 and result.output.count("\n") == 1


def test_engine_command_refuses_to_overwrite(onnx_files, tmp_path):
    _, dynamic, _ = onnx_files
    (tmp_path / "m.engine").write_bytes(b"old")
    result = CliRunner().invoke(main, ["engine", str(dynamic), "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 2 and "--force" in result.output
    assert (tmp_path / "m.engine").read_bytes() == b"old"


# ------------------------------------------------------------------ against a recording stand-in of the API


def fake_tensorrt(record: dict) -> types.ModuleType:
    """The part of the TensorRT 10 Python API that build_engine and TrtRunner use, recording calls."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"

    class ILogger:
        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self):
            pass

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class BuilderFlag:
        TF32 = "TF32"
        FP16 = "FP16"

    class MemoryPoolType:
        WORKSPACE = "WORKSPACE"

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, shape

    class Network:
        def __init__(self, flags):
            record["network_flags"] = flags
            self.inputs, self.num_layers = [], 0

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class ParserError:
        def __init__(self, text):
            self.text = text

        def desc(self):
            return self.text

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse(self, data, path=None):
            try:
                model = onnx.load_from_string(data)
            except Exception:
                self.errors.append(ParserError("Failed to parse ONNX model"))
                return False
            record["parsed_initializer_types"] = sorted({t.data_type for t in model.graph.initializer})
            for value in model.graph.input:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
                self.network.inputs.append(Tensor(value.name, dims))
            self.network.num_layers = len(model.graph.node)
            return True

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            record.setdefault("profile", {})[name] = (tuple(lo), tuple(opt), tuple(hi))

    class TimingCache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timing"

    class Config:
        def __init__(self):
            self.cache = None
            record["flags_cleared"], record["flags_set"], record["profiles"] = [], [], 0

        def set_memory_pool_limit(self, pool, size):
            record["pool"] = (pool, size)

        def clear_flag(self, flag):
            record["flags_cleared"].append(flag)

        def set_flag(self, flag):
            record["flags_set"].append(flag)

        def add_optimization_profile(self, profile):
            record["profiles"] += 1

        def create_timing_cache(self, blob):
            record.setdefault("cache_blobs", []).append(bytes(blob))
            return TimingCache(blob)

        def set_timing_cache(self, cache, ignore_mismatch):
            record["ignore_mismatch"] = ignore_mismatch
            self.cache = cache
            return not cache.blob.startswith(b"foreign")

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE" + json.dumps({"layers": network.num_layers}).encode()

    class Engine:
        def __init__(self, layers):
            self.num_layers = layers

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, blob):
            if not bytes(blob).startswith(b"ENGINE"):
                self.logger.log(ILogger.Severity.ERROR, "Serialization assertion failed: engine plan from another version")
                return None
            return Engine(max(1, json.loads(bytes(blob)[6:])["layers"] - 1))

    for obj in (ILogger, NetworkDefinitionCreationFlag, BuilderFlag, MemoryPoolType, Builder, OnnxParser, Runtime):
        setattr(trt, obj.__name__, obj)
    return trt


@pytest.fixture
def recorded(monkeypatch):
    record: dict = {}
    trt = fake_tensorrt(record)
    monkeypatch.setattr(devices, "_import_tensorrt", lambda: (trt, None))
    monkeypatch.setattr(devices, "cuda_available", lambda: True)
    return record


def test_build_flow_against_the_api(onnx_files, tmp_path, recorded):
    _, dynamic, _ = onnx_files
    cache = tmp_path / "timing.cache"
    info = build_engine(dynamic, tmp_path / "m.engine", min_batch=1, opt_batch=4, max_batch=16, workspace_mb=256, timing_cache=cache)
    assert recorded["profile"] == {"x": ((1, 3, 8, 8), (4, 3, 8, 8), (16, 3, 8, 8))}
    assert recorded["profiles"] == 1
    assert recorded["pool"] == ("WORKSPACE", 256 << 20)
    assert recorded["flags_cleared"] == ["TF32"] and recorded["flags_set"] == []
    assert recorded["network_flags"] == 1 << 5  # strongly typed
    assert recorded["ignore_mismatch"] is False
    assert (tmp_path / "m.engine").read_bytes().startswith(b"ENGINE")
    assert info.min_batch == 1 and info.opt_batch == 4 and info.max_batch == 16
    assert info.network_layers == len(onnx.load(str(dynamic)).graph.node) and info.layers >= 1
    assert info.strongly_typed and not info.fp16 and info.build_seconds >= 0
    assert not info.timing_cache_reused and cache.read_bytes() == b"+timing"
    # A second build loads the saved cache and saves it again with what it learned.
    again = build_engine(dynamic, tmp_path / "m2.engine", timing_cache=cache)
    assert again.timing_cache_reused and recorded["cache_blobs"][-1] == b"+timing"
    assert cache.read_bytes() == b"+timing+timing"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_foreign_timing_cache_is_replaced(onnx_files, tmp_path, recorded):
    _, dynamic, _ = onnx_files
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"foreign-cache")
    info = build_engine(dynamic, tmp_path / "m.engine", timing_cache=cache)
    assert not info.timing_cache_reused
    assert any("does not match" in w for w in info.warnings)
    assert cache.read_bytes() == b"+timing"


def test_static_batch_has_no_profile(onnx_files, tmp_path, recorded):
    _, _, static = onnx_files
    info = build_engine(static, tmp_path / "s.engine", max_batch=8)
    assert "profile" not in recorded and recorded["profiles"] == 0
    assert info.min_batch is None and info.max_batch is None
    assert any("static" in w for w in info.warnings)


def test_fp16_builds_from_an_fp16_graph(onnx_files, tmp_path, recorded):
    _, dynamic, _ = onnx_files
    info = build_engine(dynamic, tmp_path / "h.engine", fp16=True)
    assert info.fp16
    assert recorded["parsed_initializer_types"] == [onnx.TensorProto.FLOAT16]
    assert recorded["flags_set"] == []  # strong typing: precision comes from the graph, not a flag
    assert any("converted" in w for w in info.warnings)


def test_fp16_flag_only_without_strong_typing(onnx_files, tmp_path, recorded, monkeypatch):
    _, dynamic, _ = onnx_files
    trt, _ = devices._import_tensorrt()
    monkeypatch.delattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
    info = build_engine(dynamic, tmp_path / "h.engine", fp16=True)
    assert recorded["flags_set"] == ["FP16"] and recorded["network_flags"] == 0 and not info.strongly_typed


def test_unparseable_onnx_is_bad_input(tmp_path, recorded):
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(BadInputError, match="TensorRT cannot parse"):
        build_engine(tmp_path / "junk.onnx", tmp_path / "m.engine")
    assert not (tmp_path / "m.engine").exists()


def test_engine_command_reports_layers_and_time(onnx_files, tmp_path, recorded):
    _, dynamic, _ = onnx_files
    result = CliRunner().invoke(main, ["engine", str(dynamic), "-o", str(tmp_path / "m.engine"), "--max-batch", "8",
                                       "--timing-cache", str(tmp_path / "t.cache")])
    assert result.exit_code == 0, result.output
    assert "layers" in result.output and "built in" in result.output and "batch 1..8" in result.output
    assert (tmp_path / "t.cache").exists()


def test_engine_from_another_version_is_bad_input(tmp_path, recorded):
    engine = tmp_path / "other.engine"
    engine.write_bytes(b"PLAN-from-TensorRT-8")
    with pytest.raises(BadInputError, match="another GPU or TensorRT version") as info:
        open_runner(engine, "trt")
    assert "compactify engine" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ real TensorRT


def ort_run(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.tensorrt
@needs_tensorrt
def test_real_engine_matches_onnxruntime(onnx_files, tmp_path):
    _, dynamic, _ = onnx_files
    info = build_engine(dynamic, tmp_path / "m.engine", min_batch=1, opt_batch=4, max_batch=8, timing_cache=tmp_path / "t.cache")
    assert info.layers >= 1 and info.path.stat().st_size > 0
    with open_runner(info.path, "trt") as r:
        assert r.name == "trt" and r.inputs[0].shape == (None, 3, 8, 8)
        for n in (1, 7):
            x = np.random.default_rng(n).standard_normal((n, 3, 8, 8)).astype(np.float32)
            ref = ort_run(dynamic, x)
            got = r.infer({"x": x})["y"]
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        run = r.bind({"x": x})
        run()
        r.synchronize()
        with pytest.raises(BadInputError, match="outside the engine's profile"):
            r.infer({"x": np.zeros((9, 3, 8, 8), np.float32)})
    again = build_engine(dynamic, tmp_path / "m2.engine", min_batch=1, opt_batch=4, max_batch=8, timing_cache=tmp_path / "t.cache")
    assert again.timing_cache_reused


@pytest.mark.tensorrt
@needs_tensorrt
def test_real_fp16_engine_is_close(onnx_files, tmp_path):
    _, dynamic, _ = onnx_files
    info = build_engine(dynamic, tmp_path / "h.engine", fp16=True, max_batch=8)
    x = np.random.default_rng(3).standard_normal((7, 3, 8, 8)).astype(np.float32)
    with open_runner(info.path, "trt") as r:
        assert r.inputs[0].dtype == "float32"
        got = r.infer({"x": x})["y"]
    ref = ort_run(dynamic, x)
    assert np.abs(got - ref).max() <= 1e-2 * np.abs(ref).max()


@pytest.mark.tensorrt
@needs_tensorrt
def test_real_static_engine_and_corrupt_engine(onnx_files, tmp_path):
    _, _, static = onnx_files
    info = build_engine(static, tmp_path / "s.engine")
    assert info.min_batch is None
    with open_runner(info.path, "trt") as r:
        assert r.inputs[0].shape == (1, 3, 8, 8)
        with pytest.raises(BadInputError):
            r.infer({"x": np.zeros((2, 3, 8, 8), np.float32)})
    blob = bytearray(info.path.read_bytes())
    blob[: len(blob) // 2] = bytes(len(blob) // 2)
    (tmp_path / "bad.engine").write_bytes(bytes(blob))
    with pytest.raises(BadInputError, match="another GPU or TensorRT version"):
        open_runner(tmp_path / "bad.engine", "trt")


@pytest.mark.tensorrt
@needs_tensorrt
def test_real_engine_command(onnx_files, tmp_path):
    _, dynamic, _ = onnx_files
    result = CliRunner().invoke(main, ["engine", str(dynamic), "-o", str(tmp_path / "m.engine"), "--max-batch", "4"])
    assert result.exit_code == 0, result.output
    assert "layers" in result.output and (tmp_path / "m.engine").exists()
