"""INT8 for the compact network (``convert --int8``): quantized with onnxruntime.quantization, measured.

The quantizer is ONNX Runtime's own ``quantize_static`` in QDQ form (QuantizeLinear/DequantizeLinear
pairs around float ops, which ONNX Runtime fuses into QLinearConv/QGemm and TensorRT reads as
explicit quantization); nothing here computes a scale by hand. Its settings:

- weights: int8, symmetric, one scale per output channel (``per_channel=True``); merging the
  branches of a re-parameterized block spreads the channels' ranges apart, so one scale per tensor
  would round the small channels away (``benchmarks/int8.py`` measures both);
- activations: int8, one scale per tensor, calibrated on the calibration inputs with MinMax,
  Entropy (KL over :data:`ENTROPY_BINS` histogram bins) or Percentile (99.999%) ranges
  (``--calibration-method``), asymmetric for ONNX Runtime (a ReLU then
  folds into the zero point and the whole chain stays int8); with ``--trt`` the file is written in
  the form TensorRT takes: symmetric activations (TensorRT needs zero points of 0), float biases
  (its parser rejects int32 DequantizeLinear) and float weights behind a per-channel Q/DQ pair;
- ``--int8-keep LAYER,...``: those layers stay in float (``nodes_to_exclude``).

What quantization cost is measured on held-out inputs the calibrator never saw
(:mod:`compactify.targets.calibration`): top-1 agreement of the int8 model with the fp32 compact
model, accuracy when labels are known, max and mean error against the source run in float64
(``CompactModel.reference``, so an ONNX source is measured the same way as a PyTorch one),
and per layer (every Conv/Gemm/MatMul) the relative error of its output between the fp32 and the
int8 model. For that comparison the layers' outputs and inputs are added as graph outputs of both
models, which run unoptimized (the int8 one then computes ``DQ(Q(x))`` in float: the same
rounding, unfused); ``added`` is a layer's output error minus its input's, the error its own
weights and input quantization add, so the top of that list is what ``--int8-keep`` should name.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

from compactify.errors import BadInputError, CompactifyError, first_line
from compactify.measure.metrics import compare
from compactify.targets.calibration import CalibrationSet, batches, data_reader

# The source run in float64 on named inputs (``CompactModel.reference``).
Reference = Callable[[Mapping[str, np.ndarray]], list[np.ndarray]]

METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 32
EVAL_BATCH = 64
LAYER_SAMPLES = 64  # held-out inputs of the per-layer comparison (every layer's output is kept per batch)
LAYER_BATCH = 8
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
SUMMARY_LAYERS = 3
# Histogram bins of the entropy calibrator: TensorRT's 2048 (searched down to 128 quantized bins).
# quantize_static cannot pass a bin count and ONNX Runtime's default is 128, with which the KL
# search has one candidate, the whole range: entropy would be MinMax under another name.
ENTROPY_BINS = 2048


# ---------------------------------------------------------------------------------------
# Quantizing


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization prints progress and logs through the root logger (which installs a
    stderr handler on first use): neither reaches the user, who gets the report instead."""
    root = logging.getLogger()
    null = None
    if not root.handlers:
        null = logging.NullHandler()
        root.addHandler(null)
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(before)
        if null is not None:
            root.removeHandler(null)


