"""The fx writer (backends.fx_onnx): the ONNX it writes computes what the graph computes, judged
against the eager model in float64 on ONNX Runtime, at batches other than the captured one; it
matches torch.onnx.export's file; and what it does not write goes to torch.onnx.export, saying so."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from compactify.converter.backends import fx_onnx
from compactify.converter.backends.onnx_export import (
    export_model,
    export_onnx,
    torch_to_onnx,
)
from compactify.converter.frontends.fx.capture import capture_graph
from compactify.converter.pipeline.contraction import contract
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
    report_entry = torch_to_onnx(gm, torch.randn(2, 3, 4), ["x"], ["y"], {}).info  # report.json's "onnx"
    assert report_entry["exporter"] == "dynamo" and "does not write op aten.cumsum" in report_entry["fallback_reason"]


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


# --------------------------------------------------------------------------- ops of public models
# Each module below is captured, written by the fx writer alone (exporter="fx": no fallback) and run
# on ONNX Runtime at a batch other than the captured one, against PyTorch.


def written(model: nn.Module, shape, opset: int = 18) -> onnx.ModelProto:
    gm = capture_graph(model.eval(), torch.randn(shape))
    proto, result = export_model(gm, torch.randn(shape), exporter="fx", simplify=False, opset=opset)
    assert result.exporter == "fx" and result.fallback_reason is None
    return proto


def ort_outputs(proto: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def check_written(model: nn.Module, shape, rel=REL, opset: int = 18, exact: bool = False) -> onnx.ModelProto:
    """``exact``: ops that only move or pick elements, whose output must equal torch's bit for bit."""
    proto = written(model, shape, opset)
    x = np.random.default_rng(11).standard_normal((3, *shape[1:])).astype(np.float32)
    got = ort_outputs(proto, x)
    if exact:
        with torch.no_grad():
            ref = [o.numpy() for o in flatten_outputs(model(torch.from_numpy(x)))]
        assert len(got) == len(ref) and all(np.array_equal(g, r) for g, r in zip(got, ref))
    else:
        assert_close(got, reference64(model, x), rel)
    return proto


def op_types(proto: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in proto.graph.node}


class Resized(nn.Module):
    def __init__(self, mode="nearest", **kwargs):
        super().__init__()
        self.mode, self.kwargs = mode, kwargs

    def forward(self, x):
        return F.interpolate(x, mode=self.mode, **self.kwargs)


@pytest.mark.parametrize("shape,kwargs,op", [
    ((2, 3, 4, 5), {"scale_factor": 2}, "Resize"),
    ((2, 3, 4, 5), {"scale_factor": (3, 1)}, "Resize"),
    ((2, 3, 4, 5), {"size": (8, 15)}, "Resize"),
    ((2, 3, 4, 5), {"size": (5, 7)}, "Gather"),
    ((2, 3, 9, 6), {"scale_factor": 1.7}, "Gather"),
    ((2, 3, 9, 6), {"size": (4, 3)}, "Gather"),
    ((2, 3, 9, 6), {"size": (13, 6), "mode": "nearest-exact"}, "Gather"),
    ((2, 3, 7), {"scale_factor": 2.5}, "Gather"),
    ((2, 2, 3, 4, 2), {"scale_factor": 2}, "Resize"),
])
def test_upsample_nearest_picks_torchs_source_pixels(shape, kwargs, op):
    kwargs = dict(kwargs)
    model = Resized(kwargs.pop("mode", "nearest"), **kwargs)
    assert op in op_types(check_written(model, shape, exact=True))


def test_upsample_module_as_yolo_uses_it():
    check_written(nn.Sequential(nn.Conv2d(3, 4, 1), nn.Upsample(scale_factor=2, mode="nearest")), (2, 3, 5, 6))


class Picks(nn.Module):  # unbind, select, stack, integer indexing of a weight by a constant buffer
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.randn(3, 10))
        self.register_buffer("idx", torch.tensor([[0, 9, 4], [-1, 2, 2]]))
        self.register_buffer("idx32", torch.tensor([1, 0, 3], dtype=torch.int32))
        self.register_buffer("rows", torch.tensor([[1], [0]]))
        self.register_buffer("chans", torch.tensor([2, 0, -3]))

    def forward(self, x):  # x: [N, 3, 4, 5]
        a, b, c = x.unbind(1)
        y = torch.stack([c, a * b], dim=-1) + x[:, 1, :, 2, None, None]
        z = x[:, :, self.idx32] + x[..., -1].unsqueeze(-1)[:, :, :3]  # one index tensor (int32)
        bias = self.bias[:, self.idx]  # LeViT's attention biases
        front = x.permute(1, 2, 0, 3)[self.rows.expand(2, 3), self.idx32.view(1, 3)]  # several, broadcast, first
        inner = x[:, self.chans, self.idx32]  # adjacent, after a full axis
        apart = x[:, self.chans, :, self.idx32]  # not adjacent: the index dimensions go first
        return y, z, x[:, :, :2, :3] + bias, front, inner, apart


