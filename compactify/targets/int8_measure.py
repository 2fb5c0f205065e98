"""What int8 quantization cost, measured on held-out inputs the calibrator never saw
(:mod:`compactify.targets.calibration`): top-1 agreement of the int8 model with the fp32 compact
model, accuracy when labels are known, max and mean error against the source run in float64
(``CompactModel.reference``, so an ONNX source is measured the same way as a PyTorch one), and per
layer (every Conv/Gemm/MatMul) the relative error of its output between the fp32 and the int8
model. For that comparison the layers' outputs and inputs are added as graph outputs of both
models, which run unoptimized (the int8 one then computes ``DQ(Q(x))`` in float: the same
rounding, unfused); ``added`` is a layer's output error minus its input's, the error its own
weights and input quantization add, so the top of that list is what ``--int8-keep`` should name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from compactify.errors import BadInputError
from compactify.measure.metrics import compare
from compactify.targets.calibration import CalibrationSet, batches
from compactify.targets.int8_quantize import fixed_batch, linear_layers, qdq_structure

# The source run in float64 on named inputs (``CompactModel.reference``).
Reference = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]
EVAL_BATCH = 64
LAYER_SAMPLES = 64  # held-out inputs of the per-layer comparison (every layer's output is kept per batch)
LAYER_BATCH = 8


def _session(path: str | Path | bytes, optimized: bool = True):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path if isinstance(path, bytes) else str(path), options,
                                providers=["CPUExecutionProvider"])


def run_onnx(session, x: np.ndarray, fixed: int | None, batch: int = EVAL_BATCH) -> list[np.ndarray]:
    """Every output of ``session`` on ``x``, batch by batch (a static batch is padded, the padding dropped)."""
    name = session.get_inputs()[0].name
    parts: list[list[np.ndarray]] = []
    for chunk, n in batches(x, fixed or batch, fixed is not None):
        parts.append([o[:n] for o in session.run(None, {name: chunk})])
    return [np.concatenate(p) for p in zip(*parts)]


def run_reference(reference: Reference, input_name: str, x: np.ndarray, fixed: int | None,
                  batch: int = EVAL_BATCH) -> list[np.ndarray]:
    """Every output of the float64 source on ``x``, batch by batch like :func:`run_onnx` (a static batch
    padded, the padding dropped)."""
    parts: list[list[np.ndarray]] = []
    for chunk, n in batches(x, fixed or batch, fixed is not None):
        parts.append([np.asarray(o)[:n] for o in reference({input_name: chunk})])
    return [np.concatenate(p) for p in zip(*parts)]


def output_ranges(model) -> dict[str, tuple[float, float]]:
    """The float range each quantized graph output can take (its last DequantizeLinear, per tensor)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for value in model.graph.output:
        dq = producers.get(value.name)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[1] not in inits or inits[dq.input[1]].size != 1:
            continue
        zero = inits[dq.input[2]] if len(dq.input) > 2 and dq.input[2] in inits else np.zeros(1, np.int8)
        info = np.iinfo(zero.dtype)
        scale, z = float(inits[dq.input[1]].reshape(())), int(zero.reshape(()))
        out[value.name] = ((info.min - z) * scale, (info.max - z) * scale)
    return out


def classifier_index(outputs: Sequence[np.ndarray]) -> int | None:
    for i, o in enumerate(outputs):
        if o.ndim == 2 and o.shape[1] >= 2:
            return i
    return None