def fixed_batch(model) -> int | None:
    """The batch of the first input when it is static, else None."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


def linear_layers(model) -> list[tuple[Any, str | None]]:
    """(node, weight initializer name or None) for every Conv/Gemm/MatMul node."""
    inits = {i.name for i in model.graph.initializer}
    return [(n, n.input[1] if len(n.input) > 1 and n.input[1] in inits else None)
            for n in model.graph.node if n.op_type in LINEAR_OPS]


def resolve_keep(model, names: Sequence[str]) -> list[str]:
    """Node names for ``--int8-keep``: a node's name, or its weight's name with or without ``.weight``."""
    nodes = {n.name for n in model.graph.node}
    by_weight: dict[str, list[str]] = {}
    for node, weight in linear_layers(model):
        if weight:
            for key in {weight, weight.removesuffix(".weight")}:
                by_weight.setdefault(key, []).append(node.name)
    out: list[str] = []
    for name in names:
        if name in nodes:
            out.append(name)
        elif name in by_weight:
            out.extend(by_weight[name])
        else:
            known = ", ".join(f"{n.name} ({w})" if w else n.name for n, w in linear_layers(model)[:12])
            raise BadInputError(f"--int8-keep {name}: no such layer in compact.onnx; its layers are {known}"
                                + (", ..." if len(linear_layers(model)) > 12 else ""))
    return list(dict.fromkeys(out))


def quantize(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray, *, method: str = "minmax",
             per_channel: bool = True, keep: Sequence[str] = (), tensorrt: bool = False) -> list[str]:
    """Write the QDQ int8 model of ``fp32_path`` calibrated on ``calibration``; returns the kept node names."""
    if method not in METHODS:
        raise BadInputError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")
    model = onnx.load(str(fp32_path))
    input_name = model.graph.input[0].name
    fixed = fixed_batch(model)
    excluded = resolve_keep(model, keep)
    batch = fixed or CALIBRATION_BATCH
    if fixed is None and method != "minmax":  # the histogram calibrators stack batches: all must be one size
        batch = max(d for d in range(1, min(CALIBRATION_BATCH, len(calibration)) + 1) if len(calibration) % d == 0)
    reader = data_reader(calibration, input_name, batch, fixed is not None)
    # Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 the MinMax calibrator clears the batches it
    # holds when that count is reached without merging their ranges first (data is lost), so every
    # calibration batch's activations are held in memory until the ranges are computed.
    extra = {"WeightSymmetric": True, "ActivationSymmetric": tensorrt}
    if tensorrt:
        extra.update(QuantizeBias=False, AddQDQPairToWeight=True)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    try:
        with _quiet(), tempfile.TemporaryDirectory(prefix="compactify-calib-") as tmp:
            cache = None
            if method == "entropy":  # ONNX Runtime's own entropy calibrator, run with enough bins
                calibrator = create_calibrator(Path(fp32_path), augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                               calibrate_method=calibrate,
                                               extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": 128})
                calibrator.collect_data(reader)
                cache, reader = Path(tmp) / "ranges.json", None
                save_tensors_data(calibrator.compute_data(), cache)
                del calibrator
            quantize_static(str(fp32_path), str(out_path), reader, quant_format=QuantFormat.QDQ,
                            per_channel=per_channel, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calibrate, nodes_to_exclude=excluded or None, extra_options=extra,
                            calibration_cache_path=cache)
    except CompactifyError:
        raise
    except Exception as exc:
        raise CompactifyError(f"onnxruntime.quantization could not quantize {Path(fp32_path).name}: "
                              f"{first_line(exc)}") from exc
    return excluded


def qdq_structure(model) -> list[dict[str, Any]]:
    """Per Conv/Gemm/MatMul node of a QDQ model: how its weight is quantized (None: kept in float)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    rows = []
    for node in model.graph.node:
        if node.op_type not in LINEAR_OPS or len(node.input) < 2:
            continue
        dq = producers.get(node.input[1])
        row: dict[str, Any] = {"layer": node.name, "op": node.op_type, "weight": None}
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[1] in inits:
            scale = numpy_helper.to_array(inits[dq.input[1]])
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            zero = numpy_helper.to_array(inits[dq.input[2]]) if len(dq.input) > 2 and dq.input[2] in inits else np.zeros(1)
            source = producers.get(dq.input[0])
            weight_name = source.input[0] if source is not None and source.op_type == "QuantizeLinear" else dq.input[0]
            row["weight"] = {"scales": int(scale.size), "axis": int(axis) if scale.size > 1 else None,
                             "symmetric": bool(np.all(zero == 0)), "name": weight_name,
                             "qdq_pair": source is not None and source.op_type == "QuantizeLinear"}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# Measuring


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

    def augmented(model, names):
        model = onnx.ModelProto.FromString(model.SerializeToString())
        present = {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
        for name in names:
            if name not in present:
                model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
                present.add(name)
        return model.SerializeToString()

    fp_sess = _session(augmented(fp, [f for f, _ in pairs]), optimized=False)
    q_sess = _session(augmented(q, [t for _, t in pairs]), optimized=False)
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
        out["outputs"][name] = {"max_abs": c.max_abs, "mean_abs": c.mean_abs, "max_rel_to_scale": c.scale_rel,
                                "fp32_max_abs": c32.max_abs, "nonfinite": c.nonfinite,
                                # values the fp32 model gives beyond what the int8 output can hold: clipped
                                "clipped": float(np.mean((fp32[i] < lo) | (fp32[i] > hi))) if fp32[i].size else 0.0}
    stats = out["outputs"].values()
    out["max_abs_error"] = max(s["max_abs"] for s in stats)
    out["mean_abs_error"] = max(s["mean_abs"] for s in stats)
    out["max_rel_error"] = max(s["max_rel_to_scale"] for s in stats)
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


# ---------------------------------------------------------------------------------------
# The artifact


def write_int8(request, data: CalibrationSet, fp32_path: str | Path, out_path: str | Path,
               output_names: Sequence[str], reference: Reference) -> dict[str, Any]:
    """Quantize ``fp32_path`` into ``out_path`` as ``request`` (``Int8Settings``) says, calibrated on ``data``,
    and measure it against ``reference``; the report.json entry. CompactifyError (exit 1) when the top-1
    agreement falls below ``request.min_agreement``."""
    t = time.perf_counter()
    kept = quantize(fp32_path, out_path, data.calibration, method=request.method, keep=request.keep,
                    tensorrt=request.tensorrt)
    quantize_s = time.perf_counter() - t
    structure = qdq_structure(onnx.load(str(out_path)))
    result = measure(fp32_path, out_path, data, reference, output_names)
    layers = layer_errors(fp32_path, out_path, data.held_out)
    report = {
        "artifact": Path(out_path).name,
        "format": "QDQ (onnxruntime.quantization.quantize_static)",
        "weights": "int8, symmetric, per output channel"
                   + (" (float weights behind Q/DQ pairs)" if request.tensorrt else ""),
        "activations": ("int8, symmetric (zero points 0, as TensorRT needs), per tensor" if request.tensorrt
                        else "int8, asymmetric, per tensor (ONNX Runtime folds a ReLU into the zero point)"),
        "biases": "float (TensorRT rejects int32 DequantizeLinear)" if request.tensorrt else "int32",
        "form": "tensorrt" if request.tensorrt else "onnxruntime",
        "calibration_method": request.method,
        "calibration": {k: v for k, v in data.description.items() if not k.startswith("held_out")},
        "held_out": data.description,
        "kept_in_float": kept,
        "quantized_layers": sum(r["weight"] is not None for r in structure),
        "linear_layers": len(structure),
        **result,
        "layers": layers,
        "layers_definition": "per Conv/Gemm/MatMul: rel_error = ||int8 - fp32|| / ||fp32|| of its output over "
                             f"{min(LAYER_SAMPLES, len(data.held_out))} held-out inputs (both models unoptimized), "
                             "input_rel_error the same at its input, added = rel_error - input_rel_error; "
                             "sorted by added",
        "min_agreement": request.min_agreement,
        "quantize_seconds": quantize_s,
        "seconds": time.perf_counter() - t,
    }
    a, agree = request.min_agreement, result["top1_agreement"]
    if a is not None:
        if agree is None:
            raise BadInputError("--int8-min-agreement needs a classifier output ([N, classes]); this model has none")
        if agree < a:
            worst = ",".join(r["layer"] for r in layers[:SUMMARY_LAYERS])
            raise CompactifyError(
                f"int8 top-1 agreement with the fp32 compact model is {agree:.4f} on {data.held_out_what}, below "
                f"--int8-min-agreement {a:g}; nothing was written. The layers adding the most error are {worst}: "
                f"try --int8-keep {worst}, another --calibration-method, or more calibration inputs")
    return report


def summary_lines(r: dict[str, Any]) -> list[str]:
    """What ``compactify convert`` prints about the int8 artifact."""
    line = (f"int8 ({r['artifact']}, {r['calibration_method']} calibration on {r['calibration']['calibration_what']}; "
            f"measured on {r['held_out']['held_out_what']}):")
    parts = []
    if r.get("top1_agreement") is not None:
        parts.append(f"top-1 agreement with fp32 {100 * r['top1_agreement']:.2f}%")
    if r.get("accuracy_int8") is not None:
        parts.append(f"accuracy {100 * r['accuracy_fp32']:.2f}% (fp32) -> {100 * r['accuracy_int8']:.2f}% (int8)")
    parts.append(f"error vs {r['reference']}: max abs {r['max_abs_error']:.3g}, mean abs {r['mean_abs_error']:.3g} "
                 f"({100 * r['max_rel_error']:.2g}% of the output scale; fp32 compact {r['fp32_max_abs_error']:.2g})"
                 + (f", {100 * r['clipped']:.2g}% of the output values beyond the calibrated range (clipped)"
                    if r.get("clipped") else ""))
    lines = [line + " " + ", ".join(parts)]
    worst = [x for x in r.get("layers", [])[:SUMMARY_LAYERS]]
    if worst:
        lines.append("int8 layers adding the most error (relative, --int8-keep keeps a layer in float): "
                     + ", ".join(f"{x['layer']} +{x['added']:.2g}" for x in worst))
    if r.get("kept_in_float"):
        lines.append(f"int8: kept in float: {', '.join(r['kept_in_float'])}")
    return lines


def int8_markdown(r: dict[str, Any]) -> list[str]:
    """The report.md section."""
    lines = ["", "## INT8", ""] + [f"- {s}" for s in summary_lines(r)] + [
        f"- weights: {r['weights']}; activations: {r['activations']}; biases: {r['biases']}",
        f"- {r['quantized_layers']} of {r['linear_layers']} Conv/Gemm/MatMul layers quantized",
        "", "| layer | op | weight | int8 | rel error | input rel error | added |", "|---|---|---|---|---|---|---|",
    ]
    for x in r.get("layers", []):
        lines.append(f"| {x['layer']} | {x['op']} | {x['weight'] or '-'} | {'yes' if x['int8'] else 'no'} | "
                     f"{x['rel_error']:.3g} | {x['input_rel_error']:.3g} | {x['added']:.3g} |")
    return lines