def test_unbind_select_stack_and_integer_indexing():
    proto = check_written(Picks(), (2, 3, 4, 5))
    assert {"Split", "Squeeze", "Gather", "GatherND"} <= op_types(proto)


class Padded(nn.Module):
    def __init__(self, pad, mode, value=0.0):
        super().__init__()
        self.pad, self.mode, self.value = pad, mode, value

    def forward(self, x):
        if self.mode == "constant":
            return F.pad(x, self.pad, value=self.value) * 2.0
        return F.pad(x, self.pad, mode=self.mode) * 2.0


@pytest.mark.parametrize("shape,pad,mode", [
    ((2, 3, 5), (1, 2), "constant"), ((2, 3, 4, 5), (1, 2, 0, 3), "constant"), ((2, 3, 4, 5), (2, 1, 3, 2), "reflect"),
    ((2, 3, 7), (3, 0), "reflect"), ((2, 3, 4, 5), (0, 2, 1, 1), "replicate"), ((2, 2, 3, 4, 5), (1, 0, 2, 1, 1, 2), "replicate"),
    ((2, 2, 3, 4, 5), (1, 1, 2, 0, 0, 1), "reflect"), ((2, 3, 4, 5), (1, 2, 2, 1), "circular")])
def test_pad_modes(shape, pad, mode):
    opset = 19 if mode == "circular" else 18  # ONNX Pad's "wrap" came with opset 19
    check_written(Padded(pad, mode, value=-1.5), shape, opset=opset)


def test_circular_pad_before_opset_19_falls_back(tmp_path):
    gm = capture_graph(Padded((1, 1, 1, 1), "circular").eval(), torch.randn(2, 3, 4, 4))
    result = export_onnx(gm, torch.randn(2, 3, 4, 4), tmp_path / "c.onnx", simplify=False)
    assert result.exporter == "dynamo" and "pad in mode 'circular' at opset 18" in result.fallback_reason


@pytest.mark.parametrize("groups,channels,affine,shape", [
    (2, 6, True, (2, 6, 5, 4)), (1, 4, False, (2, 4, 3, 3)), (4, 4, True, (2, 4, 7)), (3, 6, True, (2, 6, 2, 3, 2))])
def test_group_norm(groups, channels, affine, shape):
    norm = nn.GroupNorm(groups, channels, affine=affine)
    check_written(randomize(nn.Sequential(nn.Conv1d(channels, channels, 1) if len(shape) == 3 else nn.Identity(), norm)),
                  shape)


class Attention(nn.Module):
    def __init__(self, causal=False, scale=None, tokens=6, keys=6):
        super().__init__()
        self.q, self.kv = nn.Linear(8, 8), nn.Linear(8, 16)
        self.causal, self.scale, self.tokens, self.keys = causal, scale, tokens, keys
        self.register_buffer("mask", None)  # a constant, as models keep them

    def forward(self, x):  # x: [N, 8, H, W] -> tokens [N, 2 heads, L, 4]
        t = x.flatten(2).transpose(1, 2)
        n = t.shape[0]
        q = self.q(t[:, :self.tokens]).view(n, self.tokens, 2, 4).transpose(1, 2)
        k, v = self.kv(t[:, :self.keys]).view(n, self.keys, 2, 8).transpose(1, 2).chunk(2, dim=-1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, is_causal=self.causal, scale=self.scale)


def _mask(kind: str) -> torch.Tensor:
    """Random, with a row whose every key is masked out (torch gives zeros there)."""
    g = torch.Generator().manual_seed(1)
    if kind == "bool":
        keep = torch.rand(2, 6, 6, generator=g) > 0.4
        keep[1, 3] = False
        return keep
    bias = torch.randn(6, 6, generator=g).masked_fill(torch.rand(6, 6, generator=g) > 0.7, float("-inf"))
    bias[2] = float("-inf")
    return bias


