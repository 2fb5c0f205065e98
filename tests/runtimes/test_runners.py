"""Runners: the same feeds give the same outputs through torch, ONNX Runtime and TensorRT;
bad feeds and bad files are one BadInputError each; GPU paths skip here with a reason."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compactify.errors import BadInputError, CompactifyError, MissingRuntimeError
from compactify.runtimes import RUNNERS, TensorSpec, object_runtime, open_runner, validate_feeds
from compactify.runtimes.devices import NEEDS_CUDA, ort_cuda_missing, tensorrt_missing
from compactify.runtimes.ort_runner import OrtRunner
from compactify.runtimes.torch_runner import TorchRunner

SHAPE = (1, 3, 8, 8)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NEEDS_CUDA)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 4 * 4, 4)
        self.aux = nn.Linear(6, 2)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1 / math.sqrt(max(p[0].numel(), 1)) if p.dim() > 1 else 0.2))
            self.bn.running_mean.uniform_(-0.2, 0.2, generator=gen)
            self.bn.running_var.uniform_(0.5, 1.5, generator=gen)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        pooled = nn.functional.max_pool2d(h, 2)
        return self.fc(pooled.flatten(1)), self.aux(h.mean((2, 3)))


@pytest.fixture(scope="module")
def net():
    return Net().eval()


@pytest.fixture(scope="module")
def onnx_file(net, tmp_path_factory):
    from compactify.converter.backends.onnx_export import export_onnx

    path = tmp_path_factory.mktemp("runners") / "net.onnx"
    export_onnx(net, torch.randn(SHAPE), path, output_names=("logits", "aux"), exporter="torchscript", simplify=False)
    return path


def feeds(n: int, dtype=np.float32, seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((n, *SHAPE[1:])).astype(dtype)}


def reference(net, x: np.ndarray) -> dict[str, np.ndarray]:
    """Independent float64 run of the same weights."""
    model = Net().double().eval()
    model.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in net.state_dict().items()})
    with torch.no_grad():
        logits, aux = model(torch.from_numpy(x.astype(np.float64)))
    return {"logits": logits.numpy(), "aux": aux.numpy()}


def assert_close(got: dict, ref: dict, rtol: float) -> None:
    assert set(got) == set(ref)
    for name in ref:
        scale = float(np.abs(ref[name]).max())
        assert scale > 1e-2
        np.testing.assert_allclose(got[name], ref[name], rtol=rtol, atol=rtol * scale)


# ------------------------------------------------------------------ torch + ORT on CPU


@pytest.mark.parametrize("n", [1, 7])
def test_ort_and_torch_runners_agree_with_float64_reference(net, onnx_file, n):
    x = feeds(n, seed=n)
    ref = reference(net, x["x"])
    with open_runner(onnx_file, "ort") as ort_runner:
        assert ort_runner.name == "ort" and ort_runner.device == "cpu"
        assert_close(ort_runner.infer(x), ref, rtol=1e-5)
    names = dict(output_names=("logits", "aux"), input_shape=SHAPE)
    with open_runner(net, **names) as t32:
        assert_close(t32.infer(x), ref, rtol=1e-5)
    with open_runner(net, dtype="float64", **names) as t64:
        got = t64.infer({"x": x["x"].astype(np.float64)})
        assert all(v.dtype == np.float64 for v in got.values())
        assert_close(got, ref, rtol=1e-12)


def test_specs_describe_the_model(net, onnx_file):
    with open_runner(onnx_file, "ort") as r:
        assert r.inputs == [TensorSpec("x", (None, 3, 8, 8), "float32")]
        assert r.outputs == [TensorSpec("logits", (None, 4), "float32"), TensorSpec("aux", (None, 2), "float32")]
    with open_runner(net, input_shape=SHAPE, output_names=("logits", "aux")) as t:
        assert t.inputs == [TensorSpec("x", (None, 3, 8, 8), "float32")]
        assert t.outputs == [TensorSpec("logits", (None, 4), "float32"), TensorSpec("aux", (None, 2), "float32")]


def test_torch_runner_without_shapes_learns_outputs_on_first_run(net):
    with open_runner(net) as t:
        assert t.inputs[0].shape is None
        with pytest.raises(CompactifyError, match="first infer"):
            t.outputs
        out = t.infer(feeds(2))
        assert list(out) == ["y0", "y1"]
        assert [s.name for s in t.outputs] == ["y0", "y1"]


def test_runner_leaves_the_callers_module_alone(net):
    model = Net().train()
    with open_runner(model, device="cpu", dtype="float64", input_shape=SHAPE):
        pass
    assert model.training and next(model.parameters()).dtype == torch.float32


def test_bind_runs_without_host_copies_and_matches_infer(net, onnx_file):
    x = feeds(3, seed=4)
    with open_runner(onnx_file, "ort", graph_optimization_level="disable", intra_op_threads=1, inter_op_threads=1) as r:
        expected = r.infer(x)
        run = r.bind(x)
        for _ in range(3):
            run()
        r.synchronize()
        # The IOBinding keeps the last outputs; they are the same as infer()'s.
        outs = dict(zip([o.name for o in r.outputs], r._binding.copy_outputs_to_cpu()))
        assert_close(outs, expected, rtol=1e-6)
    with open_runner(net, input_shape=SHAPE) as t:
        run = t.bind(x)
        run()
        t.synchronize()


@pytest.mark.parametrize("level", ["disable", "basic", "extended", "all"])
def test_ort_optimization_levels_give_the_same_outputs(net, onnx_file, level):
    x = feeds(2, seed=7)
    with OrtRunner(onnx_file, graph_optimization_level=level, intra_op_threads=1) as r:
        assert_close(r.infer(x), reference(net, x["x"]), rtol=1e-5)


def test_pt2_file(net, tmp_path):
    ep = torch.export.export(net, (torch.randn(2, *SHAPE[1:]),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "net.pt2"))
    with open_runner(tmp_path / "net.pt2", "torch", output_names=("logits", "aux")) as r:
        assert r.name == "torch"
        assert r.inputs[0].shape == (None, 3, 8, 8)
        x = feeds(5, seed=3)
        assert_close(r.infer(x), reference(net, x["x"]), rtol=1e-5)


# ------------------------------------------------------------------ bad feeds / bad files


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"z": np.zeros((1, 3, 8, 8), np.float32)}, r"unknown input\(s\) \['z'\] and missing input\(s\) \['x'\]"),
        ({}, r"missing input\(s\) \['x'\]"),
        ({"x": np.zeros((1, 3, 8, 8), np.float64)}, "dtype float64, expected float32"),
        ({"x": np.zeros((1, 3, 8, 9), np.float32)}, r"shape \(1, 3, 8, 9\), expected x: float32\[\?,3,8,8\]"),
        ({"x": np.zeros((3, 8, 8), np.float32)}, "shape"),
        ({"x": [[1.0]]}, "numpy array"),
    ],
)
@pytest.mark.parametrize("runtime", ["ort", "torch"])
def test_bad_feeds_are_bad_input(net, onnx_file, runtime, bad, match):
    runner = open_runner(onnx_file, "ort") if runtime == "ort" else open_runner(net, input_shape=SHAPE)
    with runner:
        with pytest.raises(BadInputError, match=match):
            runner.infer(bad)
        with pytest.raises(BadInputError):
            runner.bind(bad)


def test_feeds_must_agree_on_batch():
    specs = [TensorSpec("a", (None, 2), "float32"), TensorSpec("b", (None, 2), "float32")]
    with pytest.raises(BadInputError, match="disagree on the batch"):
        validate_feeds(specs, {"a": np.zeros((1, 2), np.float32), "b": np.zeros((2, 2), np.float32)})
    with pytest.raises(BadInputError, match="dict"):
        validate_feeds(specs, [np.zeros((1, 2), np.float32)])


def test_exported_program_pins_its_batch(net):
    ep = torch.export.export(net, (torch.randn(SHAPE),))  # captured at batch 1: the program only takes 1
    with open_runner(ep, input_names=("x",)) as r:
        assert r.inputs[0].shape == (1, 3, 8, 8)
        with pytest.raises(BadInputError, match=r"shape \(2, 3, 8, 8\)"):
            r.infer(feeds(2))
        assert r.infer(feeds(1))


def test_file_that_does_not_parse(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not protobuf \x00\xff")
    with pytest.raises(BadInputError, match="ONNX Runtime cannot load"):
        open_runner(bad, "ort")
    with pytest.raises(BadInputError, match="does not exist"):
        open_runner(tmp_path / "missing.onnx", "ort")


def test_pt2_that_does_not_load(tmp_path):
    (tmp_path / "x.pt2").write_bytes(b"junk")
    with pytest.raises(BadInputError, match="not a loadable"):
        open_runner(tmp_path / "x.pt2", "torch")


def test_factory_picks_the_runner_from_the_registry(net, tmp_path):
    assert list(RUNNERS) == ["torch", "ort", "trt", "openvino", "executorch", "litert"]
    assert object_runtime(net) == "torch"
    assert object_runtime(torch.export.export(net, (torch.randn(SHAPE),))) == "torch"
    with pytest.raises(BadInputError, match="cannot tell which runtime"):
        open_runner(tmp_path / "model.pt")
    with pytest.raises(BadInputError, match="unknown runtime"):
        open_runner(net, runtime="tvm")
    with pytest.raises(BadInputError, match="runs a file"):
        open_runner(net, runtime="ort")
    with pytest.raises(BadInputError, match="does not take option"):
        open_runner(net, colour="blue")
    with pytest.raises(BadInputError, match="graph optimization level"):
        open_runner("x.onnx", "ort", graph_optimization_level="max")
    with pytest.raises(BadInputError, match="float32 or float64"):
        open_runner(net, dtype="float16")


def test_runner_must_be_loaded(net, onnx_file):
    runner = OrtRunner(onnx_file)
    with pytest.raises(CompactifyError, match="not loaded"):
        runner.infer(feeds(1))
    runner.load()
    runner.close()
    assert not runner.loaded
    with pytest.raises(CompactifyError, match="not loaded"):
        runner.inputs


# ------------------------------------------------------------------ what is missing here is said, not traced


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a CUDA device")
def test_cuda_without_a_device_is_one_clear_error(net, onnx_file):
    with pytest.raises(MissingRuntimeError, match="needs a CUDA device"):
        open_runner(net, device="cuda")
    with pytest.raises(MissingRuntimeError, match="CUDA"):
        open_runner(onnx_file, "ort", device="cuda")


@pytest.mark.skipif(tensorrt_missing() is None, reason="checks the message shown without TensorRT")
def test_engine_without_tensorrt_is_one_clear_error(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\x00" * 64)
    with pytest.raises(MissingRuntimeError) as info:
        open_runner(engine, "trt")
    assert "\n" not in str(info.value)
    assert "TensorRT" in str(info.value) or "CUDA" in str(info.value)


# ------------------------------------------------------------------ GPU


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_runner_on_cuda(net, dtype):
    x = feeds(7, dtype=np.dtype(dtype), seed=11)
    ref = reference(net, x["x"].astype(np.float32))
    with open_runner(net, device="cuda", dtype=dtype, input_shape=SHAPE, output_names=("logits", "aux")) as r:
        # cuDNN may pick TF32 for fp32 convolutions; torch's default keeps it off for convs only on request.
        assert_close(r.infer(x), ref, rtol=1e-3 if dtype == "float32" else 1e-10)
        run = r.bind(x)
        run()
        r.synchronize()


@pytest.mark.cuda
@pytest.mark.skipif(ort_cuda_missing() is not None, reason=ort_cuda_missing() or "")
def test_ort_runner_on_cuda_with_iobinding(net, onnx_file):
    x = feeds(7, seed=12)
    with open_runner(onnx_file, "ort", device="cuda") as r:
        assert "CUDAExecutionProvider" in r.providers
        assert_close(r.infer(x), reference(net, x["x"]), rtol=1e-4)
        run = r.bind(x)
        run()
        r.synchronize()
