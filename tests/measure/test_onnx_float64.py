"""The float64 reference of an ONNX graph (compactify.measure.onnx_float64) against PyTorch run in
float64 on the same weights: on exported nets (both exporters, opset 11, 18 and the newest onnx
knows), on hand-written graphs of the ops a front-end reads, and on an ill-conditioned chain where a
float32 run is visibly off."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from compactify.errors import BadInputError
from compactify.measure.onnx_float64 import Float64Reference, as_float64, run_float64

NEWEST = onnx.defs.onnx_opset_version()


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


class SmallNet(nn.Module):
    """Conv (stride, dilation, groups), BatchNorm away from identity, zero and valued padding,
    average pooling both ways, channel concat of scaled slices, a spatial crop, Linear."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, stride=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, groups=2, dilation=2, stride=(1, 2))
        self.fc = nn.Linear(8 * 3, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
            self.bn.running_mean.copy_(torch.randn(8, generator=g))
            self.bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)

    def forward(self, x):
        y = self.bn(self.c1(x))
        y = F.pad(y, (1, 0, 2, 1), value=0.25)
        y = F.avg_pool2d(y, 2, padding=1, count_include_pad=True) + F.avg_pool2d(y, 2, padding=1, count_include_pad=False)
        y = torch.cat([y[:, :4] * 0.5, y[:, 4:] - 1.0], 1)
        y = self.c2(y)[:, :, 1:, :-1]
        return self.fc(y.flatten(1))


def _export(model: nn.Module, x: torch.Tensor, *, dynamo: bool, opset: int, fold: bool) -> onnx.ModelProto:
    f = io.BytesIO()
    kw = {"optimize": fold} if dynamo else {"do_constant_folding": fold}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), f, dynamo=dynamo, opset_version=opset, input_names=["x"], output_names=["y"], **kw)
    return onnx.load_from_string(f.getvalue())


