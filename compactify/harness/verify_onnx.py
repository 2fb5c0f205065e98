"""Verify a conversion whose source was an ONNX model: the reference is the source graph itself
evaluated in float64 with onnx.reference, the baseline its float32 run on ONNX Runtime, and the
candidates every artifact of the folder (compact.onnx, compact.fp16.onnx, compact.engine)."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
import numpy as np

from compactify.errors import BadInputError
from compactify.harness.inputs import inputs_for
from compactify.harness.verify import (CandidateResult, VerifyResult, _compare, _fixed_batch, _Model, _run_all,
                                       _runner_model)


def verify_onnx_conversion(outdir: Path, report: dict, *, inputs, batches, batch_size, seed: int, atol: float,
                           rtol: float, fp16_atol: float, fp16_rtol: float, device: str,
                           per_region: bool) -> VerifyResult:
    from compactify.converter.frontends.onnx.read import read_onnx
    from compactify.measure.onnx_float64 import Float64Reference
    from compactify.runtimes import open_runner
    from compactify.runtimes.devices import tensorrt_missing

    path = Path(report["source"]["checkpoint"])
    if not path.is_file():
        raise BadInputError(f"the source model {path} named in report.json no longer exists; verification needs it "
                            "as the reference")
    if report["source"].get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != report["source"]["sha256"]:
        raise BadInputError(f"the source model {path} changed since the conversion (sha256 differs); convert it "
                            "again before verifying")
    from compactify.converter.convert_onnx import low_precision_outputs, select_outputs

    source = read_onnx(path)
    select_outputs(source, report["source"].get("outputs"))  # the outputs the conversion kept
    low = set(low_precision_outputs(source))
    warnings = []
    if per_region:
        warnings.append("--per-region compares merged layers of a PyTorch conversion; this conversion's source is an "
                        "ONNX graph, checked as a whole")
    float64 = Float64Reference(source)
    names = list(report.get("input_names") or [])
    shapes = report.get("input_shapes") or {names[0]: report["input_shape"]}
    if not names or any(n not in shapes for n in names):
        raise BadInputError(f"{outdir / 'report.json'} does not state its input shapes; convert again")

    def run64(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return float64.run(dict(zip(names, arrays)))

    source_model = _Model(f"{path.name} float64 (onnx.reference, reference)", "onnx.reference", str(path), run64)
    reference = source_model
    artifacts = report.get("artifacts") or {}
    truncated = report.get("truncation") is not None and "onnx" in artifacts
    if truncated:
        # --rank changed the network on purpose: the artifacts are judged against the truncated network
        # itself in float64 (the exactness of the export); what truncation did is measured apart.
        compact64 = Float64Reference(read_onnx(outdir / artifacts["onnx"]))
        reference = _Model(f"truncated {artifacts['onnx']} float64 (onnx.reference, reference)", "onnx.reference",
                           str(outdir / artifacts["onnx"]), lambda arrays: compact64.run(dict(zip(names, arrays))))
        warnings.append(f"this conversion truncated ranks (--rank {report['truncation'].get('rule')}): the artifacts "
                        "are checked against the truncated network in float64 (the exactness of the export); the "
                        "truncation's own effect on the source is reported apart")
    plan = [("onnx", "ort", (atol, rtol)), ("onnx_fp16", "ort", (fp16_atol, fp16_rtol)),
            ("engine", "trt", (fp16_atol, fp16_rtol) if "onnx_fp16" in artifacts else (atol, rtol))]
    with contextlib.ExitStack() as stack:
        baseline = _ort_model(source, f"{path.name} float32 (ort)", str(path), names)
        candidates: list[tuple[_Model | None, CandidateResult | None, tuple[float, float]]] = []
        for key, runtime, tol in plan:
            if key not in artifacts:
                continue
            file = outdir / artifacts[key]
            if not file.is_file():
                raise BadInputError(f"report.json lists {artifacts[key]} but {outdir} has no such file; convert again")
            label = f"{file.name} ({runtime})"
            if runtime == "trt" and tensorrt_missing():
                candidates.append((None, CandidateResult(label, runtime, str(file), *tol, skipped=tensorrt_missing()),
                                   tol))
                continue
            runner = open_runner(file, runtime=runtime, device="cuda" if runtime == "trt" else device)
            stack.callback(runner.close)
            candidates.append((_runner_model(runner, label, str(file)), None, tol))
        fixed = _fixed_batch([m for m, _, _ in candidates if m is not None] + [baseline])
        data = inputs_for(names, [tuple(shapes[n][1:]) for n in names], inputs_file=inputs, batches=batches,
                          batch_size=batch_size, seed=seed, fixed_batch=fixed)
        ref_out = _run_all(reference, data, report["output_names"])
        # Against a truncated reference the source's own float32 run is no baseline: it is another network.
        fp16 = (fp16_atol, fp16_rtol)
        results = [] if truncated else [_judged(baseline, data, ref_out, (atol, rtol), low, fp16, baseline=True)]
        for model, skipped, tol in candidates:
            results.append(skipped if model is None else _judged(model, data, ref_out, tol, low, fp16))
        effect = _truncation_effect(source_model, ref_out, data, report) if truncated else None
    if low:
        warnings.append(f"output(s) {', '.join(sorted(low))} are float16 in the graph itself: judged with the float16 "
                        f"tolerances (atol {fp16_atol:g}, rtol {fp16_rtol:g})")
    if effect is not None:
        warnings.append(effect["note"])
    result = VerifyResult(reference.label, results, data.description, None, None, warnings)
    result.truncation = effect
    return result


def _ort_model(model, label: str, path: str, names: list[str]) -> _Model:
    """The source as the conversion saw it (its --outputs selection) on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, arrays)))

    return _Model(label, "ort", path, run)


