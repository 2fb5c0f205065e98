"""The float64 reference of an ONNX graph: the same graph with every float32 tensor made float64,
run by ``onnx.reference.ReferenceEvaluator`` (numpy, independent of ONNX Runtime).

This is what an ONNX source is compared against: the converter folds in float64 and casts once
at the end, so the reference must not round at float32 anywhere. ``as_float64`` rewrites

- initializers (dense and sparse) and every tensor an attribute carries (``Constant``'s
  ``value``, ``ConstantOfShape``'s ``value``, any other TENSOR/TENSORS attribute), in the main
  graph, in subgraphs (If/Loop/Scan bodies) and in model-local functions;
- ``Constant``'s ``value_float`` / ``value_floats`` (which would give float32) into a float64
  ``value``, and ``ConstantOfShape`` without ``value`` (float32 zeros by the spec) into float64
  zeros;
- graph inputs, outputs and value_info entries of element type FLOAT (inside sequence, optional
  and map types too);
- ``Cast``/``EyeLike``/``Random*``/``Bernoulli`` whose target type is FLOAT (``to``/``dtype``
  attribute, or the spec's FLOAT default where the attribute is absent) into DOUBLE.

Other float types (float16, bfloat16, float8) are left as they are: a ``Cast`` to float16 inside a
graph is a rounding the model means to do, and the reference does it too.

What cannot be converted raises ``BadInputError`` with one line: a tensor whose data is in an
external file that was not loaded, an op ``onnx.reference`` has no implementation of (custom
domains such as ``com.microsoft``), an input that is missing from the feeds.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from compactify.errors import BadInputError, first_line

FLOAT = TensorProto.FLOAT
DOUBLE = TensorProto.DOUBLE

# Ops whose output type comes from an attribute, with the attribute's name and whether the spec
# defaults it to FLOAT when absent.
_TYPE_ATTRS: dict[str, tuple[str, bool]] = {
    "Cast": ("to", False),
    "EyeLike": ("dtype", False),
    "RandomNormal": ("dtype", True),
    "RandomUniform": ("dtype", True),
    "RandomNormalLike": ("dtype", False),
    "RandomUniformLike": ("dtype", False),
    "Bernoulli": ("dtype", False),
    "Multinomial": ("dtype", False),
}


def _tensor64(t: TensorProto, where: str) -> TensorProto:
    """``t`` with float32 data made float64 (other dtypes returned unchanged)."""
    if t.data_type != FLOAT:
        return t
    if t.data_location == TensorProto.EXTERNAL and not t.HasField("raw_data"):
        raise BadInputError(
            f"tensor {t.name or where!r} keeps its data in an external file that was not loaded: "
            "load the model with onnx.load(path) (load_external_data=True) from its own folder"
        )
    try:
        arr = numpy_helper.to_array(t)
    except Exception as exc:  # a tensor whose payload does not match its shape
        raise BadInputError(f"tensor {t.name or where!r} cannot be read: {first_line(exc)}") from exc
    out = numpy_helper.from_array(np.asarray(arr, dtype=np.float64), t.name)
    out.doc_string = t.doc_string
    return out


def _type64(tp: onnx.TypeProto) -> None:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        if tp.tensor_type.elem_type == FLOAT:
            tp.tensor_type.elem_type = DOUBLE
    elif kind == "sparse_tensor_type":
        if tp.sparse_tensor_type.elem_type == FLOAT:
            tp.sparse_tensor_type.elem_type = DOUBLE
    elif kind == "sequence_type":
        _type64(tp.sequence_type.elem_type)
    elif kind == "optional_type":
        _type64(tp.optional_type.elem_type)
    elif kind == "map_type":
        _type64(tp.map_type.value_type)


def _sparse64(s: onnx.SparseTensorProto, where: str) -> None:
    if s.values.data_type == FLOAT:
        s.values.CopyFrom(_tensor64(s.values, where))


def _attribute64(a: AttributeProto, where: str) -> None:
    if a.type == AttributeProto.TENSOR:
        a.t.CopyFrom(_tensor64(a.t, f"{where}.{a.name}"))
    elif a.type == AttributeProto.TENSORS:
        for i, t in enumerate(a.tensors):
            t.CopyFrom(_tensor64(t, f"{where}.{a.name}[{i}]"))
    elif a.type == AttributeProto.SPARSE_TENSOR:
        _sparse64(a.sparse_tensor, f"{where}.{a.name}")
    elif a.type == AttributeProto.SPARSE_TENSORS:
        for s in a.sparse_tensors:
            _sparse64(s, f"{where}.{a.name}")
    elif a.type == AttributeProto.GRAPH:
        _graph64(a.g)
    elif a.type == AttributeProto.GRAPHS:
        for g in a.graphs:
            _graph64(g)
    elif a.type == AttributeProto.TYPE_PROTO:
        _type64(a.tp)
    elif a.type == AttributeProto.TYPE_PROTOS:
        for tp in a.type_protos:
            _type64(tp)


def _node64(node: onnx.NodeProto) -> None:
    where = node.name or node.op_type
    default_domain = node.domain in ("", "ai.onnx")
    if default_domain and node.op_type == "Constant":
        for a in list(node.attribute):
            if a.ref_attr_name:  # inside a function: the value comes from the caller
                continue
            if a.name == "value_float":
                node.attribute.remove(a)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.float64(a.f), "")))
            elif a.name == "value_floats":
                node.attribute.remove(a)
                vals = np.asarray(list(a.floats), dtype=np.float64)
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(vals, "")))
    if default_domain and node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
        node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float64), "")))
    if default_domain and node.op_type in _TYPE_ATTRS:
        name, float_default = _TYPE_ATTRS[node.op_type]
        found = [a for a in node.attribute if a.name == name]
        if found and found[0].type == AttributeProto.INT and found[0].i == FLOAT:
            found[0].i = DOUBLE
        elif not found and float_default:
            node.attribute.append(helper.make_attribute(name, DOUBLE))
    for a in node.attribute:
        _attribute64(a, where)


def _graph64(g: onnx.GraphProto) -> None:
    for t in g.initializer:
        t.CopyFrom(_tensor64(t, "initializer"))
    for s in g.sparse_initializer:
        _sparse64(s, "sparse initializer")
    for vi in (*g.input, *g.output, *g.value_info):
        _type64(vi.type)
    for node in g.node:
        _node64(node)


def as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which every float32 tensor and type is float64 (see the module
    docstring for the list). External data must already be loaded into the model."""
    if not isinstance(model, onnx.ModelProto):
        raise BadInputError(f"as_float64 takes an onnx.ModelProto, got {type(model).__name__}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _graph64(out.graph)
    for fn in out.functions:
        for node in fn.node:
            _node64(node)
    return out


def _batchnorm_op():
    """An override of onnx.reference's BatchNormalization. Its opset-9 kernel (used for opsets 9 to
    13) takes the presence of ``momentum`` as training mode, and every exporter writes
    ``momentum``: it normalizes with the batch's own statistics, which is wrong by the spec (one
    output means inference; only more outputs mean training) and off by O(1) from the model.
    Training mode (``training_mode=1``, ``is_test=0``, or extra outputs before opset 14) is refused:
    it is not the model a converter reads."""
    class BatchNormalization(OpRun):
        op_domain = ""
        op_schema = None  # no schema defaults: every attribute is read from the node below

        def _run(self, x, scale, bias, mean, var, **_attrs):
            node = self.onnx_node
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            outputs = [o for o in node.output if o]
            training = attrs.get("training_mode", 0) == 1 or attrs.get("is_test", 1) == 0
            if "training_mode" not in attrs and "is_test" not in attrs:
                training = len(outputs) > 1
            if training:
                raise BadInputError(f"BatchNormalization {node.name or outputs[0]!r} is in training mode: export the model in eval mode")
            eps = float(attrs.get("epsilon", 1e-5))
            shape = (-1,) + (1,) * (x.ndim - 2)
            dtype = np.result_type(x, scale, bias, mean, var)
            y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + dtype.type(eps)) * scale.reshape(shape) + bias.reshape(shape)
            return (y.astype(x.dtype, copy=False),)

    return BatchNormalization


