"""Cross-layer equalization is an exact rescaling: checked in float64 over random layer pairs of every
grouping, kernel and activation slope, then on an ONNX graph run by ONNX Runtime."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compactify.converter.backends.onnx_export import export_onnx
from compactify.targets import int8_equalize as E


@st.composite
def layer_pairs(draw):
    g1 = draw(st.sampled_from([1, 2]))
    cin = g1 * draw(st.integers(1, 3))
    g2 = draw(st.sampled_from([1, 2, 3]))
    mid = g1 * g2 * draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    g2 = mid if depthwise else g2
    cout = g2 * draw(st.integers(1, 3))
    k1, k2 = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 3]))
    seed = draw(st.integers(0, 2**31 - 1))
    slope = draw(st.sampled_from([0.0, 0.1, 0.3]))
    return cin, mid, cout, g1, g2, k1, k2, seed, slope


@settings(max_examples=60, deadline=None)
@given(layer_pairs())
def test_equalized_pair_computes_the_same_function_in_float64(case):
    cin, mid, cout, g1, g2, k1, k2, seed, slope = case
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(mid, cin // g1, k1, k1, generator=g, dtype=torch.float64)
    w1[0] *= 50  # one channel far wider, as merged branches make them
    b1 = torch.randn(mid, generator=g, dtype=torch.float64)
    w2 = torch.randn(cout, mid // g2, k2, k2, generator=g, dtype=torch.float64)
    x = torch.randn(2, cin, 7, 7, generator=g, dtype=torch.float64)

    def net(a, b, c):
        return F.conv2d(F.leaky_relu(F.conv2d(x, a, b, padding=1, groups=g1), slope), c, groups=g2)

    s = E.equalization_scales(w1.numpy(), w2.numpy(), g2)
    assert np.all(s > 0)
    e1, eb, e2 = E.equalize_pair(w1.numpy(), b1.numpy(), w2.numpy(), g2, s)
    ref, got = net(w1, b1, w2), net(torch.from_numpy(e1), torch.from_numpy(eb), torch.from_numpy(e2))
    assert torch.allclose(got, ref, rtol=1e-12, atol=1e-12 * ref.abs().max())
    # The ranges meet: channel i of the first and input channel i of the second now have one max |w|.
    r1 = np.abs(e1.reshape(mid, -1)).max(1)
    r2 = np.abs(E.input_channel_view(e2, g2)).max(1)
    np.testing.assert_allclose(r1, r2, rtol=1e-12)


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c = nn.Conv2d(8, 6, 1)
        self.d = nn.Conv2d(6, 4, 3, padding=1)
        with torch.no_grad():
            self.a.weight[2] *= 40
            self.c.weight[1] *= 20

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = F.leaky_relu(self.b(h), 0.2)
        h = torch.clamp(self.c(h), 0, 6)  # ReLU6: not homogeneous, so c -> d is no pair
        return self.d(h)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {model.graph.input[0].name: x})[0]


def _exported(model: nn.Module, shape: tuple[int, ...], path) -> onnx.ModelProto:
    """``model`` as ONNX (the torchscript exporter, unsimplified: its Conv/Relu nodes as they are)."""
    export_onnx(model, torch.randn(*shape), path, exporter="torchscript", simplify=False)
    return onnx.load(str(path))


def _rel_error_to_float64(proto: onnx.ModelProto, model: nn.Module, x: np.ndarray) -> float:
    """The ONNX model run by ONNX Runtime against the PyTorch model run in float64."""
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(torch.from_numpy(x).double()).numpy()
    return float(np.abs(_run(proto, x) - ref).max() / np.abs(ref).max())


def _spread(w: np.ndarray) -> float:
    peak = np.abs(w.reshape(w.shape[0], -1)).max(1)
    return float(peak.max() / np.median(peak))


def test_graph_pass_equalizes_the_homogeneous_pairs_and_keeps_the_outputs(tmp_path):
    torch.manual_seed(0)
    model = Chain().eval()
    path = tmp_path / "chain.onnx"
    proto = _exported(model, (1, 3, 9, 9), path)
    before = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    info = E.equalize_graph(proto)
    assert info["pairs"] == 2 and info["largest_scale_ratio"] > 3, info  # a -> b and b -> c; not c -> d
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 9)).astype(np.float32)
    assert _rel_error_to_float64(proto, model, x) < 1e-6
    assert _rel_error_to_float64(onnx.load(str(path)), model, x) < 1e-6
    after = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    wide = next(n for n, v in before.items() if v.ndim == 4 and v.shape[0] == 8 and v.shape[1] == 3)
    # The planted wide channel of a handed range to b: its spread over the median channel shrank.
    assert _spread(after[wide]) < _spread(before[wide]) / 3


def test_no_pair_when_the_middle_tensor_has_another_reader(tmp_path):
    class Fork(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + h  # h is read twice: rescaling it would change the sum

    assert E.find_pairs(_exported(Fork().eval(), (1, 3, 4, 4), tmp_path / "fork.onnx")) == []


class PoolThenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b = nn.Conv2d(6, 5, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(5 * 4 * 4, 7), nn.Linear(7, 3)
        with torch.no_grad():
            self.a.weight[4] *= 30
            self.fc1.weight[2] *= 30

    def forward(self, x):
        h = F.max_pool2d(torch.relu(self.a(x)), 2)  # a max between the pair commutes with the scales
        h = torch.relu(self.b(h)).flatten(1)  # a flatten spreads b's channels over features: no pair
        return self.fc2(torch.relu(self.fc1(h)))


def test_pairs_through_a_maxpool_and_between_linears(tmp_path):
    torch.manual_seed(0)
    model = PoolThenLinear().eval()
    proto = _exported(model, (1, 3, 8, 8), tmp_path / "pool.onnx")
    ops = {n.name: n.op_type for n in proto.graph.node}
    pairs = E.find_pairs(proto)
    assert [(ops[p.first], ops[p.second]) for p in pairs] == [("Conv", "Conv"), ("Gemm", "Gemm")]
    E.equalize_graph(proto)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert _rel_error_to_float64(proto, model, x) < 1e-6
