"""An fp16 copy of an fp32 ONNX model: float initializers and constants in fp16 (clamped to
the fp16 range), casts retargeted, fp32 kept at the inputs and outputs if asked, and the copy
checked against the original in ONNX Runtime."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compactify.errors import BadInputError, CompactifyError, VerificationError
from compactify.targets.onnx_io import check_onnx, run_ort, save_onnx, short_error


@dataclass
class Fp16Result:
    path: Path
    keep_io_types: bool
    converted_initializers: int
    clamped_values: int  # |w| > 65504, clamped to the largest finite fp16
    flushed_values: int  # nonzero weights that became 0 in fp16
    kept_fp32_nodes: list[str]  # ops whose float inputs are parameters, run in fp32 between casts
    max_abs_diff: float | None  # fp16 vs fp32 model in ONNX Runtime on random inputs
    max_rel_diff: float | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out



_FP16_MAX = float(np.finfo(np.float16).max)
# Ops whose float inputs are parameters (scales, sizes, distribution settings), not
# activations: they stay fp32, between casts, so fp16 rounding cannot change their meaning.
_KEEP_FP32_OPS = frozenset(
    {"Resize", "Upsample", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "RoiAlign", "NonMaxSuppression"}
)


def to_fp16(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    keep_io_types: bool = True,
    check: bool = True,
    check_rtol: float = 1e-2,
    force: bool = True,
) -> Fp16Result:
    """Write an fp16 copy of an fp32 ONNX model.

    Float initializers and constants become fp16 (clamped to +-65504), Casts to float become
    casts to fp16, and with ``keep_io_types`` the graph keeps fp32 inputs and outputs with
    Cast nodes just inside. With ``check``, ONNX Runtime compares both models on random
    inputs and VerificationError is raised if the fp16 outputs are not finite or differ by
    more than ``check_rtol`` times the largest fp32 output magnitude.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = _load_onnx(onnx_path)
    model, stats = _convert_fp16(source, keep_io_types)
    check_onnx(model, "fp16")
    max_abs = max_rel = None
    if check:
        max_abs, max_rel = _compare_fp16(source, model, keep_io_types)
        if not (np.isfinite(max_abs) and max_rel <= check_rtol):
            raise VerificationError(
                f"the fp16 model's outputs differ from fp32 by {max_abs:.3g} ({max_rel:.3g} of the output scale, "
                f"limit {check_rtol:g}); this model is not safe to run in fp16"
            )
    save_onnx(model, out_path, force)
    return Fp16Result(path=out_path, keep_io_types=keep_io_types, max_abs_diff=max_abs, max_rel_diff=max_rel, **stats)


def _load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise BadInputError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable ONNX model: {short_error(exc)}") from exc


