"""The artifacts of a conversion folder as candidates: each looked up in the target registry, opened on
its target's runtime and given its target's tolerance, or listed as skipped with the reason. This is the
one plan of verify: a new target is verified as soon as it is registered."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Mapping

from compactify.errors import BadInputError
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
                        atol: float, rtol: float, fp16: tuple[float, float], int8_tol: float) -> list[Candidate]:
    """Every artifact report.json lists, in its order (the order convert built them), the kinds no
    registered target knows last. Runners close with ``stack``."""
    ordered = [k for k in artifacts if k in TARGETS] + [k for k in artifacts if k not in TARGETS]
    candidates = []
    for key in ordered:
        path = outdir / artifacts[key]
        if not path.is_file():
            raise BadInputError(f"report.json lists {artifacts[key]} but {outdir} has no such file; convert again")
        target = TARGETS.get(key)
        if target is None:
            candidates.append(Candidate(None, (atol, rtol), CandidateResult(path.name, "-", str(path), atol, rtol,
                                                                            skipped=UNKNOWN_KIND)))
            continue
        tolerance = tolerance_of(target, atol, rtol, fp16, artifacts)
        label = f"{path.name} ({target.runtime})"
        missing = target.missing()
        if missing:
            shown = tolerance or (int8_tol, 0.0)
            candidates.append(Candidate(None, tolerance, CandidateResult(label, target.runtime, str(path), *shown,
                                                                         skipped=missing)))
            continue
        runner = stack.enter_context(target.open(path, device=device_for(target.runtime, device)))
        candidates.append(Candidate(runner_runnable(runner, label, str(path)), tolerance))
    return candidates
