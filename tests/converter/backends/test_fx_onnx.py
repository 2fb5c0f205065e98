"""The fx writer (backends.fx_onnx): the ONNX it writes computes what the graph computes, judged
against the eager model in float64 on ONNX Runtime, at batches other than the captured one; it
matches torch.onnx.export's file; and what it does not write goes to torch.onnx.export, saying so."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactify.converter.backends import fx_onnx
from compactify.converter.backends.onnx_export import export_onnx
from compactify.converter.pipeline.contraction import contract
from compactify.converter.frontends.fx.capture import capture_graph
from compactify.registry import DuplicateRegistration
from compactify.tensors import flatten_outputs

REL = 1e-5


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if t.is_floating_point():
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * (0.5 if t.dim() > 1 else 0.2))
    return model.eval()


class ConvBlock(nn.Module):  # conv + BN + every activation the writer maps, pools, a residual
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.c = nn.Conv2d(8, 6, 3, stride=2)

    def forward(self, x):
        y = self.bn(self.a(x))
        y = F.relu6(y) + torch.sigmoid(self.b(y)) * 0.5 - F.hardswish(y) + F.silu(y) / 3.0
        y = F.gelu(F.leaky_relu(y, 0.1)) + torch.tanh(y).clamp(min=-0.5) + F.hardsigmoid(y)
        y = F.max_pool2d(y, 3, stride=1, padding=1) + F.avg_pool2d(y, 2, stride=1, padding=1)[..., 1:, 1:]
        return self.c(y).mean((2, 3), keepdim=True).flatten(1)


class Shuffle(nn.Module):  # ShuffleNet's split, shuffle and concat
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, self.conv(x)], dim=1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        p, q = torch.split(y, [3, 5], dim=1)
        return torch.cat([q, p, b], 1).permute(0, 2, 3, 1), F.adaptive_avg_pool2d(y, 1).flatten(1)


class Tokens(nn.Module):  # a linear layer on a 3-d input, layer norm, softmax
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        t = self.norm(self.proj(t)).softmax(-1)
        return self.head(t.mean(1))


CASES = {"convblock": (ConvBlock, (2, 3, 10, 10)), "shuffle": (Shuffle, (2, 8, 6, 6)), "tokens": (Tokens, (2, 8, 4, 4))}


def reference64(model, x: np.ndarray) -> list[np.ndarray]:
    double = copy.deepcopy(model).double()
    with torch.no_grad():
        return [o.numpy() for o in flatten_outputs(double(torch.from_numpy(x).double()))]


def ort_run(path, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def assert_close(got, ref, rel=REL):
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        scale = float(np.abs(r).max())
        assert scale > 1e-3  # a (nearly) zero reference would prove nothing
        assert float(np.abs(g - r).max()) <= rel * scale


@pytest.mark.parametrize("name", list(CASES))
def test_captured_graph_written_op_by_op_matches_float64(tmp_path, name):
    cls, shape = CASES[name]
    model = randomize(cls())
    gm = capture_graph(model, torch.randn(shape))
    result = export_onnx(gm, torch.randn(shape), tmp_path / "m.onnx", output_names=None)
    assert result.exporter == "fx" and result.fallback_reason is None and not result.warnings
    proto = onnx.load(str(tmp_path / "m.onnx"))
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    for n in (1, 5):  # neither is the captured batch
        x = np.random.default_rng(n).standard_normal((n, *shape[1:])).astype(np.float32)
        assert_close(ort_run(tmp_path / "m.onnx", x), reference64(model, x))


@pytest.mark.parametrize("name", list(CASES))
def test_same_outputs_as_torch_onnx_export(tmp_path, name):
    cls, shape = CASES[name]
    model = randomize(cls(), seed=3)
    gm = capture_graph(model, torch.randn(shape))
    ours = export_onnx(gm, torch.randn(shape), tmp_path / "fx.onnx", exporter="fx")
    theirs = export_onnx(gm, torch.randn(shape), tmp_path / "dynamo.onnx", exporter="dynamo")
    assert (ours.exporter, theirs.exporter) == ("fx", "dynamo")
    x = np.random.default_rng(7).standard_normal((3, *shape[1:])).astype(np.float32)
    assert_close(ort_run(tmp_path / "fx.onnx", x), ort_run(tmp_path / "dynamo.onnx", x), rel=1e-6)


def test_contracted_model_with_padded_merge(tmp_path):
    """A merged region whose padding a conv cannot take (nn.Sequential(ConstantPad2d, Conv2d))."""
    model = randomize(nn.Sequential(nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, (3, 1), padding=(1, 0)),
                                    nn.ReLU(), nn.Flatten(), nn.Linear(6 * 8 * 8, 4), nn.Linear(4, 3)))
    r = contract(model, (1, 3, 8, 8))
    assert any(d.kind == "dense" for d in r.decisions)
    result = export_onnx(r.compact, r.source.example, tmp_path / "c.onnx")
    assert result.exporter == "fx"
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    assert_close(ort_run(tmp_path / "c.onnx", x), reference64(model, x))


def test_a_second_writer_for_an_op_is_refused():
    writer = fx_onnx.WRITER_OPS[torch.ops.aten.relu.default]
    with pytest.raises(DuplicateRegistration, match="relu"):
        fx_onnx.WRITER_OPS.register(torch.ops.aten.relu.default)(lambda w, node, x: x)
    assert fx_onnx.WRITER_OPS[torch.ops.aten.relu.default] is writer


class Unwritten(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, dim=1)


def test_unwritten_op_falls_back_to_torch_onnx_export(tmp_path):
    gm = capture_graph(Unwritten().eval(), torch.randn(2, 3, 4))
    with pytest.raises(fx_onnx.Unsupported, match="cumsum"):
        fx_onnx.to_onnx(gm, [torch.randn(2, 3, 4)], ["x"], ["y"], 18, True)
    result = export_onnx(gm, torch.randn(2, 3, 4), tmp_path / "u.onnx")
    assert result.exporter == "dynamo" and "fx writer does not write op aten.cumsum" in result.fallback_reason
    x = np.random.default_rng(0).standard_normal((3, 3, 4)).astype(np.float32)
    assert_close(ort_run(tmp_path / "u.onnx", x), [np.cumsum(x.astype(np.float64), axis=1)])


def test_eager_module_goes_to_torch_exporters_without_a_fallback(tmp_path):
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
    result = export_onnx(model, torch.randn(1, 3, 6, 6), tmp_path / "e.onnx", simplify=False)
    assert result.exporter == "dynamo" and result.fallback_reason is None


class Passthrough(nn.Module):
    def forward(self, x):
        return x, x.relu()


def test_output_that_is_the_input_keeps_both_names(tmp_path):
    gm = capture_graph(Passthrough().eval(), torch.randn(2, 3))
    result = export_onnx(gm, torch.randn(2, 3), tmp_path / "p.onnx", output_names=["same", "pos"], simplify=False)
    assert result.exporter == "fx"
    proto = onnx.load(str(tmp_path / "p.onnx"))
    assert [o.name for o in proto.graph.output] == ["same", "pos"] and proto.graph.input[0].name == "x"
    x = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    same, pos = ort_run(tmp_path / "p.onnx", x)
    assert np.array_equal(same, x) and np.array_equal(pos, np.maximum(x, 0))
