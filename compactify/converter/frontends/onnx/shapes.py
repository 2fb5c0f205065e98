"""Shapes of every tensor of an ONNX graph: symbolic as the file states them (a dynamic batch
stays a name), and concrete at the example input the plan is costed and checked on."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from compactify.converter.engine.graph import Dim
from compactify.errors import BadInputError


@dataclass
class InputSpec:
    name: str
    dims: tuple[Dim, ...]
    elem_type: int

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type))


def graph_inputs(model: onnx.ModelProto) -> list[InputSpec]:
    """The real inputs (not initializers listed as inputs), in order."""
    inits = {t.name for t in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        specs.append(InputSpec(value.name, _dims(value, value.name), value.type.tensor_type.elem_type))
    return specs


def symbolic_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    inferred = _infer(model)
    shapes = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = _dims(value, value.name)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def example_shapes(specs: list[InputSpec], input_shape: tuple[int, ...] | None, batch: int) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: ``input_shape`` for the first input (``--input-shape``), the
    given batch for a symbolic batch dim; any other symbolic dim needs ``--input-shape``."""
    out = {}
    for k, spec in enumerate(specs):
        if k == 0 and input_shape is not None:
            if len(input_shape) != len(spec.dims) or any(isinstance(d, int) and d != v for d, v in
                                                         zip(spec.dims[1:], input_shape[1:])):
                raise BadInputError(f"--input-shape {','.join(map(str, input_shape))} does not fit input "
                                    f"{spec.name!r} of shape {_show(spec.dims)}")
            out[spec.name] = tuple(input_shape)
            continue
        dims = [batch if i == 0 and not isinstance(d, int) else d for i, d in enumerate(spec.dims)]
        if any(not isinstance(d, int) for d in dims):
            raise BadInputError(f"input {spec.name!r} has symbolic dims {_show(spec.dims)}; pass --input-shape "
                                "N,C,H,W to say the size to plan and check at")
        out[spec.name] = tuple(dims)
    return out


def concrete_shapes(model: onnx.ModelProto, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape at these input shapes: by shape inference, and where that leaves a
    dim open (data-dependent reshapes), by one ONNX Runtime run that returns every tensor."""
    fixed = copy.deepcopy(model)
    for value in fixed.graph.input:
        if value.name in inputs:
            shape = value.type.tensor_type.shape
            for dim, size in zip(shape.dim, inputs[value.name]):
                dim.Clear()
                dim.dim_value = size
    del fixed.graph.value_info[:]
    inferred = _infer(fixed)
    shapes: dict[str, tuple[int, ...]] = {}
    for value in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = _dims(value, value.name) if value.type.tensor_type.HasField("shape") else None
        if dims is not None and all(isinstance(d, int) for d in dims):
            shapes[value.name] = dims
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    missing = [o for n in model.graph.node for o in n.output if o and o not in shapes]
    if missing:
        shapes.update(_run_shapes(fixed, inputs, missing))
    return shapes


def settle_unknown(symbolic: dict[str, tuple[Dim, ...]], at_a: dict[str, tuple[int, ...]],
                   at_b: dict[str, tuple[int, ...]], batch: tuple[str, int, int] | None = None) -> dict[str, tuple[Dim, ...]]:
    """Symbolic shapes with each dim shape inference left unknown (a reshape to a computed shape)
    fixed where it is the same at two different batch sizes, named as the batch where it follows
    the batch (``batch`` = its name and its two sizes), and left open otherwise."""
    def settle(d, x, y):
        if not unknown(d) or x is None:
            return d
        if x == y:
            return x
        return batch[0] if batch is not None and (x, y) == batch[1:] else d

    out = {}
    for name, dims in symbolic.items():
        a, b = at_a.get(name), at_b.get(name)
        if a is None or b is None or len(a) != len(dims) or len(b) != len(dims):
            out[name] = dims
            continue
        out[name] = tuple(settle(d, x, y) for d, x, y in zip(dims, a, b))
    for name, a in at_a.items():  # tensors shape inference said nothing about
        if name not in out and name in at_b and len(a) == len(at_b[name]):
            out[name] = tuple(settle(f"?{name}:{i}", x, y) for i, (x, y) in enumerate(zip(a, at_b[name])))
    return out


def unknown(dim: Dim) -> bool:
    """A dim no one named: left open by the file, or named by onnx shape inference (``unk__3``)."""
    return isinstance(dim, str) and (dim.startswith("?") or dim.startswith("unk__"))


def has_unknown(symbolic: dict[str, tuple[Dim, ...]]) -> bool:
    return any(unknown(d) for dims in symbolic.values() for d in dims)


def _run_shapes(model: onnx.ModelProto, inputs: dict[str, tuple[int, ...]], names: list[str]) -> dict[str, tuple]:
    probe = copy.deepcopy(model)
    present = {o.name for o in probe.graph.output}
    for name in names:
        if name not in present:
            probe.graph.output.append(helper.make_value_info(name, onnx.TypeProto()))
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a graph that only runs at its traced batch is expected here
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros(inputs[i.name], dtype=helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type))
                 for i in probe.graph.input if i.name in inputs}
        values = session.run(names, feeds)
    except Exception:  # shapes stay unknown; the regions around them are left as they are
        return {}
    return {n: tuple(v.shape) for n, v in zip(names, values) if isinstance(v, np.ndarray)}


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # custom domains and the like: what the file itself states
        return model


def _dims(value: onnx.ValueInfoProto, name: str) -> tuple[Dim, ...]:
    dims = []
    for i, dim in enumerate(value.type.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            dims.append(dim.dim_param)
        else:  # unnamed and unknown: a name of its own, equal to no other dim
            dims.append(f"?{name}:{i}")
    return tuple(dims)


def _show(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"