def _convert_fp16(source: onnx.ModelProto, keep_io_types: bool) -> tuple[onnx.ModelProto, dict[str, Any]]:
    model = copy.deepcopy(source)
    graph = model.graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise BadInputError(f"fp16 conversion does not handle control flow ({node.op_type} {node.name!r} has a subgraph)")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise BadInputError(f"cannot infer the tensor types needed for fp16 conversion: {short_error(exc)}") from exc
    elem: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        elem[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        elem[init.name] = init.data_type

    def is_float(name: str) -> bool:
        return bool(name) and elem.get(name) == TensorProto.FLOAT

    for node in graph.node:
        for out in node.output:
            if out and out not in elem:
                raise BadInputError(f"cannot convert to fp16: the type of tensor {out!r} ({node.op_type}) is unknown")

    def blocked(node: onnx.NodeProto) -> bool:
        return node.op_type in _KEEP_FP32_OPS or node.domain not in ("", "ai.onnx")

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    output_names = {o.name for o in graph.output}

    def only_blocked_use(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(blocked(u) for u in users) and name not in output_names

    stats = {"converted_initializers": 0, "clamped_values": 0, "flushed_values": 0, "kept_fp32_nodes": []}
    h16: dict[str, str] = {}  # tensor -> name of its fp16 version
    h32: dict[str, str] = {}  # tensor -> name of its fp32 version
    new_nodes: list[onnx.NodeProto] = []
    counter = [0]

    def cast(src: str, dst: str, to: int) -> onnx.NodeProto:
        counter[0] += 1
        return helper.make_node("Cast", [src], [dst], to=to, name=f"compactify_fp16_cast_{counter[0]}")

    def need16(name: str) -> str:
        if name not in h16:
            new_nodes.append(cast(h32[name], f"{name}__fp16", TensorProto.FLOAT16))
            h16[name] = f"{name}__fp16"
        return h16[name]

    def need32(name: str) -> str:
        if name not in h32:
            new_nodes.append(cast(h16[name], f"{name}__fp32", TensorProto.FLOAT))
            h32[name] = f"{name}__fp32"
        return h32[name]

    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            if keep_io_types:
                h32[value.name] = value.name
            else:
                value.type.tensor_type.elem_type = TensorProto.FLOAT16
                h16[value.name] = value.name

    for i, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        if only_blocked_use(init.name):
            h32[init.name] = init.name
            continue
        graph.initializer[i].CopyFrom(_tensor_to_fp16(init, stats))
        stats["converted_initializers"] += 1
        h16[init.name] = init.name

    for node in graph.node:
        if blocked(node):
            stats["kept_fp32_nodes"].append(f"{node.op_type}:{node.name}")
            for k, name in enumerate(node.input):
                if is_float(name):
                    node.input[k] = need32(name)
            new_nodes.append(node)
            for name in node.output:
                if is_float(name):
                    h32[name] = name
            continue
        if node.op_type == "Constant" and is_float(node.output[0]):
            if only_blocked_use(node.output[0]):
                h32[node.output[0]] = node.output[0]
                new_nodes.append(node)
                continue
            _constant_to_fp16(node, stats)
        for k, name in enumerate(node.input):
            if is_float(name):
                node.input[k] = need16(name)
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        if node.op_type == "ConstantOfShape":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_tensor_to_fp16(attr.t, stats))
        new_nodes.append(node)
        for name in node.output:
            if is_float(name):
                h16[name] = name

    # Graph outputs: the tensor named like the output must have the io type.
    renames: dict[str, str] = {}
    tail: list[onnx.NodeProto] = []
    for value in graph.output:
        name = value.name
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        want32 = keep_io_types
        if want32 and h32.get(name) == name or not want32 and h16.get(name) == name:
            pass
        else:
            inner = f"{name}__{'fp16' if want32 else 'fp32'}_out"
            renames[name] = inner
            tail.append(cast(inner, name, TensorProto.FLOAT if want32 else TensorProto.FLOAT16))
        if not want32:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    if renames:
        for node in new_nodes:
            for k, name in enumerate(node.input):
                node.input[k] = renames.get(name, name)
            for k, name in enumerate(node.output):
                node.output[k] = renames.get(name, name)

    del graph.node[:]
    graph.node.extend(new_nodes + tail)
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise CompactifyError(f"the fp16 graph is not type-consistent: {short_error(exc)}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    props["compactify.precision"] = "fp16" + (" (fp32 io)" if keep_io_types else "")
    helper.set_model_props(model, props)
    return model, stats


def _tensor_to_fp16(tensor: onnx.TensorProto, stats: dict[str, Any]) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float64)
    clamped = np.clip(values, -_FP16_MAX, _FP16_MAX)
    stats["clamped_values"] += int(np.count_nonzero(clamped != values))
    half = clamped.astype(np.float16)
    stats["flushed_values"] += int(np.count_nonzero((half == 0) & (values != 0)))
    return numpy_helper.from_array(half, tensor.name)


def _constant_to_fp16(node: onnx.NodeProto, stats: dict[str, Any]) -> None:
    for attr in list(node.attribute):
        if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_tensor_to_fp16(attr.t, stats))
        elif attr.name in ("value_float", "value_floats"):
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
            node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute("value", _tensor_to_fp16(numpy_helper.from_array(values), stats)))


def _static_feeds(model: onnx.ModelProto, dtype, batches=(1, 2)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    initializers = {i.name for i in model.graph.initializer}
    feeds = []
    for batch in batches:
        feed = {}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            dims = []
            for k, d in enumerate(value.type.tensor_type.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(d.dim_value)
                elif k == 0:
                    dims.append(batch)
                else:
                    raise BadInputError(f"input {value.name!r} has a dynamic dimension {k}; only the batch may be dynamic")
            feed[value.name] = rng.standard_normal(dims).astype(dtype)
        feeds.append(feed)
    return feeds


def _compare_fp16(fp32: onnx.ModelProto, fp16: onnx.ModelProto, keep_io_types: bool) -> tuple[float, float]:
    max_abs = 0.0
    scale = 0.0
    for feed in _static_feeds(fp32, np.float32):
        ref = run_ort(fp32, feed)
        feed16 = feed if keep_io_types else {k: v.astype(np.float16) for k, v in feed.items()}
        got = run_ort(fp16, feed16)
        for g, r in zip(got, ref):
            g = np.asarray(g, dtype=np.float64)
            r = np.asarray(r, dtype=np.float64)
            if g.shape != r.shape or not np.all(np.isfinite(g)):
                return float("inf"), float("inf")
            if r.size:
                max_abs = max(max_abs, float(np.abs(g - r).max()))
                scale = max(scale, float(np.abs(r).max()))
    return max_abs, (max_abs / scale if scale > 0 else max_abs)
