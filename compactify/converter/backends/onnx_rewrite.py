"""Apply the plan to an ONNX graph: each merged region becomes one Conv (or Gemm, or MatMul and
Add) that writes the region's exit tensor, removed regions hand their input straight on, and
every node and initializer no graph output needs is dropped. Input and output names, order,
types, opsets and metadata stay as they were.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compactify.converter.backends.names import fresh_name
from compactify.converter.engine import algebra as A
from compactify.converter.engine.graph import AffineGraph, static
from compactify.converter.engine.plan import Decision
from compactify.converter.frontends.onnx.graph import OnnxGraph


def rewrite_onnx(source: OnnxGraph, graph: AffineGraph, decisions: list[Decision]) -> tuple[onnx.ModelProto, bool]:
    """The compact model (a new ModelProto) and whether anything changed."""
    model = onnx.ModelProto()
    model.CopyFrom(source.model)
    g = model.graph
    taken = {t.name for t in g.initializer} | {o for n in g.node for o in n.output} | {i.name for i in g.input}
    outputs = {o.name for o in g.output}
    written: dict[str, list[onnx.NodeProto]] = {}  # region exit -> the nodes that now compute it
    dropped: set[str] = set()  # handles of nodes merged away
    rename: dict[str, str] = {}
    new_inits: list[onnx.TensorProto] = []
    changed = False
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    for d in decisions:
        region = d.region
        absorbed = {n for step in region.steps.values() for n in step.absorbs}
        entry = rename.get(region.entry, region.entry)
        dtype = _dtype(source.model, region.entry)
        shapes = graph.shape(region.entry), graph.shape(region.exit)
        if d.kind == "dense":
            nodes, inits = _layer(d.operator, entry, region.exit, *shapes, dtype, taken, opset)
            written[region.exit] = nodes
            new_inits += inits
        elif d.kind == "factored" and d.factors is not None:
            first, second = d.factors
            middle = fresh_name(f"{region.exit}/factor", taken)
            nodes, inits = _layer(first, entry, middle, shapes[0], shapes[0], dtype, taken, opset)
            more, more_inits = _layer(second, middle, region.exit, *shapes, dtype, taken, opset)
            written[region.exit] = nodes + more
            new_inits += inits + more_inits
        elif d.kind == "removed":
            if region.exit in outputs:
                written[region.exit] = [helper.make_node("Identity", [entry], [region.exit],
                                                         name=fresh_name(f"{region.exit}/identity", taken))]
            else:
                rename[region.exit] = entry
        else:
            continue
        dropped |= set(region.nodes) | absorbed
        changed = True
    kept: list[onnx.NodeProto] = []
    for node in g.node:
        handle = node.output[0] if node.output else None
        if handle in written:
            kept.extend(written[handle])
            continue
        if handle in dropped:
            continue
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        kept.append(node)
    g.initializer.extend(new_inits)
    del g.node[:]
    g.node.extend(_live(kept, outputs))
    _drop_unused(g)
    return model, changed


def _layer(op: A.AffineConv, entry: str, exit: str, entry_shape, exit_shape, dtype: np.dtype,
           taken: set[str], opset: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes computing ``op`` from ``entry`` (of ``entry_shape``) into ``exit`` (whose shape
    is ``exit_shape``), and their initializers."""
    base = f"{exit}/merged"
    weight_name, bias_name = fresh_name(f"{base}.weight", taken), fresh_name(f"{base}.bias", taken)
    inits = []
    if op.dilates_input:
        return _transposed(op, entry, exit, dtype, taken, opset)
    if op.ndim > 0:
        inits.append(numpy_helper.from_array(op.weight.numpy().astype(dtype), weight_name))
        inputs = [entry, weight_name]
        if op.has_bias:
            inits.append(numpy_helper.from_array(op.bias.numpy().astype(dtype), bias_name))
            inputs.append(bias_name)
        node = helper.make_node(
            "Conv", inputs, [exit], name=fresh_name(base, taken), kernel_shape=list(op.kernel), strides=list(op.stride),
            pads=[b for b, _ in op.padding] + [a for _, a in op.padding], dilations=list(op.dilation), group=op.groups)
        return [node], inits
    weight = A.dense_weight(op).numpy()  # [out, in]
    reshaped = entry_shape is not None and exit_shape is not None and \
        [str(d) for d in entry_shape[:-1]] != [str(d) for d in exit_shape[:-1]]
    target = exit if not reshaped else fresh_name(f"{base}.rows", taken)
    if entry_shape is not None and len(entry_shape) == 2:
        inits.append(numpy_helper.from_array(weight.astype(dtype), weight_name))
        inputs = [entry, weight_name]
        if op.has_bias:
            inits.append(numpy_helper.from_array(op.bias.numpy().astype(dtype), bias_name))
            inputs.append(bias_name)
        nodes = [helper.make_node("Gemm", inputs, [target], name=fresh_name(base, taken), transB=1)]
    else:  # features on the last axis of a tensor of any rank
        inits.append(numpy_helper.from_array(np.ascontiguousarray(weight.T).astype(dtype), weight_name))
        product = target if not op.has_bias else fresh_name(f"{base}.matmul", taken)
        nodes = [helper.make_node("MatMul", [entry, weight_name], [product], name=fresh_name(base, taken))]
        if op.has_bias:
            inits.append(numpy_helper.from_array(op.bias.numpy().astype(dtype), bias_name))
            nodes.append(helper.make_node("Add", [product, bias_name], [target], name=fresh_name(f"{base}/bias", taken)))
    if reshaped:  # the region spans a reshape that keeps the last axis: give the exit its shape back
        dims = [static(d) if static(d) is not None else -1 for d in exit_shape]
        shape_name = fresh_name(f"{base}.shape", taken)
        inits.append(numpy_helper.from_array(np.array(dims, dtype=np.int64), shape_name))
        nodes.append(helper.make_node("Reshape", [target, shape_name], [exit], name=fresh_name(f"{base}/reshape", taken)))
    return nodes, inits