def _torch64(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    m64 = type(model)()
    m64.load_state_dict(model.state_dict())
    with torch.no_grad():
        return m64.double().eval()(x.double()).numpy()


@pytest.fixture(scope="module")
def small_exports():
    torch.manual_seed(0)
    model = SmallNet().eval()
    x = torch.randn(2, 3, 11, 13)
    ref = _torch64(model, x)
    out = {}
    # Unfolded: the file's weights are the module's, so float64 must agree to float64 rounding.
    out["ts11"] = _export(model, x, dynamo=False, opset=11, fold=False)
    out["dynamo18"] = _export(model, x, dynamo=True, opset=18, fold=False)
    out["newest"] = onnx.version_converter.convert_version(out["dynamo18"], NEWEST)
    # Folded as users get them by default: BatchNorm folded into the conv in float32.
    out["ts11-folded"] = _export(model, x, dynamo=False, opset=11, fold=True)
    out["dynamo18-folded"] = _export(model, x, dynamo=True, opset=18, fold=True)
    return x.numpy(), ref, out


@pytest.mark.parametrize("name", ["ts11", "dynamo18", "newest"])
def test_exported_net_equals_torch_float64(small_exports, name):
    x, ref, models = small_exports
    m = models[name]
    onnx.checker.check_model(m)
    ops = {n.op_type for n in m.graph.node}
    assert {"Conv", "BatchNormalization", "Pad", "AveragePool", "Concat", "Slice", "Gemm"} <= ops, ops
    (got,) = run_float64(m, {"x": x})
    assert got.dtype == np.float64 and got.shape == ref.shape
    assert _rel(got, ref) <= 1e-12
    if name == "newest":
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == NEWEST


@pytest.mark.parametrize("name", ["ts11-folded", "dynamo18-folded"])
def test_folded_export_is_within_float32_rounding(small_exports, name):
    """An exporter that folds BatchNorm into the conv rounds the folded weights to float32: the file
    is then a slightly different model, and its float64 run says so (but no more than that)."""
    x, ref, models = small_exports
    (got,) = run_float64(models[name], {"x": x})
    assert _rel(got, ref) <= 1e-6


def test_batchnorm_before_opset14_is_inference():
    """onnx.reference's opset-9 BatchNormalization kernel treats ``momentum`` (which exporters always
    write) as training mode and normalizes with the batch statistics; the reference must not."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(3, 4, 5, 5) * 3 + 1
    with torch.no_grad():
        ref = bn.double()(x.double()).numpy()
    bn.float()
    for opset in (9, 11, 13, 14, 15):
        m = _export(bn, x, dynamo=False, opset=opset, fold=False)
        node = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
        assert any(a.name == "momentum" for a in node.attribute)
        (got,) = run_float64(m, {"x": x.numpy()})
        assert _rel(got, ref) <= 1e-12, opset


def _model(nodes, inputs, outputs, initializers=(), opset=NEWEST, **kw) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], **kw)
    onnx.checker.check_model(m, full_check=True)
    return m


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


@pytest.mark.parametrize("opset", [11, NEWEST])
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_with_pads(opset, count_include_pad):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], count_include_pad=count_include_pad)
    m = _model([node], [_vi("x", [2, 3, 7, 6])], [_vi("y", [2, 3, 4, 6])], opset=opset)
    (got,) = run_float64(m, {"x": x})
    xt = F.pad(torch.from_numpy(x).double(), (0, 1, 1, 1))
    ones = F.pad(torch.ones_like(torch.from_numpy(x)).double(), (0, 1, 1, 1))
    s = F.avg_pool2d(xt, (3, 2), (2, 1)) * 6
    n = F.avg_pool2d(ones, (3, 2), (2, 1)) * 6 if not count_include_pad else torch.full_like(s, 6.0)
    assert _rel(got, (s / n).numpy()) <= 1e-12


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_alpha_beta(trans_b):
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 5)).astype(np.float32)
    w = rng.standard_normal((3, 5) if trans_b else (5, 3)).astype(np.float32)
    c = rng.standard_normal((1, 3)).astype(np.float32)
    node = helper.make_node("Gemm", ["a", "w", "c"], ["y"], alpha=0.7, beta=-1.3, transB=trans_b)
    m = _model([node], [_vi("a", [4, 5])], [_vi("y", [4, 3])], [_init("w", w), _init("c", c)])
    (got,) = run_float64(m, {"a": a})
    wt = w.T if trans_b else w
    # The attributes are float32 numbers in the file: the reference uses them as written.
    alpha, beta = float(np.float32(0.7)), float(np.float32(-1.3))
    ref = alpha * a.astype(np.float64) @ wt.astype(np.float64) + beta * c.astype(np.float64)
    assert _rel(got, ref) <= 1e-13


@pytest.mark.parametrize("opset", [11, NEWEST])
def test_pad_value_slice_concat(opset):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 4, 5, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Pad", ["x", "pads", "v"], ["p"], mode="constant"),
        helper.make_node("Slice", ["p", "st", "en", "ax", "sp"], ["s"]),
        helper.make_node("Concat", ["p", "s2"], ["y"], axis=1),
        helper.make_node("Slice", ["p", "st2", "en2", "ax2", "sp2"], ["s2"]),
    ]
    nodes = [nodes[0], nodes[1], nodes[3], nodes[2]]
    inits = [
        _init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 0], np.int64)),
        _init("v", np.array(0.3, np.float32)),
        _init("st", np.array([1, 1], np.int64)),
        _init("en", np.array([-1, 100], np.int64)),
        _init("ax", np.array([2, 3], np.int64)),
        _init("sp", np.array([1, 2], np.int64)),
        _init("st2", np.array([3], np.int64)),
        _init("en2", np.array([0], np.int64)),
        _init("ax2", np.array([1], np.int64)),
        _init("sp2", np.array([-1], np.int64)),
    ]
    m = _model(nodes, [_vi("x", [1, 4, 5, 5])], [_vi("y", [1, 7, 8, 7]), _vi("s", [1, 4, 6, 3])], inits, opset=opset)
    got_y, got_s = run_float64(m, {"x": x})
    p = F.pad(torch.from_numpy(x).double(), (2, 0, 1, 2), value=float(np.float32(0.3)))
    s2 = torch.flip(p[:, 1:4], [1])  # channels 3, 2, 1
    assert _rel(got_s, p[:, :, 1:-1, 1::2].numpy()) <= 1e-15
    assert _rel(got_y, torch.cat([p, s2], 1).numpy()) <= 1e-15


def test_constants_casts_and_types_become_float64():
    nodes = [
        helper.make_node("Constant", [], ["c1"], value_float=0.1),
        helper.make_node("Constant", [], ["c2"], value_floats=[0.1, 0.2, 0.3]),
        helper.make_node("Constant", [], ["c3"], value=helper.make_tensor("t", TensorProto.FLOAT, [3], [0.5, 0.25, 0.125])),
        helper.make_node("Shape", ["x"], ["shp"]),
        helper.make_node("ConstantOfShape", ["shp"], ["zeros"]),
        helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "c1"], ["a1"]),
        helper.make_node("Mul", ["a1", "c2"], ["a2"]),
        helper.make_node("Add", ["a2", "c3"], ["a3"]),
        helper.make_node("Add", ["a3", "zeros"], ["a4"]),
        helper.make_node("Add", ["a4", "fi"], ["a5"]),
        helper.make_node("Mul", ["a5", "w"], ["y"]),
    ]
    m = _model(
        nodes,
        [_vi("x", [3]), _vi("i", [3], TensorProto.INT64)],
        [_vi("y", [3]), _vi("shp", [1], TensorProto.INT64)],
        [_init("w", np.array([1.1, 2.2, 3.3], np.float32))],
    )
    m.graph.value_info.append(_vi("a1", [3]))
    m64 = as_float64(m)
    onnx.checker.check_model(m64, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(m64, strict_mode=True)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    for name in ("x", "y", "a1", "a2", "a3", "a4", "a5", "c1", "c2", "c3", "zeros", "fi"):
        assert elem[name] == TensorProto.DOUBLE, name
    assert elem["i"] == elem["shp"] == TensorProto.INT64
    # The source is untouched.
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert m.graph.initializer[0].data_type == TensorProto.FLOAT

    x = np.array([0.3, -0.7, 1.9], np.float32)
    i = np.array([1, -2, 3], np.int64)
    y, shp = run_float64(m, {"x": x, "i": i})
    # Every constant as its float32 value, every operation in float64.
    f = lambda v: np.asarray(v, np.float32).astype(np.float64)  # noqa: E731
    ref = ((f(x) + f(0.1)) * f([0.1, 0.2, 0.3]) + f([0.5, 0.25, 0.125]) + i) * f([1.1, 2.2, 3.3])
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref, rtol=1e-15, atol=0)
    assert shp.tolist() == [3]


def _ill_conditioned(n=6, seed=0):
    """x -> (x + 100) -> W -> W^-1 -> - 100: nearly the identity; the offset and the condition
    number of W (1e3) amplify rounding about 1e5-fold: ~1e-11 of the output's scale in float64,
    ~1e-4 in float32."""
    rng = np.random.default_rng(seed)
    u, _, vt = np.linalg.svd(rng.standard_normal((n, n)))
    w = (u * np.logspace(0, -3, n)) @ vt
    w32 = w.astype(np.float32)
    winv32 = np.linalg.inv(w32.astype(np.float64)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["big"], value_float=100.0),
        helper.make_node("Add", ["x", "big"], ["a"]),
        helper.make_node("MatMul", ["a", "w"], ["b"]),
        helper.make_node("MatMul", ["b", "winv"], ["c"]),
        helper.make_node("Sub", ["c", "big"], ["y"]),
    ]
    m = _model(nodes, [_vi("x", ["N", n])], [_vi("y", ["N", n])], [_init("w", w32), _init("winv", winv32)])
    return m, w32, winv32


def test_float64_run_is_really_float64():
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    m, w32, winv32 = _ill_conditioned()
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    (got,) = run_float64(m, {"x": x})
    xt = torch.from_numpy(x).double()
    ref = (((xt + 100.0) @ torch.from_numpy(w32).double()) @ torch.from_numpy(winv32).double() - 100.0).numpy()
    assert got.dtype == np.float64
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-11
    (f32,) = ReferenceEvaluator(m).run(None, {"x": x})
    (o32,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    for lo in (f32, o32):
        assert lo.dtype == np.float32
        err = np.abs(lo.astype(np.float64) - ref).max() / np.abs(ref).max()
        assert 1e-5 < err < 1e-2, err  # float32 is visibly off: the bound above tells the two apart


def test_reference_is_reusable_and_casts_feeds():
    m, w32, winv32 = _ill_conditioned()
    ref = Float64Reference(m)
    assert ref.input_names == ["x"] and ref.output_names == ["y"]
    rng = np.random.default_rng(2)
    for batch in (1, 3, 7):
        x = rng.standard_normal((batch, 6))
        (a,) = ref.run({"x": x.astype(np.float32)})
        (b,) = ref.run({"x": x})  # a float64 feed is not rounded to float32 first
        xt = torch.from_numpy(x.astype(np.float32)).double()
        expect = (((xt + 100.0) @ torch.from_numpy(w32).double()) @ torch.from_numpy(winv32).double() - 100.0).numpy()
        assert a.shape == (batch, 6)
        assert np.abs(a - expect).max() <= 1e-11 * np.abs(expect).max()
        assert not np.array_equal(a, b)


def test_subgraphs_and_functions_are_converted():
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["t"], value_float=0.1), helper.make_node("Add", ["x", "t"], ["o"])],
        "then", [], [_vi("o", [2])],
    )
    else_g = helper.make_graph([helper.make_node("Cast", ["x"], ["o"], to=TensorProto.FLOAT)], "else", [], [_vi("o", [2])])
    fn = helper.make_function(
        "local", "AddTenth", ["a"], ["b"],
        [helper.make_node("Constant", [], ["k"], value_float=0.1), helper.make_node("Add", ["a", "k"], ["b"])],
        opset_imports=[helper.make_opsetid("", NEWEST)],
    )
    nodes = [
        helper.make_node("If", ["cond"], ["z"], then_branch=then_g, else_branch=else_g),
        helper.make_node("AddTenth", ["z"], ["y"], domain="local"),
    ]
    g = helper.make_graph(nodes, "g", [_vi("x", [2]), _vi("cond", [], TensorProto.BOOL)], [_vi("y", [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", NEWEST), helper.make_opsetid("local", 1)], functions=[fn])
    onnx.checker.check_model(m)
    m64 = as_float64(m)
    then64 = m64.graph.node[0].attribute
    assert all(a.g.output[0].type.tensor_type.elem_type == TensorProto.DOUBLE for a in then64)
    x = np.array([1.0, 2.0], np.float32)
    (y,) = run_float64(m, {"x": x, "cond": np.array(True)})
    assert y.dtype == np.float64
    assert np.allclose(y, x.astype(np.float64) + 2 * float(np.float32(0.1)), rtol=1e-15, atol=0)


def test_old_ir_initializer_inputs_need_no_feed():
    node = helper.make_node("Mul", ["x", "w"], ["y"])
    g = helper.make_graph([node], "g", [_vi("x", [2]), _vi("w", [2])], [_vi("y", [2])], initializer=[_init("w", np.array([0.1, 3.0], np.float32))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)], ir_version=3)
    ref = Float64Reference(m)
    assert ref.input_names == ["x"]
    (y,) = ref.run({"x": np.array([1.0, 2.0], np.float32)})
    assert y.tolist() == [float(np.float32(0.1)), 6.0]


def test_external_data(tmp_path):
    m, w32, _ = _ill_conditioned()
    path = tmp_path / "m.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(m)  # onnx.save moves the tensors of the proto it is given out to the file
    onnx.save(saved, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="m.data", size_threshold=0)
    assert (tmp_path / "m.data").exists()
    x = np.ones((1, 6), np.float32)
    loaded = onnx.load(str(path))
    np.testing.assert_array_equal(run_float64(loaded, {"x": x})[0], run_float64(m, {"x": x})[0])
    unloaded = onnx.load(str(path), load_external_data=False)
    with pytest.raises(BadInputError, match="external file that was not loaded") as e:
        as_float64(unloaded)
    assert "\n" not in str(e.value)


def test_errors_are_one_line():
    m, _, _ = _ill_conditioned()
    with pytest.raises(BadInputError, match="no feed for graph input"):
        run_float64(m, {})
    with pytest.raises(BadInputError, match="not inputs of the graph"):
        run_float64(m, {"x": np.ones((1, 6), np.float32), "extra": np.ones(1)})
    with pytest.raises(BadInputError, match="is float32 in the graph"):
        run_float64(m, {"x": np.ones((1, 6), np.int64)})
    custom = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1])], [_vi("y", [1])])
    custom.graph.node[0].op_type = "FusedConv"
    custom.graph.node[0].domain = "com.microsoft"
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(BadInputError, match="onnx.reference cannot run") as e:
        Float64Reference(custom)
    assert "\n" not in str(e.value)
    bn = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1)
    inits = [_init(n, np.ones(2, np.float32)) for n in ("s", "b", "m", "v")]
    train = _model([bn], [_vi("x", [3, 2])], [_vi("y", [3, 2]), _vi("rm", [2]), _vi("rv", [2])], inits, opset=15)
    with pytest.raises(BadInputError, match="training mode"):
        run_float64(train, {"x": np.ones((3, 2), np.float32)})
    with pytest.raises(BadInputError, match="onnx.ModelProto"):
        as_float64(b"not a model")
