"""Judging one candidate against the reference outputs: by the allclose rule with the tolerances its
target gives (outputs the source graph itself computes in float16 with the fp16 ones), or, for an int8
model, against each output's scale on the inputs it was calibrated for."""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np

from compactify.errors import BadInputError
from compactify.harness.inputs import Inputs
from compactify.harness.verify.results import CandidateResult
from compactify.harness.verify.runnable import Runnable, run_all
from compactify.harness.verify.tolerances import INT8_BATCH
from compactify.measure.metrics import compare, compare_all
from compactify.targets.calibration import held_out_inputs


def judge(candidate: Runnable, inputs: Inputs, reference: dict[str, np.ndarray], tolerance: tuple[float, float], *,
          low_precision: Collection[str] = (), fp16: tuple[float, float] | None = None,
          baseline: bool = False) -> CandidateResult:
    """``candidate`` on ``inputs`` against the reference outputs, every output within ``tolerance``
    except those in ``low_precision`` (float16 in the source graph), which get ``fp16``."""
    atol, rtol = tolerance
    result = CandidateResult(candidate.label, candidate.runtime, candidate.path, atol, rtol, baseline=baseline,
                             precision=candidate.precision)
    outputs = run_all(candidate, inputs, list(reference))
    result.comparisons = compare_all(outputs, reference, atol, rtol)
    for name in set(low_precision) & set(result.comparisons):
        result.comparisons[name] = compare(outputs[name], reference[name], *fp16, name=name)
    return result


def judge_int8(candidate: Runnable, reference: Runnable, report: dict, input_shape: Sequence[int],
               given: Inputs | None, fixed: tuple[int, str] | None, tol: float, notes: list[str]) -> CandidateResult:
    """An int8 model against the reference, each output within ``tol`` of its largest reference value, on
    ``given`` (the user's --inputs) or else on the held-out inputs the conversion measured it on."""
    rule = f"{tol:g} x max|ref| / 0"
    what = "the given inputs"
    data = given
    if data is None:
        held = (report.get("int8") or {}).get("held_out") or {}
        try:
            x, _ = held_out_inputs(held, input_shape)
        except BadInputError as exc:
            return CandidateResult(candidate.label, candidate.runtime, candidate.path, tol, 0.0, tolerance=rule,
                                   skipped=f"{exc}; pass --inputs")
        size = fixed[0] if fixed else INT8_BATCH
        stop = len(x) - len(x) % size if fixed else len(x)
        if stop == 0:
            return CandidateResult(candidate.label, candidate.runtime, candidate.path, tol, 0.0, tolerance=rule,
                                   skipped=f"its {len(x)} held-out inputs do not fill its fixed batch of {size}; "
                                           "pass --inputs")
        what = held.get("held_out_what") or "its held-out inputs"
        name = (report.get("input_names") or ["x"])[0]
        data = Inputs([name], [{name: x[i:i + size]} for i in range(0, stop, size)], {"source": what})
    ref_out = run_all(reference, data, report["output_names"])
    outputs = run_all(candidate, data, report["output_names"])
    comparisons, atols = {}, []
    for name, ref in ref_out.items():
        atols.append(tol * float(np.max(np.abs(ref))) if ref.size else 0.0)
        comparisons[name] = compare(outputs[name], ref, atols[-1], 0.0, name=name)
    result = CandidateResult(candidate.label, candidate.runtime, candidate.path, max(atols), 0.0, comparisons,
                             tolerance=f"{tol:g} x max|ref| = {max(atols):.3g} / 0", inputs=what)
    notes.append(f"{candidate.label} is int8: judged on {what}, each output within {tol:g} x its largest reference "
                 f"value (atol {max(atols):.3g}, rtol 0; --int8-tol), not with the float tolerances")
    return result
