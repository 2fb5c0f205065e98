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
    source = read_onnx(path)
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

    reference = _Model(f"{path.name} float64 (onnx.reference, reference)", "onnx.reference", str(path), run64)
    artifacts = report.get("artifacts") or {}
    plan = [("onnx", "ort", (atol, rtol)), ("onnx_fp16", "ort", (fp16_atol, fp16_rtol)),
            ("engine", "trt", (fp16_atol, fp16_rtol) if "onnx_fp16" in artifacts else (atol, rtol))]
    with contextlib.ExitStack() as stack:
        baseline_runner = open_runner(path, runtime="ort", device=device)
        stack.callback(baseline_runner.close)
        baseline = _runner_model(baseline_runner, f"{path.name} float32 (ort)", str(path))
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
        results = [_compare(baseline, data, ref_out, atol, rtol, baseline=True)]
        for model, skipped, tol in candidates:
            results.append(skipped if model is None else _compare(model, data, ref_out, *tol))
    return VerifyResult(reference.label, results, data.description, None, None, warnings)

