"""The artifacts of a conversion folder as candidates: each looked up in the target registry, opened on
its target's runtime and given its target's tolerance, or listed as skipped with the reason. This is the
one plan of verify: a new target is verified as soon as it is registered."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

from compactify.errors import BadInputError, MissingRuntimeError
from compactify.harness.devices import device_for
from compactify.harness.verify.results import CandidateResult
from compactify.harness.verify.runnable import Runnable, runner_runnable
from compactify.harness.verify.tolerances import FP16_ATOL, FP16_RTOL
from compactify.targets import TARGETS, Target

UNKNOWN_KIND = "unknown artifact kind"


@dataclasses.dataclass
class Candidate:
    """One artifact: opened (``runnable``), or not (``skipped`` says why)."""

    runnable: Runnable | None
    tolerance: tuple[float, float] | None  # (atol, rtol); None: an int8 model, judged against each output's scale
    skipped: CandidateResult | None = None


def tolerance_of(target: Target, atol: float, rtol: float, fp16: tuple[float, float],
                 artifacts: Mapping[str, str]) -> tuple[float, float] | None:
    """The target's tolerance given the float32 one. A target judged at half precision (the fp16 model,
    an engine built from it) returns the fp16 target's own pair; --fp16-atol/--fp16-rtol stand in for it.
    Where the float32 pair is that same pair, nothing tells them apart and the float32 one is kept."""
    tolerance = target.tolerance(atol, rtol, artifacts)
    if tolerance is not None and tolerance == (FP16_ATOL, FP16_RTOL) != (atol, rtol):
        return fp16
    return tolerance


def artifact_candidates(outdir: Path, artifacts: Mapping[str, str], stack: contextlib.ExitStack, *, device: str,
                        atol: float, rtol: float, fp16: tuple[float, float], int8_tol: float,
                        precisions: Sequence[str] = ()) -> list[Candidate]:
    """Every artifact report.json lists, in its order (the order convert built them), the kinds no
    registered target knows last. An artifact whose runtime can also compute at one of ``precisions``
    (OpenVINO at bf16) gets a second candidate run at it, judged with that precision's tolerance. Runners
    close with ``stack``."""
    ordered = [k for k in artifacts if k in TARGETS] + [k for k in artifacts if k not in TARGETS]
    candidates = []
    for key in ordered:
        path = outdir / artifacts[key]
        target = TARGETS.get(key)
        for needed in [path, *(target.companions(path) if target is not None else [])]:
            if not needed.is_file():
                raise BadInputError(f"report.json lists {artifacts[key]} but {outdir} has no {needed.name}; "
                                    "convert again")
        if target is None:
            candidates.append(Candidate(None, (atol, rtol), CandidateResult(path.name, "-", str(path), atol, rtol,
                                                                            skipped=UNKNOWN_KIND)))
            continue
        tolerance = tolerance_of(target, atol, rtol, fp16, artifacts)
        missing = target.missing()
        if missing:
            shown = tolerance or (int8_tol, 0.0)
            candidates.append(Candidate(None, tolerance, CandidateResult(f"{path.name} ({target.runtime})",
                                                                         target.runtime, str(path), *shown,
                                                                         skipped=missing)))
            continue
        candidates.append(_opened(target, path, {}, tolerance, stack, device))
        for precision in precisions:
            if precision in target.extra_precisions:
                candidates.append(_opened(target, path, {"precision": precision}, target.extra_precisions[precision],
                                          stack, device))
    return candidates


def _opened(target: Target, path: Path, opts: dict, tolerance: tuple[float, float] | None, stack: contextlib.ExitStack,
            device: str) -> Candidate:
    """The artifact opened on its runtime, labelled with the precision it computes at where that is a choice;
    a precision this machine cannot compute at is a skipped candidate, not an error."""
    try:
        runner = stack.enter_context(target.open(path, device=device_for(target.runtime, device), **opts))
    except MissingRuntimeError as exc:
        if not opts:
            raise
        label = f"{path.name} ({target.runtime} {opts.get('precision')})"
        return Candidate(None, tolerance, CandidateResult(label, target.runtime, str(path), *tolerance, skipped=str(exc),
                                                          precision=opts.get("precision")))
    label = f"{path.name} ({target.runtime}{' ' + runner.precision if runner.precision else ''})"
    return Candidate(runner_runnable(runner, label, str(path)), tolerance)