def with_outputs(model, names: Sequence[str]) -> bytes:
    """``model`` (serialized) with the float tensors ``names`` added as graph outputs, to read them."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    present = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for name in names:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    return model.SerializeToString()


def layer_errors(fp32_path: str | Path, int8_path: str | Path, x: np.ndarray) -> list[dict[str, Any]]:
    """Relative error (``||int8 - fp32|| / ||fp32||``) of every Conv/Gemm/MatMul layer's output (before it
    is quantized) and of the input it reads (after it is quantized), between the fp32 and the int8 model;
    ``added`` (their difference: what its own int8 weights add) largest first. Both models run unoptimized
    with those tensors as extra graph outputs."""
    fp, q = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    fixed = fixed_batch(fp)
    q_nodes = {n.name: n for n in q.graph.node}
    q_quantized = {r["layer"] for r in qdq_structure(q) if r["weight"] is not None}
    layers, pairs = [], {}  # (fp32 tensor, int8 tensor) -> key
    for node, weight in linear_layers(fp):
        qn = q_nodes.get(node.name)
        if qn is None:
            continue
        out, inp = (node.output[0], qn.output[0]), (node.input[0], qn.input[0])
        pairs.setdefault(out, len(pairs))
        pairs.setdefault(inp, len(pairs))
        layers.append({"layer": node.name, "op": node.op_type, "weight": weight, "int8": node.name in q_quantized,
                       "_out": out, "_in": inp})
    if not layers:
        return []

    fp_sess = _session(with_outputs(fp, [f for f, _ in pairs]), optimized=False)
    q_sess = _session(with_outputs(q, [t for _, t in pairs]), optimized=False)
    fp_names = [o.name for o in fp_sess.get_outputs()]
    q_names = [o.name for o in q_sess.get_outputs()]
    num = dict.fromkeys(pairs, 0.0)
    den = dict.fromkeys(pairs, 0.0)
    name = fp.graph.input[0].name
    for chunk, n in batches(x[:LAYER_SAMPLES], fixed or LAYER_BATCH, fixed is not None):
        a = dict(zip(fp_names, fp_sess.run(None, {name: chunk})), **{name: chunk})
        b = dict(zip(q_names, q_sess.run(None, {name: chunk})), **{name: chunk})
        for f_name, q_name in pairs:
            ref = a[f_name][:n].astype(np.float64)
            got = b[q_name][:n].astype(np.float64)
            num[f_name, q_name] += float(np.sum((got - ref) ** 2))
            den[f_name, q_name] += float(np.sum(ref ** 2))

    def rel(key):
        return math.sqrt(num[key] / den[key]) if den[key] > 0 else (0.0 if num[key] == 0 else math.inf)

    for row in layers:
        row["rel_error"] = rel(row.pop("_out"))
        row["input_rel_error"] = rel(row.pop("_in"))
        row["added"] = row["rel_error"] - row["input_rel_error"]
        row["sqnr_db"] = -20 * math.log10(row["rel_error"]) if 0 < row["rel_error"] < math.inf else None
    return sorted(layers, key=lambda r: -r["added"])


def measure(fp32_path: str | Path, int8_path: str | Path, data: CalibrationSet, reference: Reference,
            output_names: Sequence[str]) -> dict[str, Any]:
    """The cost of quantization on the held-out inputs (see the module docstring)."""
    fp32_model = onnx.load(str(fp32_path), load_external_data=False)
    fixed = fixed_batch(fp32_model)
    x = data.held_out
    fp32 = run_onnx(_session(fp32_path), x, fixed)
    int8 = run_onnx(_session(int8_path), x, fixed)
    ref = run_reference(reference, fp32_model.graph.input[0].name, x, fixed)
    ranges = output_ranges(onnx.load(str(int8_path)))
    out: dict[str, Any] = {"reference": "source float64", "outputs": {}}
    for i, name in enumerate(output_names):
        c = compare(int8[i], ref[i], name=name, classifier=False)
        c32 = compare(fp32[i], ref[i], name=name, classifier=False)
        lo, hi = ranges.get(name, (-math.inf, math.inf))
        out["outputs"][name] = {"max_abs": c.max_abs, "mean_abs": c.mean_abs, "max_rel_error": c.max_rel_error,
                                "fp32_max_abs": c32.max_abs, "nonfinite": c.nonfinite,
                                # values the fp32 model gives beyond what the int8 output can hold: clipped
                                "clipped": float(np.mean((fp32[i] < lo) | (fp32[i] > hi))) if fp32[i].size else 0.0}
    stats = out["outputs"].values()
    out["max_abs_error"] = max(s["max_abs"] for s in stats)
    out["mean_abs_error"] = max(s["mean_abs"] for s in stats)
    out["max_rel_error"] = max(s["max_rel_error"] for s in stats)
    out["fp32_max_abs_error"] = max(s["fp32_max_abs"] for s in stats)
    out["clipped"] = max(s["clipped"] for s in stats)
    k = classifier_index(fp32)
    out["classifier_output"] = None if k is None else output_names[k]
    out["top1_agreement"] = None if k is None else float(np.mean(int8[k].argmax(1) == fp32[k].argmax(1)))
    out["accuracy_fp32"] = out["accuracy_int8"] = out["accuracy_source"] = None
    labels = data.held_out_labels
    if labels is not None and k is not None:
        classes = fp32[k].shape[1]
        if labels.max() >= classes:
            raise BadInputError(f"the calibration labels hold class {int(labels.max())}, but the model's output "
                                f"{output_names[k]} has {classes} classes")
        out["accuracy_fp32"] = float(np.mean(fp32[k].argmax(1) == labels))
        out["accuracy_int8"] = float(np.mean(int8[k].argmax(1) == labels))
        out["accuracy_source"] = float(np.mean(ref[k].argmax(1) == labels))
    return out