def _elem_type(vi: onnx.ValueInfoProto) -> int | None:
    tp = vi.type
    return tp.tensor_type.elem_type if tp.WhichOneof("value") == "tensor_type" else None


class Float64Reference:
    """``model`` converted once with ``as_float64`` and held in a ``ReferenceEvaluator``; ``run``
    evaluates it on any number of feeds. Float32 (and other float) feeds for inputs the source
    declares float32 are cast to float64; other inputs are passed as given."""

    def __init__(self, model: onnx.ModelProto):
        self.model = as_float64(model)
        initializers = {t.name for t in model.graph.initializer}
        # Old (IR < 4) files list initializers among the inputs: those need no feed.
        self.input_names = [vi.name for vi in model.graph.input if vi.name not in initializers]
        self.output_names = [vi.name for vi in model.graph.output]
        self._all_inputs = {vi.name for vi in model.graph.input}
        self._float_inputs = {vi.name for vi in model.graph.input if _elem_type(vi) == FLOAT}
        try:
            self._evaluator = ReferenceEvaluator(self.model, new_ops=[_batchnorm_op()])
        except Exception as exc:
            raise BadInputError(f"onnx.reference cannot run this graph in float64: {first_line(exc)}") from exc

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The graph's outputs, in the order of ``graph.output``, as numpy arrays."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise BadInputError(f"no feed for graph input(s) {', '.join(missing)} (inputs: {', '.join(self.input_names)})")
        unknown = [n for n in feeds if n not in self._all_inputs]
        if unknown:
            raise BadInputError(f"feed(s) {', '.join(unknown)} are not inputs of the graph (inputs: {', '.join(self.input_names)})")
        cast = {}
        for name, value in feeds.items():
            arr = np.asarray(value)
            if name in self._float_inputs:
                if not np.issubdtype(arr.dtype, np.floating):
                    raise BadInputError(f"input {name!r} is float32 in the graph but was fed {arr.dtype}")
                arr = arr.astype(np.float64, copy=False)
            cast[name] = arr
        try:
            outs = self._evaluator.run(None, cast)
        except BadInputError:
            raise
        except Exception as exc:
            raise BadInputError(f"onnx.reference failed to run the graph in float64: {first_line(exc)}") from exc
        return [np.asarray(o) for o in outs]

    __call__ = run


def run_float64(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """``model``'s outputs (in graph-output order) computed in float64 by onnx.reference. For
    several feeds, build one ``Float64Reference(model)`` and call its ``run``."""
    return Float64Reference(model).run(feeds)


def run_float64_many(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """``run_float64`` on each of several feeds, converting the model once."""
    ref = Float64Reference(model)
    return [ref.run(f) for f in feeds]