def _transposed(op: A.AffineConv, entry: str, exit: str, dtype: np.dtype, taken: set[str],
                opset: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A ConvTranspose node computing ``op`` (which spreads its input), behind a Pad node where
    its own padding cannot say all; ONNX crops each end on its own (``pads`` begin and end), so
    the layer's output crop goes there."""
    form = A.transposed_layer(op)
    base = f"{exit}/merged"
    weight_name = fresh_name(f"{base}.weight", taken)
    inits = [numpy_helper.from_array(form.weight.numpy().astype(dtype), weight_name)]
    nodes = []
    if any(b or a for b, a in form.input_pad):
        padded = fresh_name(f"{base}.padded", taken)
        pads = [0, 0] + [b for b, _ in form.input_pad] + [0, 0] + [a for _, a in form.input_pad]
        if opset >= 11:
            pads_name = fresh_name(f"{base}.pads", taken)
            inits.append(numpy_helper.from_array(np.array(pads, dtype=np.int64), pads_name))
            nodes.append(helper.make_node("Pad", [entry, pads_name], [padded], name=fresh_name(f"{base}/pad", taken)))
        else:
            nodes.append(helper.make_node("Pad", [entry], [padded], name=fresh_name(f"{base}/pad", taken), pads=pads))
        entry = padded
    inputs = [entry, weight_name]
    if op.has_bias:
        bias_name = fresh_name(f"{base}.bias", taken)
        inits.append(numpy_helper.from_array(op.bias.numpy().astype(dtype), bias_name))
        inputs.append(bias_name)
    nodes.append(helper.make_node(
        "ConvTranspose", inputs, [exit], name=fresh_name(base, taken), kernel_shape=list(op.kernel),
        strides=list(form.stride), pads=[p + b for p, (b, _) in zip(form.padding, form.output_crop)]
        + [p + a for p, (_, a) in zip(form.padding, form.output_crop)], output_padding=list(form.output_padding),
        dilations=list(form.dilation), group=op.groups))
    return nodes, inits


def _dtype(model: onnx.ModelProto, name: str) -> np.dtype:
    """The float type the region's input has (the merged weights are stored in it)."""
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if value.name == name and value.type.tensor_type.elem_type:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
            if dtype.kind == "f":
                return dtype
    return np.dtype(np.float32)


def _live(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """The nodes some graph output needs, in their order."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed |= {n for n in node.input if n}
            for attr in node.attribute:  # tensors a subgraph reads from outside
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    needed |= {n for inner in sub.node for n in inner.input if n}
    return keep[::-1]


def _drop_unused(g: onnx.GraphProto) -> None:
    read = {n for node in g.node for n in node.input} | {o.name for o in g.output}
    for node in g.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                read |= {n for inner in sub.node for n in inner.input}
    inputs = {i.name for i in g.input}
    keep = [t for t in g.initializer if t.name in read or t.name in inputs]
    del g.initializer[:]
    g.initializer.extend(keep)
    produced = {o for node in g.node for o in node.output} | inputs
    info = [v for v in g.value_info if v.name in produced]
    del g.value_info[:]
    g.value_info.extend(info)
