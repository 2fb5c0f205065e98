"""Each hand-written ONNX graph (graphs.py) through contract_onnx: the compact model run on ONNX
Runtime against the SOURCE graph run in float64 (compactify.measure.onnx_float64, numpy, not ORT),
on fresh inputs at another batch than the one planned, and what must be merged or left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compactify.converter.pipeline.contraction import contract_onnx
from compactify.errors import BadInputError
from compactify.measure.onnx_float64 import Float64Reference

from . import graphs as G
from .graphs import ConvSpec, count

EXACT = 1e-6  # the PyTorch path's bar: max|compact - ref| / max|ref| per output
SOURCE_FACTOR = 4.0  # where the source's own float32 run is worse than that (non-affine ops), 4x it


def ort_run(model: onnx.ModelProto, feeds) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _scale_rel(got: np.ndarray, ref: np.ndarray) -> float:
    got = np.asarray(got, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.isfinite(got).all()
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def errors(source: onnx.ModelProto, compact: onnx.ModelProto, *, batch=3, seeds=(1, 2), sizes=None):
    """Per seed and output: (compact error, the source's own float32 error), both against the
    source in float64."""
    ref = Float64Reference(source)
    out = []
    for seed in seeds:
        feeds = G.feeds(source, batch=batch, seed=seed, sizes=sizes)
        refs = ref.run(feeds)
        for g, s, r in zip(ort_run(compact, feeds), ort_run(source, feeds), refs):
            out.append((_scale_rel(g, r), _scale_rel(s, r)))
    return out


def _io(model: onnx.ModelProto):
    def sig(vi):
        t = vi.type.tensor_type
        return vi.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]

    init = {t.name for t in model.graph.initializer}
    return [sig(v) for v in model.graph.input if v.name not in init], [sig(v) for v in model.graph.output]


def check(source: onnx.ModelProto, *, sizes=None, bar: float = EXACT, **kwargs):
    """contract_onnx(source) is correct and keeps the interface; returns the result."""
    r = contract_onnx(source, **kwargs)
    onnx.checker.check_model(r.compact, full_check=True)
    assert _io(r.compact) == _io(source)
    assert [(p.key, p.value) for p in source.metadata_props] == [(p.key, p.value) for p in r.compact.metadata_props][
        : len(source.metadata_props)]
    for got, own in errors(source, r.compact, sizes=sizes):
        assert got <= max(bar, SOURCE_FACTOR * own), (got, own)
    assert r.max_rel_error is not None and r.max_rel_error <= max(bar, SOURCE_FACTOR * r.source_rel_error)
    return r


def layers(model) -> int:
    return count(model, *G.LAYER_OPS)


def kinds(r) -> list[str]:
    return [d.kind for d in r.decisions]


# -- conv chains ----------------------------------------------------------------------------


@pytest.mark.parametrize("opset", G.OPSETS)
@pytest.mark.parametrize("constant_nodes", [False, True])
def test_cl_chain_becomes_one_conv(opset, constant_nodes):
    src = G.conv_chain(G.CL_CHAIN, opset=opset, constant_nodes=constant_nodes)
    if constant_nodes:
        assert not src.graph.initializer and count(src, "Constant") == 6
    r = check(src)
    assert G.ops_of(r.compact) == ["Conv"]
    assert kinds(r) == ["dense"]
    assert r.params_after == 6 * 4 * 3 * 3 + 6 < r.params_before
    assert r.regions[0]["decision"] == "dense" and r.regions[0]["exact"]


@pytest.mark.parametrize("opset", G.OPSETS)
def test_ck_chain_with_padding_on_the_first_conv_becomes_one_conv(opset):
    r = check(G.conv_chain(G.CK_CHAIN, opset=opset))
    assert G.ops_of(r.compact) == ["Conv"]
    conv = r.compact.graph.node[0]
    w = next(t for t in r.compact.graph.initializer if t.name == conv.input[1])
    assert list(w.dims) == [6, 4, 7, 7]


def test_same_padding_after_a_biased_conv_is_not_exact_and_is_left():
    specs = [ConvSpec(12, 1), ConvSpec(6, 3, pads=1)]
    r = check(G.conv_chain(specs))
    assert count(r.compact, "Conv") == 2
    assert any(d.get("stopped_by") == "not exact" for d in r.regions)
    assert r.warnings  # the unmerged region is named in a warning


def test_allow_approximate_merges_it_and_reports_the_error():
    src = G.conv_chain([ConvSpec(12, 1), ConvSpec(6, 3, pads=1)])
    r = contract_onnx(src, allow_approximate=True)
    assert count(r.compact, "Conv") == 1
    assert r.max_rel_error > 1e-3  # the border pixels differ, and the report says so
    got = errors(src, r.compact, seeds=(1,))[0][0]
    assert got > 1e-3
    assert r.max_rel_error == pytest.approx(got, rel=0.5)


@pytest.mark.parametrize("specs", [
    [ConvSpec(8, 3, groups=2, pads=1), ConvSpec(8, 3, groups=2)],  # the group structure lines up
    [ConvSpec(8, 3, dilation=2), ConvSpec(6, 3, stride=2)],
    [ConvSpec(8, 3, stride=(2, 1), pads=(1, 0, 0, 2)), ConvSpec(6, 1, dilation=2)],
    [ConvSpec(8, 3, auto_pad="SAME_UPPER", stride=2), ConvSpec(4, 3, auto_pad="VALID")],
    [ConvSpec(8, 3, auto_pad="SAME_LOWER"), ConvSpec(4, 1, auto_pad="SAME_UPPER")],
], ids=["groups", "dilation-stride", "asymmetric-pads", "same_upper-valid", "same_lower-1x1"])
def test_conv_attributes(specs):
    r = check(G.conv_chain(specs, cin=4, size=(11, 10)))
    assert kinds(r) == ["dense"] and count(r.compact, "Conv") == 1


# -- fully connected -----------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias_shape", ["N", "1N", None])
def test_gemm_chain_becomes_one_layer(alpha, beta, trans_b, bias_shape):
    r = check(G.gemm_chain(alpha=alpha, beta=beta, trans_b=trans_b, bias_shape=bias_shape))
    assert layers(r.compact) == 1
    assert r.params_after == 12 * 5 + (5 if bias_shape else 0)


@pytest.mark.parametrize("rank", [2, 3])
def test_keras_matmul_add_becomes_one_layer(rank):
    r = check(G.keras_dense(rank=rank))
    assert layers(r.compact) == 1
    assert r.params_after == 10 * 7 + 7


@pytest.mark.parametrize("kind", ["Flatten", "Reshape", "Reshape2"])
def test_flatten_or_reshape_before_a_gemm_chain(kind):
    r = check(G.flatten_gemm(kind))
    assert count(r.compact, "Gemm", "MatMul") == 1 and count(r.compact, "Conv") == 1


# -- BatchNorm and elementwise affine ops ------------------------------------------------------


@pytest.mark.parametrize("opset", [11, 13, 14, G.NEWEST])
def test_batchnorm_folds(opset):
    r = check(G.conv_bn_chain(opset=opset))
    assert G.ops_of(r.compact) == ["Conv"]


@pytest.mark.parametrize("kwargs", [
    {},
    {"pads": (1, 0, 0, 1), "output_padding": 1, "bias": True},  # asymmetric crop, as ONNX allows
    {"k": 2, "pads": 0, "then_1x1": True},
    {"k": 4, "stride": (2, 3), "pads": 1, "opset": 11},
], ids=["plain", "asymmetric-pads", "then-1x1", "strides-opset11"])
def test_batchnorm_folds_into_a_conv_transpose(kwargs):
    r = check(G.conv_transpose_bn(**kwargs))
    assert G.ops_of(r.compact) == ["ConvTranspose"] and kinds(r) == ["dense"]


def test_bias_before_a_conv_transpose_stays():
    """A BatchNorm's shift before a stride-2 ConvTranspose would land on the zeros it inserts."""
    b = G.Builder(0)
    b.conv_transpose(b.batchnorm("x", 3), 3, 6, 2)
    b.nodes[-1].output[0] = "y"
    r = check(b.model([("x", ["N", 3, 5, 6])], ["y"]))
    assert G.ops_of(r.compact) == ["BatchNormalization", "ConvTranspose"]


@pytest.mark.parametrize("sub", [False, True])
def test_batchnorm_written_as_mul_add(sub):
    r = check(G.mul_add_bn(sub=sub))
    assert G.ops_of(r.compact) == ["Conv"]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("operand", ["scalar", "one", "channel"])
@pytest.mark.parametrize("const_first", [False, True])
def test_elementwise_by_a_constant(op, operand, const_first):
    r = check(G.elementwise(op, operand, const_first))
    if op == "Div" and const_first:  # c / x is not affine: a boundary between two single convs
        assert count(r.compact, "Div") == 1 and count(r.compact, "Conv") == 2
        assert all(d.kind == "keep" for d in r.decisions)
    else:
        assert G.ops_of(r.compact) == ["Conv"]


# -- padding and pooling ---------------------------------------------------------------------


@pytest.mark.parametrize("opset", G.OPSETS)
def test_zero_pad_on_the_input_joins_the_conv(opset):
    r = check(G.pad_chain(0.0, opset=opset))
    assert G.ops_of(r.compact) == ["Conv"]


def test_pad_with_a_value_stays_and_the_convs_merge():
    r = check(G.pad_chain(0.5))
    assert count(r.compact, "Pad") == 1 and count(r.compact, "Conv") == 1


def test_pad_with_a_value_after_a_biased_conv():
    r = check(G.pad_chain(0.3, bias_first=True))
    assert count(r.compact, "Pad") == 1


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("pads", [0, 1])
@pytest.mark.parametrize("bias", [False, True])
def test_average_pool(count_include_pad, pads, bias):
    r = check(G.avgpool_chain(count_include_pad, pads, bias=bias))
    exact = pads == 0 or (count_include_pad == 1 and not bias)
    if exact:
        assert G.ops_of(r.compact) == ["Conv"]
    else:
        assert count(r.compact, "AveragePool") == 1 and count(r.compact, "Conv") == 2


# -- identities, layouts, slices, concat, sums --------------------------------------------------


@pytest.mark.parametrize("opset", [11, 12, G.NEWEST])
def test_identity_and_dropout_disappear(opset):
    r = check(G.identities(opset=opset))
    assert G.ops_of(r.compact) == ["Conv"]


@pytest.mark.parametrize("n_convs", [2, 3])
def test_tf2onnx_nhwc_transposes_cancel_and_the_convs_merge(n_convs):
    r = check(G.nhwc_transposes(n_convs=n_convs))
    assert count(r.compact, "Conv") == 1
    assert count(r.compact, "Transpose") <= 2
    assert r.source.prepared.transposes_cancelled >= n_convs - 1  # one pair between every two convs


@pytest.mark.parametrize("kind", ["channels", "crop_h", "strided", "crop"])
def test_slice_inside_a_chain(kind):
    r = check(G.slices(kind))
    assert G.ops_of(r.compact) == ["Conv"], [d["reason"] for d in r.regions]


def test_concat_of_branches_then_a_conv():
    r = check(G.concat_branches())
    assert G.ops_of(r.compact) == ["Conv"]


def test_repvgg_block_becomes_one_conv_and_its_relu():
    r = check(G.repvgg_block())
    assert G.ops_of(r.compact) == ["Conv", "Relu"]
    assert r.params_after == 6 * 6 * 9 + 6


def test_acnet_block_becomes_one_conv():
    r = check(G.repvgg_block(acnet=True, act=None))
    assert G.ops_of(r.compact) == ["Conv"]


def test_variadic_sum_of_branches():
    r = check(G.sum_node())
    assert G.ops_of(r.compact) == ["Conv"]


@pytest.mark.parametrize("op", G.BOUNDARY_OPS)
def test_an_unsupported_op_is_a_boundary(op):
    r = check(G.boundary(op))
    kept = "Mul" if op == "Square" else op
    assert G.ops_of(r.compact) == ["Conv", kept, "Conv"]
    assert kinds(r) == ["dense", "dense"]
    assert {d["read_by"][0] for d in r.regions} >= {kept}


# -- interface ---------------------------------------------------------------------------------


def test_several_inputs_and_outputs_keep_names_order_dtypes_metadata_and_symbolic_dims():
    src = G.multi_io()
    r = check(src, input_shape=(1, 3, 8, 9), sizes={"W": 9})
    ins, outs = _io(r.compact)
    assert ins == [("image", onnx.TensorProto.FLOAT, ["batch", 3, 8, "W"]), ("aux", onnx.TensorProto.FLOAT, ["batch", 6])]
    assert [o[:2] for o in outs] == [("logits", 1), ("features", 1), ("features16", onnx.TensorProto.FLOAT16)]
    assert {p.key: p.value for p in r.compact.metadata_props}.items() >= G.METADATA.items()
    assert count(r.compact, "Conv") == 1 and count(r.compact, "Gemm", "MatMul") == 1
    # A symbolic width means every width: the compact model is right at another one.
    for got, own in errors(src, r.compact, sizes={"W": 13}):
        assert got <= max(EXACT, SOURCE_FACTOR * own)


def test_outputs_selects_and_orders_outputs():
    r = contract_onnx(G.multi_io(), input_shape=(1, 3, 8, 9), outputs=["features", "logits"])
    assert [o.name for o in r.compact.graph.output] == ["features", "logits"]
    assert count(r.compact, "Cast") == 0  # what only the dropped output needed is gone


def test_symbolic_batch_stays_symbolic_and_other_batches_run():
    src = G.conv_chain(G.CL_CHAIN, batch="N")
    r = contract_onnx(src)
    assert r.compact.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert r.compact.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    for batch in (1, 5):
        for got, _ in errors(src, r.compact, batch=batch, seeds=(3,)):
            assert got <= EXACT


def test_fixed_batch_stays_fixed():
    src = G.conv_chain(G.CL_CHAIN, batch=3)
    r = check(src)
    assert r.compact.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3


def test_external_data(tmp_path):
    path = G.with_external_data(G.conv_chain(G.CK_CHAIN), tmp_path)
    assert (tmp_path / "model.onnx.data").stat().st_size > 0
    r = check(onnx.load(str(path)))
    assert G.ops_of(r.compact) == ["Conv"]


def test_nan_weights_are_bad_input():
    with pytest.raises(BadInputError, match="NaN"):
        contract_onnx(G.nan_weights())


# -- random chains -------------------------------------------------------------------------------


@st.composite
def chains(draw):
    n = draw(st.integers(2, 4))
    cin = draw(st.sampled_from([2, 4]))
    specs, c = [], cin
    for i in range(n):
        groups = draw(st.sampled_from([1, 2])) if c % 2 == 0 else 1
        out = draw(st.sampled_from([2, 4, 8]))
        k = draw(st.sampled_from([1, 3]))
        pads = draw(st.sampled_from([0, 1])) if k == 3 else 0
        specs.append(ConvSpec(out, k, stride=draw(st.sampled_from([1, 1, 2])), dilation=draw(st.sampled_from([1, 2])),
                              groups=groups if out % groups == 0 else 1, pads=pads, bias=draw(st.booleans())))
        c = out
    size = (draw(st.integers(9, 13)), draw(st.integers(9, 13)))
    h = min(size)
    for s in specs:  # every layer leaves at least 2 pixels
        h = (h + 2 * s.pads - s.dilation * (s.k - 1) - 1) // s.stride + 1
        assume(h >= 2)
    opset = draw(st.sampled_from(G.OPSETS))
    return specs, cin, size, opset


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(chains())
def test_random_conv_chains(chain):
    specs, cin, size, opset = chain
    src = G.conv_chain(specs, cin=cin, size=size, opset=opset)
    r = check(src)
    assert count(r.compact, "Conv") <= len(specs)
    # Padding on the first conv only (or none): every merge is exact, so what is kept is kept for cost.
    if all(s.pads == 0 for s in specs[1:]):
        assert all(d.get("stopped_by") in (None, "not cheaper", "nothing to merge") for d in r.regions), r.regions
