"""The int8 artifact: quantized, measured, layers kept in float until --int8-min-agreement (or
--int8-max-accuracy-drop) is met, and the report's words for it."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from compactify.errors import BadInputError, CompactifyError
from compactify.measure.latency import Candidate, compare_latency, pinned_threads
from compactify.runtimes import open_runner
from compactify.targets.calibration import CalibrationSet
from compactify.targets.onnx_io import short_error
from compactify.targets.int8_measure import (
    LAYER_SAMPLES,
    Reference,
    layer_errors,
    measure,
)
from compactify.targets.int8_bias import correct_biases
from compactify.targets.int8_equalize import equalize_graph
from compactify.targets.int8_kernels import census_line, kernel_census
from compactify.targets.int8_quantize import fixed_batch, qdq_structure, quantize

SUMMARY_LAYERS = 3
FALLBACK_TIMING_S = 0.5  # per model of the sensitivity pass: enough for a ratio at batch 1


def write_int8(request, data: CalibrationSet, fp32_path: str | Path, out_path: str | Path,
               output_names: Sequence[str], reference: Reference) -> dict[str, Any]:
    """Quantize ``fp32_path`` into ``out_path`` as ``request`` (``Int8Settings``) says, calibrated on ``data``,
    and measure it against ``reference``; the report.json entry.

    With ``request.min_agreement`` (or ``max_accuracy_drop``), a sensitivity pass: while the bar is not
    met, the int8 layer adding the most error is kept in float and the model quantized again (greedy,
    so the fewest layers in the order of their measured sensitivity); the layers it kept and what each
    cost in latency are reported. CompactifyError (exit 1), nothing written, when the bar is not met
    even with every layer in float."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compactify-int8-") as tmp:
        equalization = None
        quantized_from = Path(fp32_path)
        if request.equalize:
            equalized = onnx.load(str(fp32_path))
            equalization = equalize_graph(equalized)
            quantized_from = Path(tmp) / "equalized.onnx"
            onnx.save(equalized, str(quantized_from))
        steps: list[dict[str, Any]] = []  # one per quantization of the sensitivity pass
        added: list[str] = []
        while True:
            kept = quantize(quantized_from, out_path, data.calibration, method=request.method,
                            keep=(*request.keep, *added), tensorrt=request.tensorrt)
            bias = correct_biases(quantized_from, out_path, data.calibration) if request.bias_correction else None
            result = _measure(fp32_path, out_path, data, reference, output_names)
            layers = layer_errors(quantized_from, out_path, data.held_out)  # equalized: its own scale per layer
            shortfall = _shortfall(request, result, data.held_out_what)
            if shortfall is None and not steps:
                break  # met at once (or no bar): no pass, nothing to time
            steps.append({"kept": list(added), "top1_agreement": result["top1_agreement"],
                          "accuracy_int8": result["accuracy_int8"], "model": Path(tmp) / f"step{len(steps)}.onnx"})
            shutil.copyfile(out_path, steps[-1]["model"])  # the fallback's latency costs time every step
            if shortfall is None:
                break
            candidate = next((r["layer"] for r in layers if r["int8"] and r["layer"] not in kept), None)
            if candidate is None:
                raise CompactifyError(f"{shortfall} even with every Conv/Gemm/MatMul layer in float "
                                      f"({len(kept)} kept); nothing was written. Try another --calibration-method, "
                                      "more calibration inputs, or a lower bar")
            added.append(candidate)
        fallback = _fallback_costs(steps, fixed_batch(onnx.load(str(fp32_path), load_external_data=False)),
                                   data) if len(steps) > 1 else None
    quantize_s = time.perf_counter() - t
    structure = qdq_structure(onnx.load(str(out_path)))
    report = {
        "artifact": Path(out_path).name,
        "format": "QDQ (onnxruntime.quantization.quantize_static)",
        "weights": "int8, symmetric, per output channel"
                   + (" (float weights behind Q/DQ pairs)" if request.tensorrt else ""),
        "activations": ("int8, symmetric (zero points 0, as TensorRT needs), per tensor" if request.tensorrt
                        else "uint8, asymmetric, per tensor (ONNX Runtime's u8 x s8 integer kernels; a ReLU folds "
                             "into the zero point)"),
        "biases": "float (TensorRT rejects int32 DequantizeLinear)" if request.tensorrt else "int32",
        "form": "tensorrt" if request.tensorrt else "onnxruntime",
        "calibration_method": request.method,
        "calibration": {k: v for k, v in data.description.items() if not k.startswith("held_out")},
        "held_out": data.description,
        "kept_in_float": kept,
        "sensitivity_fallback": fallback,
        "equalization": equalization,
        "bias_correction": bias,
        "quantized_layers": sum(r["weight"] is not None for r in structure),
        "linear_layers": len(structure),
        **result,
        "kernels": kernel_census(out_path, kept),
        "layers": layers,
        "layers_definition": "per Conv/Gemm/MatMul: rel_error = ||int8 - fp32|| / ||fp32|| of its output over "
                             f"{min(LAYER_SAMPLES, len(data.held_out))} held-out inputs (both models unoptimized), "
                             "input_rel_error the same at its input, added = rel_error - input_rel_error; "
                             "sorted by added",
        "min_agreement": request.min_agreement,
        "max_accuracy_drop": request.max_accuracy_drop,
        "quantize_seconds": quantize_s,
        "seconds": time.perf_counter() - t,
    }
    return report