@pytest.mark.parametrize("kwargs", [
    {}, {"scale": 0.3}, {"causal": True}, {"causal": True, "tokens": 4}, {"causal": True, "keys": 4},
    {"mask": "bool"}, {"mask": "float"}, {"mask": "float", "scale": 1.5}])
def test_scaled_dot_product_attention(kwargs):
    kwargs = dict(kwargs)
    kind = kwargs.pop("mask", None)
    model = randomize(Attention(**kwargs))
    model.mask = None if kind is None else _mask(kind)
    check_written(model, (2, 8, 3, 3))


class Pooled(nn.Module):
    def __init__(self, op, **kwargs):
        super().__init__()
        self.op, self.kwargs = op, kwargs

    def forward(self, x):
        return self.op(x, **self.kwargs)


CEIL_POOLS = [  # (input shape, kernel, stride, padding); with 5 rows, k2 s2 p1, a fourth window would start in
    # the right padding, and torch drops it
    ((2, 3, 7, 6), 3, 2, 1), ((2, 3, 5, 8), 2, 2, 0), ((2, 3, 6, 6), 3, 3, 1), ((2, 3, 9, 4), (3, 2), (2, 3), (1, 0)),
    ((2, 3, 5, 5), 2, 2, 1), ((2, 3, 8), 4, 3, 2), ((2, 2, 5, 4, 6), 2, 2, 1)]


@pytest.mark.parametrize("shape,kernel,stride,padding", CEIL_POOLS)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool_ceil_mode(shape, kernel, stride, padding, count_include_pad):
    op = {3: F.avg_pool1d, 4: F.avg_pool2d, 5: F.avg_pool3d}[len(shape)]
    check_written(Pooled(op, kernel_size=kernel, stride=stride, padding=padding, ceil_mode=True,
                         count_include_pad=count_include_pad), shape)


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    *(c + (1,) for c in CEIL_POOLS), ((2, 3, 9, 8), 3, 2, 1, 2), ((2, 3, 10, 7), 2, 3, 1, 3)])
def test_max_pool_ceil_mode(shape, kernel, stride, padding, dilation):
    """The second dilated case needs more end padding than the kernel's size, which ONNX Runtime's
    MaxPool refuses: it is padded with -inf before the pool."""
    op = {3: F.max_pool1d, 4: F.max_pool2d, 5: F.max_pool3d}[len(shape)]
    check_written(Pooled(op, kernel_size=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=True),
                  shape, exact=True)


@given(size=st.integers(2, 9), kernel=st.integers(1, 4), stride=st.integers(1, 4), pad=st.integers(0, 2),
       count_include_pad=st.booleans())
@settings(max_examples=25, deadline=None)
def test_avg_pool_ceil_mode_any_window(size, kernel, stride, pad, count_include_pad):
    assume(2 * pad <= kernel <= size + 2 * pad)
    check_written(Pooled(F.avg_pool1d, kernel_size=kernel, stride=stride, padding=pad, ceil_mode=True,
                         count_include_pad=count_include_pad), (2, 2, size))


@given(size=st.integers(1, 12), kernel=st.integers(1, 5), stride=st.integers(1, 4), pad=st.integers(0, 2),
       dilation=st.integers(1, 3), ceil=st.booleans())
@settings(max_examples=200, deadline=None)
def test_pooled_size_is_torchs(size, kernel, stride, pad, dilation, ceil):
    assume(2 * pad <= kernel and size + 2 * pad >= (kernel - 1) * dilation + 1)
    x = torch.zeros(1, 1, size)
    out = F.max_pool1d(x, kernel, stride, pad, dilation, ceil_mode=ceil).shape[-1]
    assert fx_onnx._pooled_size(size, kernel, stride, pad, dilation, ceil) == out


TRANSPOSED = [  # (input shape, in, out, kernel, stride, padding, output_padding, groups, dilation)
    ((2, 4, 5), 4, 6, 3, 2, 1, 1, 2, 1), ((2, 4, 5, 6), 4, 4, 2, 2, 0, 0, 1, 1),  # YOLO's Proto upsampling
    ((2, 4, 5, 6), 4, 6, (3, 2), (2, 3), (1, 0), (1, 2), 2, (2, 1)), ((2, 3, 4, 5), 3, 6, 3, 1, 2, 0, 3, 1),
    ((2, 2, 3, 4, 3), 2, 4, 3, 2, 1, (0, 1, 1), 1, 1)]


