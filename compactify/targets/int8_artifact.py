"""The int8 artifact: quantized, measured, refused below --int8-min-agreement, and the report's words for it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import onnx
import onnxruntime as ort

from compactify.errors import BadInputError, CompactifyError
from compactify.targets.calibration import CalibrationSet
from compactify.targets.onnx_io import short_error
from compactify.targets.int8_measure import (
    LAYER_SAMPLES,
    Reference,
    layer_errors,
    measure,
)
from compactify.targets.int8_equalize import equalize_graph
from compactify.targets.int8_kernels import census_line, kernel_census
from compactify.targets.int8_quantize import qdq_structure, quantize

SUMMARY_LAYERS = 3


def write_int8(request, data: CalibrationSet, fp32_path: str | Path, out_path: str | Path,
               output_names: Sequence[str], reference: Reference) -> dict[str, Any]:
    """Quantize ``fp32_path`` into ``out_path`` as ``request`` (``Int8Settings``) says, calibrated on ``data``,
    and measure it against ``reference``; the report.json entry. CompactifyError (exit 1) when the top-1
    agreement falls below ``request.min_agreement``."""
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="compactify-equalize-") as tmp:
        equalization = None
        quantized_from = fp32_path
        if request.equalize:
            equalized = onnx.load(str(fp32_path))
            equalization = equalize_graph(equalized)
            quantized_from = Path(tmp) / "equalized.onnx"
            onnx.save(equalized, str(quantized_from))
        kept = quantize(quantized_from, out_path, data.calibration, method=request.method, keep=request.keep,
                        tensorrt=request.tensorrt)
    quantize_s = time.perf_counter() - t
    quantized = onnx.load(str(out_path))
    structure = qdq_structure(quantized)
    try:
        result = measure(fp32_path, out_path, data, reference, output_names)
    except Exception as exc:
        if "NOT_IMPLEMENTED" not in str(exc):
            raise
        # The quantizer writes Q/DQ at the model's own opset, which may be newer than ONNX Runtime's
        # quantized kernels (an ONNX source exported at opset 28 gives QuantizeLinear(28)).
        opset = next((o.version for o in quantized.opset_import if o.domain in ("", "ai.onnx")), None)
        raise BadInputError(f"ONNX Runtime {ort.__version__} cannot run the int8 model at opset {opset} "
                            f"({short_error(exc)}); export the source at an older opset (18, which compactify "
                            "writes for PyTorch sources, runs)") from exc
    layers = layer_errors(fp32_path, out_path, data.held_out)
    report = {
        "artifact": Path(out_path).name,
        "format": "QDQ (onnxruntime.quantization.quantize_static)",
        "weights": "int8, symmetric, per output channel"
                   + (" (float weights behind Q/DQ pairs)" if request.tensorrt else ""),
        "activations": ("int8, symmetric (zero points 0, as TensorRT needs), per tensor" if request.tensorrt
                        else "uint8, asymmetric, per tensor (ONNX Runtime's u8 x s8 integer kernels; a ReLU folds into the zero point)"),
        "biases": "float (TensorRT rejects int32 DequantizeLinear)" if request.tensorrt else "int32",
        "form": "tensorrt" if request.tensorrt else "onnxruntime",
        "calibration_method": request.method,
        "calibration": {k: v for k, v in data.description.items() if not k.startswith("held_out")},
        "held_out": data.description,
        "kept_in_float": kept,
        "equalization": equalization,
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
                     + ", ".join(f"{x['layer']} {x['added']:+.2g}" for x in worst))
    if r.get("kept_in_float"):
        lines.append(f"int8: kept in float: {', '.join(r['kept_in_float'])}")
    if r.get("equalization"):
        e = r["equalization"]
        lines.append(f"int8: cross-layer equalization of {e['pairs']} layer pair(s) before quantizing "
                     f"(channel scales up to {e['largest_scale_ratio']:.3g}x apart)")
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
