"""Quantizing the compact network to int8 (``convert --int8``) with onnxruntime.quantization.

The quantizer is ONNX Runtime's own ``quantize_static`` in QDQ form (QuantizeLinear/DequantizeLinear
pairs around float ops, which ONNX Runtime fuses into QLinearConv/QGemm and TensorRT reads as
explicit quantization); nothing here computes a scale by hand. Its settings:

- weights: int8, symmetric, one scale per output channel (``per_channel=True``); merging the
  branches of a re-parameterized block spreads the channels' ranges apart, so one scale per tensor
  would round the small channels away (``benchmarks/int8.py`` measures both);
- activations: one scale per tensor, calibrated on the calibration inputs with MinMax,
  Entropy (KL over :data:`ENTROPY_BINS` histogram bins) or Percentile (99.999%) ranges
  (``--calibration-method``). For ONNX Runtime they are uint8, asymmetric (a ReLU then folds into
  the zero point): its CPU integer kernels (MLAS) take u8 activations with s8 weights, and with s8
  activations its QDQ fusion turns only some convs into QLinearConv and runs the rest in float
  between Q/DQ pairs (measured here, one thread, batch 1 at 224: ResNet-18 fp32/int8 0.91x with
  s8 activations against 2.6x with u8; MobileNetV2 1.07x against 1.9x). With ``--trt`` the file is
  written in the form TensorRT takes: int8 symmetric activations (TensorRT needs zero points of
  0), float biases (its parser rejects int32 DequantizeLinear) and float weights behind a
  per-channel Q/DQ pair;
- ``--int8-keep LAYER,...``: those layers stay in float (``nodes_to_exclude``).

What it cost is measured by :mod:`compactify.targets.int8_measure`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

from compactify.errors import BadInputError, CompactifyError, first_line
from compactify.targets.calibration import data_reader

METHODS = ("minmax", "entropy", "percentile")
CALIBRATION_BATCH = 32
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Histogram bins of the entropy calibrator: TensorRT's 2048 (searched down to 128 quantized bins).
# quantize_static cannot pass a bin count and ONNX Runtime's default is 128, with which the KL
# search has one candidate, the whole range: entropy would be MinMax under another name.
ENTROPY_BINS = 2048

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
                            per_channel=per_channel, activation_type=QuantType.QInt8 if tensorrt else QuantType.QUInt8, weight_type=QuantType.QInt8,
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
