"""``verify_conversion(OUTDIR)``: every artifact of a `compactify convert` folder run on the same inputs
(seeded, or arrays from an .npz file) as the float64 reference, and judged.

The reference is the source in float64 (``references``: a PyTorch module, or the ONNX graph through
onnx.reference), the baseline the source in float32 (how close float32 can get: shown, never judged),
the candidates every artifact report.json lists, each opened through its target (``candidates``).
Outputs of several batches are concatenated and compared once (allclose rule, NaN/Inf fail). Runners
follow the Polygraphy split: they only run; the comparison is made here.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Sequence

from compactify.errors import BadInputError
from compactify.harness.inputs import DEFAULT_SEED, Inputs, inputs_for
from compactify.harness.region_errors import (
    annotate_truncation,
    region_errors,
    truncated_elsewhere,
)
from compactify.harness.verify.accuracy import classifier_output, digits_accuracy
from compactify.harness.verify.candidates import artifact_candidates
from compactify.harness.verify.folder import load_report
from compactify.harness.verify.judging import judge, judge_int8
from compactify.harness.verify.references import Reference, conversion_reference
from compactify.harness.verify.results import CandidateResult, VerifyResult
from compactify.harness.verify.runnable import Runnable, fixed_batch, run_all
from compactify.harness.verify.tolerances import (
    FP16_ATOL,
    FP16_RTOL,
    INT8_TOL,
    check_tolerances,
)
from compactify.harness.verify.truncation import truncation_effect, truncation_note
from compactify.measure.metrics import DEFAULT_ATOL, DEFAULT_RTOL
from compactify.models.data import trained_on_digits

NO_REGIONS = ("--per-region compares merged layers of a PyTorch conversion; this conversion's source is an ONNX "
              "graph, checked as a whole")


def verify_conversion(
    outdir: str | Path,
    *,
    inputs: str | Path | None = None,
    batches: int | None = None,
    batch_size: int | None = None,
    seed: int = DEFAULT_SEED,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    fp16_atol: float = FP16_ATOL,
    fp16_rtol: float = FP16_RTOL,
    device: str = "cpu",
    per_region: bool = False,
    accuracy: bool = True,
    int8_tol: float = INT8_TOL,
    precisions: Sequence[str] = (),
) -> VerifyResult:
    """Verify every artifact in a `compactify convert` folder against the float64 source; ``precisions``
    (bf16) adds a run at each of them for every artifact whose runtime can compute at it (OpenVINO)."""
    check_tolerances(atol, rtol, fp16_atol, fp16_rtol, int8_tol)
    outdir = Path(outdir)
    report = load_report(outdir)
    artifacts = report.get("artifacts") or {}
    if not artifacts:
        raise BadInputError(f"{outdir / 'report.json'} lists no artifacts (compact.pt2, compact.onnx): nothing to "
                            "verify; convert again")
    fp16 = (fp16_atol, fp16_rtol)
    with contextlib.ExitStack() as stack:
        ref = conversion_reference(outdir, report, stack)
        warnings = list(ref.warnings)
        if per_region and ref.module is None:
            warnings.append(NO_REGIONS)
        if ref.truncated:
            warnings.append(truncation_note(report))
        candidates = artifact_candidates(outdir, artifacts, stack, device=device, atol=atol, rtol=rtol, fp16=fp16,
                                         int8_tol=int8_tol, precisions=precisions)
        runnable = [c.runnable for c in candidates if c.runnable is not None]
        for m in runnable:
            if m.input_specs is not None and len(m.input_specs) != len(ref.input_names):
                raise BadInputError(f"{m.label} takes {len(m.input_specs)} inputs, the source takes "
                                    f"{len(ref.input_names)}")
        fixed = fixed_batch(runnable)
        data = inputs_for(ref.input_names, ref.input_dims, inputs_file=inputs, batches=batches,
                          batch_size=batch_size, seed=seed, fixed_batch=fixed)
        ref_out = run_all(ref.reference, data, report["output_names"])
        judged = dict(low_precision=ref.low_precision, fp16=fp16)
        # Against a truncated reference the source's own float32 run is no baseline: it is another network.
        results: list[CandidateResult] = [] if ref.truncated else [
            judge(ref.baseline, data, ref_out, (atol, rtol), baseline=True, **judged)]
        for c in candidates:
            if c.runnable is None:
                results.append(c.skipped)
            elif c.tolerance is None:
                results.append(judge_int8(c.runnable, ref.reference, report, ref.input_shape,
                                          data if inputs is not None else None, fixed, int8_tol, warnings))
            else:
                results.append(judge(c.runnable, data, ref_out, c.tolerance, **judged))
        ref_accuracy = _accuracies(ref, runnable, results, ref_out, fixed, warnings) if accuracy else None
    if ref.low_precision:
        warnings.append(f"output(s) {', '.join(sorted(ref.low_precision))} are float16 in the graph itself: judged "
                        f"with the float16 tolerances (atol {fp16_atol:g}, rtol {fp16_rtol:g})")
    effect = truncation_effect(report) if ref.truncated else None
    if effect is not None:
        warnings.append(effect["note"])
    regions = None
    if per_region and ref.module is not None:
        regions = _regions(ref, report, outdir, data, atol, rtol, warnings)
    result = VerifyResult(ref.reference.label, results, data.description, ref_accuracy, regions, warnings)
    result.truncation = effect
    return result


def _accuracies(ref: Reference, runnable: list[Runnable], results: list[CandidateResult], ref_out: dict,
                fixed: tuple[int, str] | None, warnings: list[str]) -> float | None:
    """For a checkpoint trained on digits: the reference's digits accuracy; each model's is set on its result."""
    if not trained_on_digits(ref.meta):
        return None
    cls = classifier_output(ref_out)
    if cls is None:
        warnings.append("the checkpoint was trained on digits but has no [N, classes] output: no accuracy")
        return None
    index = list(ref_out).index(cls)
    models = {m.label: m for m in (ref.baseline, *runnable)}
    for r in results:
        if r.label in models:
            r.accuracy = digits_accuracy(models[r.label], ref.meta, ref.input_shape, fixed[0] if fixed else None,
                                         index)
    return digits_accuracy(ref.reference, ref.meta, ref.input_shape, None, index)


def _regions(ref: Reference, report: dict, outdir: Path, data: Inputs, atol: float, rtol: float,
             warnings: list[str]) -> list:
    """--per-region: each merged region of the PyTorch source fed its float64 input, worst first, the
    regions --rank truncated listed first."""
    artifacts = report.get("artifacts") or {}
    pt2 = outdir / artifacts["pt2"] if "pt2" in artifacts else None
    if len(data.names) != 1:
        raise BadInputError("--per-region needs a model with one input")
    regions, notes = region_errors(ref.module, ref.input_shape, [f[data.names[0]] for f in data.batches],
                                   compact_pt2=pt2, allow_approximate=bool(report.get("allow_approximate")),
                                   atol=atol, rtol=rtol)
    warnings.extend(notes)
    truncation = report.get("truncation")
    if truncation is None:
        return regions
    others = truncated_elsewhere(regions, truncation)
    regions = annotate_truncation(regions, truncation)
    if others:
        warnings.append(f"--rank also changed single layers that are not merged regions: {', '.join(others)} "
                        "(see report.md)")
    warnings.append("this conversion truncated ranks or pruned units (--rank): the regions it changed are listed "
                    "first; their errors here are those of the exact merge, the truncation's own are in report.md")
    return regions
