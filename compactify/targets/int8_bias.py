"""Empirical bias correction of an int8 model (``convert --int8 --int8-bias-correction``).

Rounding a layer's weights to int8 shifts the mean of its outputs by a per-channel amount
(Nagel et al. 2019, "Data-Free Quantization", section 4.2): ``E[W_q x] - E[W x]``. It is measured
here on the calibration inputs, with the int8 model run unoptimized (so each Conv/Gemm computes on
the dequantized values, the same rounding ONNX Runtime's fused kernels apply) beside the fp32 model,
and subtracted from the layer's bias: in the int32 bias of a QDQ model (``round(shift / scale)``,
the bias's own quantization step) or in a float bias (the TensorRT form). All layers are corrected
from one pass over the data, each measured with the layers before it still uncorrected: a layer's
shift is mostly its own weights' rounding, which one pass removes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compactify.targets.calibration import batches
from compactify.targets.int8_measure import _session, with_outputs
from compactify.targets.int8_quantize import fixed_batch, linear_layers, qdq_structure

SAMPLES = 256  # calibration inputs the shifts are measured on
BATCH = 16


def correct_biases(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray) -> dict[str, Any]:
    """Rewrite ``int8_path`` with each quantized Conv/Gemm's bias corrected; report.json's entry."""
    fp, q = onnx.load(str(fp32_path)), onnx.load(str(int8_path))
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name: i for i in q.graph.initializer}
    q_nodes = {n.name: n for n in q.graph.node}
    quantized = {r["layer"] for r in qdq_structure(q) if r["weight"] is not None}
    layers = []  # (layer, fp32 output, int8 output, bias initializer, its scale or None for a float bias)
    for node, _ in linear_layers(fp):
        qn = q_nodes.get(node.name)
        if qn is None or node.name not in quantized or len(qn.input) < 3 or not qn.input[2]:
            continue
        bias = _bias_storage(qn.input[2], producers, inits)
        if bias is not None:
            layers.append((node.name, node.output[0], qn.output[0], *bias))
    if not layers:
        return {"layers": 0, "largest_shift": 0.0}
    shifts = _mean_shifts(fp, q, [(f, t) for _, f, t, _, _ in layers], calibration[:SAMPLES])
    largest = 0.0
    for (name, _, _, bias_name, scale), shift in zip(layers, shifts):
        stored = numpy_helper.to_array(inits[bias_name])
        if scale is None:  # a float bias
            new = (stored - shift).astype(stored.dtype)
        else:
            steps = np.rint(shift / scale.reshape(-1) if scale.size > 1 else shift / float(scale.reshape(())))
            info = np.iinfo(stored.dtype)
            new = np.clip(stored.astype(np.int64) - steps.astype(np.int64), info.min, info.max).astype(stored.dtype)
        largest = max(largest, float(np.abs(shift).max()))
        inits[bias_name].CopyFrom(numpy_helper.from_array(new.reshape(stored.shape), bias_name))
    onnx.save(q, str(int8_path))
    return {"layers": len(layers), "largest_shift": largest, "samples": int(min(SAMPLES, len(calibration))),
            "definition": "per output channel, mean(int8 - fp32) of each quantized Conv/Gemm output on the "
                          "calibration inputs, subtracted from its bias"}


def _bias_storage(name: str, producers, inits) -> tuple[str, np.ndarray | None] | None:
    """(initializer holding the bias, the scale of its int32 steps or None for a float bias), or None."""
    if name in inits:
        return name, None
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits or dq.input[1] not in inits:
        return None
    return dq.input[0], numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64)


def _mean_shifts(fp, q, pairs: list[tuple[str, str]], x: np.ndarray) -> list[np.ndarray]:
    """Per pair, the per-channel (axis 1) mean of int8 output - fp32 output over ``x``."""
    fixed = fixed_batch(fp)
    fp_sess = _session(with_outputs(fp, [f for f, _ in pairs]), optimized=False)
    q_sess = _session(with_outputs(q, [t for _, t in pairs]), optimized=False)
    fp_names = [o.name for o in fp_sess.get_outputs()]
    q_names = [o.name for o in q_sess.get_outputs()]
    name = fp.graph.input[0].name
    sums: list[np.ndarray | None] = [None] * len(pairs)
    counts = [0] * len(pairs)
    for chunk, n in batches(x, fixed or BATCH, fixed is not None):
        a = dict(zip(fp_names, fp_sess.run(None, {name: chunk})))
        b = dict(zip(q_names, q_sess.run(None, {name: chunk})))
        for i, (f, t) in enumerate(pairs):
            diff = b[t][:n].astype(np.float64) - a[f][:n].astype(np.float64)
            per_channel = np.moveaxis(diff, 1, 0).reshape(diff.shape[1], -1)
            sums[i] = per_channel.sum(1) if sums[i] is None else sums[i] + per_channel.sum(1)
            counts[i] += per_channel.shape[1]
    return [s / c for s, c in zip(sums, counts)]
