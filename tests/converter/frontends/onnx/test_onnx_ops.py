"""The ONNX front-end's op table: one handler per op_type, a second one refused, and op types
outside it left as region boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compactify.converter.frontends.onnx.classify import ONNX_OPS, Context, classify
from compactify.converter.frontends.onnx.constants import OnnxConstants
from compactify.registry import DuplicateRegistration


def test_a_second_handler_for_an_op_type_is_refused():
    handler = ONNX_OPS["Conv"]
    with pytest.raises(DuplicateRegistration, match="Conv"):
        ONNX_OPS.register("Conv")(lambda node, data, ctx: None)
    assert ONNX_OPS["Conv"] is handler


def test_a_registered_op_type_gets_its_step_and_an_unregistered_one_none():
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), dtype=np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    relu = helper.make_node("Relu", ["y"], ["z"])
    graph = helper.make_graph([conv, relu], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 4, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ctx = Context(OnnxConstants(model), {"x": (1, 3, 4, 4), "y": (1, 4, 4, 4), "z": (1, 4, 4, 4)}, 17)
    assert classify(conv, ctx).kind == "conv"
    assert classify(relu, ctx) is None


def test_conv_transpose_is_a_step_unless_its_crop_depends_on_the_input_size():
    w = numpy_helper.from_array(np.ones((3, 4, 2, 2), dtype=np.float32), "w")
    shapes = {"x": (1, 3, 4, 4), "y": (1, 4, 8, 8)}
    plain = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    sized = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_shape=[8, 8])
    for node in (plain, sized):
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        step = classify(node, Context(OnnxConstants(model), shapes, 17))
        if node is plain:
            assert step.kind == "conv_transpose" and step.op.input_dilation == (2, 2)
        else:
            assert step is None