def _transposed(shape, cin, cout, kernel, stride, padding, output_padding, groups, dilation, bias=True):
    cls = {3: nn.ConvTranspose1d, 4: nn.ConvTranspose2d, 5: nn.ConvTranspose3d}[len(shape)]
    return randomize(cls(cin, cout, kernel, stride, padding, output_padding, groups, bias=bias, dilation=dilation))


@pytest.mark.parametrize("case", TRANSPOSED)
def test_conv_transpose(case):
    check_written(_transposed(*case, bias=case[1] != 3), case[0])


class AtenTransposed(nn.Module):  # aten.convolution with transposed=True, as decompositions leave it
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        m = self.layer
        return torch.ops.aten.convolution(x, m.weight, m.bias, m.stride, m.padding, m.dilation, True,
                                          m.output_padding, m.groups)


@pytest.mark.parametrize("case", TRANSPOSED[:3])
def test_aten_transposed_convolution(case):
    check_written(AtenTransposed(_transposed(*case)), case[0])


@pytest.mark.parametrize("case", TRANSPOSED)
def test_conv_transpose_layer_in_a_merged_graph(tmp_path, case):
    """The rewrite puts merged layers into the graph as modules (call_module), transposed ones too."""
    layer = _transposed(*case)
    gm = capture_graph(nn.Sequential(copy.deepcopy(layer), nn.ReLU()).eval(), torch.randn(case[0]))
    node = next(n for n in gm.graph.nodes if n.op == "call_function" and "conv_transpose" in str(n.target))
    gm.add_submodule("merged", layer)
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module("merged", (node.args[0],))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    result = export_onnx(gm, torch.randn(case[0]), tmp_path / "t.onnx", simplify=False)
    assert result.exporter == "fx" and result.fallback_reason is None
    x = np.random.default_rng(2).standard_normal((3, *case[0][1:])).astype(np.float32)
    assert_close(ort_run(tmp_path / "t.onnx", x), reference64(nn.Sequential(layer, nn.ReLU()), x))


class Anchors(nn.Module):
    """A detection head's anchor points and strides (ultralytics' make_anchors), built from sizes."""

    def __init__(self, indexing="ij"):
        super().__init__()
        self.register_buffer("stride", torch.tensor([8.0, 16.0]))
        self.indexing = indexing

    def forward(self, x):
        points, strides = [], []
        for i, size in enumerate((x.shape[2], x.shape[2] // 2)):
            line = torch.arange(size).type_as(x) + 0.5
            cols = torch.arange(x.shape[3]).type_as(x) + 0.5
            a, b = torch.meshgrid(line, cols, indexing=self.indexing)
            points.append(torch.stack((b, a), -1).view(-1, 2))
            strides.append(x.new_full((size * x.shape[3], 1), self.stride[i].item()))
        anchors = torch.cat(points).transpose(0, 1).unsqueeze(0)
        return x.mean((2, 3))[:, :2, None] * anchors + torch.cat(strides).transpose(0, 1)


@pytest.mark.parametrize("indexing", ["ij", "xy"])
def test_anchor_points_from_sizes(indexing):
    proto = check_written(Anchors(indexing), (2, 3, 4, 6))
    assert {"Expand", "Cast"} <= op_types(proto)


class Promoted(nn.Module):
    def forward(self, x):
        return x.flatten(1) * torch.arange(x.shape[1] * x.shape[2])  # float32 times int64: torch promotes


def test_mixed_types_are_left_to_torch_onnx_export(tmp_path):
    gm = capture_graph(Promoted().eval(), torch.randn(2, 3, 4))
    result = export_onnx(gm, torch.randn(2, 3, 4), tmp_path / "m.onnx", simplify=False)
    assert result.exporter == "dynamo" and "aten.mul.Tensor on torch.float32, torch.int64" in result.fallback_reason


def test_readme_lists_the_ops_the_writer_writes():
    readme = " ".join((Path(__file__).parents[3] / "README.md").read_text().split())
    listed = readme.split("The ATen ops it writes", 1)[1].split("; plus the merged layers", 1)[0]
    names = set(re.findall(r"`([a-z_0-9]+)`", listed))
    assert names == {str(op).split(".")[1] for op in fx_onnx.WRITER_OPS if str(op).startswith("aten.")}