def _judged(model: _Model, data, ref_out: dict, tol: tuple[float, float], low: set[str], fp16: tuple[float, float],
            baseline: bool = False) -> CandidateResult:
    """``_compare``, with the outputs the graph makes float16 judged with float16 tolerances."""
    from compactify.measure.metrics import compare

    result = _compare(model, data, ref_out, *tol, baseline=baseline)
    if low and result.comparisons:
        outputs = _run_all(model, data, list(ref_out))
        for name in low & set(result.comparisons):
            result.comparisons[name] = compare(outputs[name], ref_out[name], *fp16, name=name)
    return result


def _truncation_effect(source: _Model, truncated_out: dict, data, report: dict) -> dict:
    """What --rank did: the truncated network against the source, both in float64, on the same inputs."""
    from compactify.measure.metrics import compare_all

    source_out = _run_all(source, data, list(truncated_out))
    worst = max(compare_all(truncated_out, source_out, 0.0, 0.0).values(), key=lambda c: c.scale_rel)
    rule = report["truncation"].get("rule")
    text = f"truncation (--rank {rule}) against the source, both float64: max rel error {worst.scale_rel:.3g}"
    if worst.top1 is not None:
        text += f", top-1 agreement {100 * worst.top1:.1f}%"
    return {"rule": rule, "max_abs": worst.max_abs, "max_rel": worst.scale_rel, "top1_agreement": worst.top1,
            "accuracy_source": None, "accuracy_truncated": None,
            "note": text + " (what --rank changed on purpose; not an export error)"}


def onnx_float64_model(path: Path) -> tuple[_Model, tuple[int, ...] | None]:
    """An ONNX file as a float64 reference (onnx.reference), and its input shape when the file
    states every dim after the batch."""
    from compactify.converter.frontends.onnx.read import read_onnx
    from compactify.converter.frontends.onnx.shapes import graph_inputs
    from compactify.measure.onnx_float64 import Float64Reference

    model = read_onnx(path)
    specs = graph_inputs(model)
    names = [s.name for s in specs]
    evaluator = Float64Reference(model)

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(names):
            raise BadInputError(f"{path.name} takes {len(names)} input(s) {names}, got {len(arrays)}")
        return evaluator.run(dict(zip(names, arrays)))

    shape = None
    if len(specs) == 1 and all(isinstance(d, int) for d in specs[0].dims[1:]):
        first = specs[0].dims[0]
        shape = (first if isinstance(first, int) else 1, *specs[0].dims[1:])
    from compactify.runtimes.base import TensorSpec

    tensor_specs = [TensorSpec(s.name, tuple(d if isinstance(d, int) else None for d in s.dims), "float64")
                    for s in specs]
    return _Model(f"{path.name} (onnx.reference float64)", "onnx.reference", str(path), run, tensor_specs), shape
