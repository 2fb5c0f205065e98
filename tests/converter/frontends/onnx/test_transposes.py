"""The NHWC transpose pass: pairs that undo each other are removed, moved past elementwise ops
(their constants permuted), and nothing else changes what the graph computes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compactify.targets.onnx_io import run_ort
from compactify.converter.frontends.onnx.transposes import cancel_transposes

NHWC_TO_NCHW, NCHW_TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def _model(nodes, inits, out_shape=("N", 5, 5, 4)):
    graph = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 5, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _same(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    x = {"x": np.random.default_rng(0).standard_normal((2, 5, 5, 4)).astype(np.float32)}
    np.testing.assert_allclose(run_ort(a, x)[0], run_ort(b, x)[0], rtol=1e-6, atol=1e-6)


def _ops(model):
    return [n.op_type for n in model.graph.node]


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.sampled_from(["Relu", "Mul", "Add", "Sub", "Div", "Sigmoid"]), max_size=3),
       channel_constants=st.booleans(), constant_first=st.booleans())
def test_a_pair_split_by_elementwise_ops_cancels_and_computes_the_same(ops, channel_constants, constant_first):
    """NHWC -> T -> elementwise ops in NCHW (per-channel constants [C,1,1]) -> T back: the first
    transpose sinks past each op, taking its constant with it, and the pair cancels."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Transpose", ["x"], ["h0"], perm=NHWC_TO_NCHW)]
    inits, name = {}, "h0"
    for i, op in enumerate(ops):
        out = f"h{i + 1}"
        if op in ("Relu", "Sigmoid"):
            nodes.append(helper.make_node(op, [name], [out]))
        else:
            inits[f"c{i}"] = rng.uniform(0.5, 2.0, (4, 1, 1) if channel_constants else ()).astype(np.float32)
            operands = [f"c{i}", name] if constant_first and op in ("Add", "Mul") else [name, f"c{i}"]
            nodes.append(helper.make_node(op, operands, [out]))
        name = out
    nodes.append(helper.make_node("Transpose", [name], ["y"], perm=NCHW_TO_NHWC))
    model = _model(nodes, inits)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    after, removed = cancel_transposes(model)
    onnx.checker.check_model(after)
    assert removed == 1
    assert "Transpose" not in _ops(after)
    _same(before, after)


def test_nhwc_conv_pairs_cancel_so_the_convs_meet():
    rng = np.random.default_rng(2)
    inits = {"w1": rng.standard_normal((6, 4, 1, 1)).astype(np.float32),
             "w2": rng.standard_normal((4, 6, 1, 1)).astype(np.float32),
             "b": rng.standard_normal((6,)).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=NHWC_TO_NCHW),
             helper.make_node("Conv", ["a", "w1"], ["b1"]),
             helper.make_node("Transpose", ["b1"], ["c"], perm=NCHW_TO_NHWC),
             helper.make_node("Add", ["c", "b"], ["d"]),  # tf2onnx's BiasAdd in NHWC
             helper.make_node("Transpose", ["d"], ["e"], perm=NHWC_TO_NCHW),
             helper.make_node("Conv", ["e", "w2"], ["f"]),
             helper.make_node("Transpose", ["f"], ["y"], perm=NCHW_TO_NHWC)]
    model = _model(nodes, inits)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    after, removed = cancel_transposes(model)
    assert removed == 1
    assert _ops(after) == ["Transpose", "Conv", "Add", "Conv", "Transpose"]
    _same(before, after)


@pytest.mark.parametrize("case", ["not_inverse", "shared", "output"])
def test_transposes_that_must_stay(case):
    nodes = [helper.make_node("Transpose", ["x"], ["a"], perm=NHWC_TO_NCHW)]
    if case == "not_inverse":  # NHWC -> NCHW -> (0,1,3,2): no identity
        nodes.append(helper.make_node("Transpose", ["a"], ["y"], perm=[0, 2, 1, 3]))
        shape = ("N", 4, 5, 5)
        expect = ["Transpose", "Transpose"]
    elif case == "shared":  # the NCHW tensor has a second reader: the first transpose must stay
        nodes += [helper.make_node("Transpose", ["a"], ["b"], perm=NCHW_TO_NHWC),
                  helper.make_node("ReduceSum", ["a"], ["s"], keepdims=1),
                  helper.make_node("Add", ["b", "s2"], ["y"]),
                  helper.make_node("Transpose", ["s"], ["s2"], perm=NCHW_TO_NHWC)]
        nodes = [nodes[0], nodes[1], nodes[2], nodes[4], nodes[3]]
        shape = ("N", 5, 5, 4)
        expect = None
    else:  # the pair ends at a graph output: the output keeps its name, through an Identity
        nodes.append(helper.make_node("Transpose", ["a"], ["y"], perm=NCHW_TO_NHWC))
        shape = ("N", 5, 5, 4)
        expect = ["Identity"]
    model = _model(nodes, {}, shape)
    before = onnx.ModelProto()
    before.CopyFrom(model)
    after, _ = cancel_transposes(model)
    onnx.checker.check_model(after)
    if expect is not None:
        assert _ops(after) == expect
    else:
        assert _ops(after).count("Transpose") >= 1 and "ReduceSum" in _ops(after)
    assert [o.name for o in after.graph.output] == ["y"]
    _same(before, after)