def _measure(fp32_path, out_path, data, reference, output_names) -> dict[str, Any]:
    try:
        return measure(fp32_path, out_path, data, reference, output_names)
    except Exception as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        # The quantizer writes Q/DQ at the model's own opset, which may be newer than ONNX Runtime's
        # quantized kernels (an ONNX source exported at opset 28 gives QuantizeLinear(28)).
        quantized = onnx.load(str(out_path), load_external_data=False)
        opset = next((o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")), None)
        raise BadInputError(f"ONNX Runtime {ort.__version__} cannot run the int8 model at opset {opset} "
                            f"({short_error(exc)}); export the source at an older opset (18, which compactify "
                            "writes for PyTorch sources, runs)") from exc


def _shortfall(request, result: dict[str, Any], where: str) -> str | None:
    """Why the int8 model misses the bar the user set, or None when it meets it (or none was set)."""
    a, agree = request.min_agreement, result["top1_agreement"]
    if a is not None:
        if agree is None:
            raise BadInputError("--int8-min-agreement needs a classifier output ([N, classes]); this model has none")
        if agree < a:
            return (f"int8 top-1 agreement with the fp32 compact model stays below --int8-min-agreement {a:g} "
                    f"({agree:.4f} on {where})")
    d = request.max_accuracy_drop
    if d is not None:
        if result["accuracy_int8"] is None:
            raise BadInputError("--int8-max-accuracy-drop needs labels: calibration data with a 'labels' array, or "
                                "a checkpoint trained on the built-in digits")
        drop = 100 * (result["accuracy_fp32"] - result["accuracy_int8"])
        if drop > d:
            return (f"int8 loses {drop:.2f} points of accuracy on {where}, more than --int8-max-accuracy-drop "
                    f"{d:g}")
    return None


def _fallback_costs(steps: list[dict[str, Any]], fixed: int | None, data: CalibrationSet) -> dict[str, Any]:
    """What each layer the sensitivity pass kept in float cost: the int8 model's latency after each
    step, timed interleaved on ONNX Runtime CPU (one thread, batch 1 or the model's fixed batch)."""
    batch = fixed or 1
    x = np.ascontiguousarray(np.resize(data.held_out, (batch, *data.held_out.shape[1:])).astype(np.float32))
    runners = [open_runner(step["model"], runtime="ort", intra_op_threads=1, inter_op_threads=1) for step in steps]
    try:
        with pinned_threads(1):
            timed = compare_latency([Candidate(str(i), r.bind({r.inputs[0].name: x}), r.synchronize, "cpu", batch)
                                     for i, r in enumerate(runners)],
                                    warmup=3, seconds=FALLBACK_TIMING_S * len(runners), baseline=0, progress=False,
                                    description="int8 fallback")
    finally:
        for r in runners:
            r.close()
    p50 = [timed.by_label(str(i)).p50_ms for i in range(len(steps))]
    kept = [{"layer": step["kept"][-1], "top1_agreement_after": step["top1_agreement"],
             "accuracy_int8_after": step["accuracy_int8"], "latency_ms_after": p50[i],
             "latency_cost_ms": p50[i] - p50[i - 1]} for i, step in enumerate(steps) if i > 0]
    return {"kept": kept, "top1_agreement_all_int8": steps[0]["top1_agreement"],
            "accuracy_int8_all_int8": steps[0]["accuracy_int8"], "latency_ms_all_int8": p50[0],
            "timing": f"ONNX Runtime CPU, 1 thread, batch {batch}, p50 of {timed.rounds} interleaved rounds",
            "method": "greedy: the int8 layer adding the most error (layers, 'added') kept in float, then quantized "
                      "and measured again, until the bar is met"}


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
                     + ", ".join(f"{x['layer']} {x['added']:+.2g}" for x in worst))
    fallback = r.get("sensitivity_fallback")
    if fallback:
        bar = (f"--int8-min-agreement {r['min_agreement']:g}" if r.get("min_agreement") is not None
               else f"--int8-max-accuracy-drop {r['max_accuracy_drop']:g}")
        lines.append(f"int8: to meet {bar}, kept in float (latency cost each, {fallback['timing']}): "
                     + ", ".join(f"{k['layer']} {k['latency_cost_ms']:+.3g} ms" for k in fallback["kept"])
                     + f" (all-int8 {fallback['latency_ms_all_int8']:.3g} ms)")
    if r.get("kept_in_float"):
        lines.append(f"int8: kept in float: {', '.join(r['kept_in_float'])}")
    if r.get("equalization"):
        e = r["equalization"]
        lines.append(f"int8: cross-layer equalization of {e['pairs']} layer pair(s) before quantizing "
                     f"(channel scales up to {e['largest_scale_ratio']:.3g}x apart)")
    if r.get("bias_correction"):
        b = r["bias_correction"]
        lines.append(f"int8: bias correction of {b['layers']} layer(s) (largest mean shift removed "
                     f"{b['largest_shift']:.3g})")
    if r.get("kernels"):
        lines.append(census_line(r["kernels"]))
    return lines


def int8_markdown(r: dict[str, Any]) -> list[str]:
    """The report.md section."""
    lines = ["", "## INT8", ""] + [f"- {s}" for s in summary_lines(r)] + [
        f"- weights: {r['weights']}; activations: {r['activations']}; biases: {r['biases']}",
        f"- {r['quantized_layers']} of {r['linear_layers']} Conv/Gemm/MatMul layers quantized",
    ] + [f"- in float, {op}: {why}" for op, why in r.get("kernels", {}).get("float_reasons", {}).items()] + [
        "", "| layer | op | weight | int8 | rel error | input rel error | added |", "|---|---|---|---|---|---|---|",
    ]
    for x in r.get("layers", []):
        lines.append(f"| {x['layer']} | {x['op']} | {x['weight'] or '-'} | {'yes' if x['int8'] else 'no'} | "
                     f"{x['rel_error']:.3g} | {x['input_rel_error']:.3g} | {x['added']:.3g} |")
    return lines
