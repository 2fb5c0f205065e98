"""What a verification found: one ``CandidateResult`` per model run against the reference, gathered in
a ``VerifyResult`` that gives the verdict, the terminal's rows, the failure line and the --json dict."""

from __future__ import annotations

import dataclasses
from typing import Any

from compactify import __version__
from compactify.errors import BadInputError, VerificationError
from compactify.harness.report import Column
from compactify.measure.metrics import OutputComparison

# Without --wide the terminal shows what a person decides by: which model, how far off, pass or fail.
VERIFY_COLUMNS = [
    Column("candidate"),
    Column("output"),
    Column("max_abs", "max abs", ".3g"),
    Column("max_rel_error", "max rel error", ".3g"),  # max|y - ref| / max|ref|, as convert and report.json
    Column("max_elementwise_rel", "max elementwise rel", ".3g", wide=True),
    Column("mean_abs", "mean abs", ".3g", wide=True),
    Column("cosine", "cosine", ".9f", wide=True),
    Column("min_atol", "min atol", ".3g", wide=True),
    Column("min_rtol", "min rtol", ".3g", wide=True),
    Column("top1", "top-1 agree", ".4f"),
    Column("accuracy", "digits acc", ".4f"),
    Column("tolerance", "atol / rtol", wide=True),
    Column("result"),
]

REGION_COLUMNS = [
    Column("region"),
    Column("layers", "ops"),
    Column("exact", wide=True),
    Column("weights", wide=True),
    Column("deployed_max_abs", "max abs (fp32 layer)", ".3g"),
    Column("deployed_max_rel_error", "max rel error", ".3g"),
    Column("deployed_cosine", "cosine", ".9f", wide=True),
    Column("algebra_max_abs", "max abs (fp64 algebra)", ".3g", wide=True),
    Column("truncation", "--rank"),
    Column("result"),
]


@dataclasses.dataclass
class CandidateResult:
    """One model run against the reference. ``skipped`` holds the reason when it could not run."""

    label: str
    runtime: str
    path: str | None
    atol: float
    rtol: float
    comparisons: dict[str, OutputComparison] | None = None
    skipped: str | None = None
    baseline: bool = False  # shown for context, never fails the verification
    accuracy: float | None = None
    tolerance: str | None = None  # how atol/rtol were chosen, when not given directly (int8)
    inputs: str | None = None  # the candidate's own inputs, when not the verification's (int8)
    precision: str | None = None  # the compute precision it ran at, where its runtime lets it be chosen

    @property
    def passed(self) -> bool | None:
        if self.comparisons is None:
            return None
        return all(c.passed for c in self.comparisons.values())

    def rows(self) -> list[dict[str, Any]]:
        tol = self.tolerance or f"{self.atol:g} / {self.rtol:g}"
        if self.comparisons is None:
            return [{"candidate": self.label, "output": "-", "tolerance": tol, "result": f"skipped: {self.skipped}"}]
        rows = []
        for name, c in self.comparisons.items():
            verdict = "PASS" if c.passed else "FAIL"
            if not c.passed and c.nonfinite:
                verdict += f" ({c.nonfinite} NaN/Inf)"
            elif not c.passed:
                verdict += f" ({c.failing}/{c.size} outside)"
            if self.baseline:
                verdict = f"{verdict.split()[0].lower()} (baseline)"
            rows.append({
                "candidate": self.label, "output": name, "max_abs": c.max_abs, "max_rel_error": c.max_rel_error,
                "max_elementwise_rel": c.max_elementwise_rel, "mean_abs": c.mean_abs, "cosine": c.cosine, "min_atol": c.min_atol, "min_rtol": c.min_rtol,
                "top1": c.top1, "accuracy": self.accuracy, "tolerance": tol, "result": verdict,
            })
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "runtime": self.runtime, "path": self.path, "atol": self.atol, "rtol": self.rtol,
            "passed": self.passed, "skipped": self.skipped, "baseline": self.baseline, "accuracy": self.accuracy,
            "tolerance": self.tolerance, "inputs": self.inputs, "precision": self.precision,
            "outputs": {k: c.to_dict() for k, c in (self.comparisons or {}).items()},
        }


@dataclasses.dataclass
class VerifyResult:
    reference: str
    candidates: list[CandidateResult]
    inputs: dict[str, Any]
    reference_accuracy: float | None = None
    regions: list | None = None  # list[RegionError] with --per-region
    warnings: list[str] = dataclasses.field(default_factory=list)
    truncation: dict[str, Any] | None = None  # what --rank did, from report.json (truncation_effect), never judged

    @property
    def judged(self) -> list[CandidateResult]:
        return [c for c in self.candidates if not c.baseline and c.comparisons is not None]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.judged)

    @property
    def failures(self) -> list[CandidateResult]:
        return [c for c in self.judged if not c.passed]

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        if self.reference_accuracy is not None:
            rows.append({"candidate": self.reference, "output": "(reference)", "accuracy": self.reference_accuracy,
                         "result": "reference"})
        for c in self.candidates:
            rows.extend(c.rows())
        return rows

    def region_rows(self) -> list[dict[str, Any]]:
        return [r.row() for r in self.regions or []]

    def failure_message(self) -> str:
        parts = []
        for c in self.failures:
            worst = max(c.comparisons.values(), key=lambda o: (o.nonfinite, o.failing, o.max_abs))
            what = f"{worst.nonfinite} NaN/Inf values" if worst.nonfinite else f"max abs error {worst.max_abs:.3g}"
            parts.append(f"{c.label} {worst.name}: {what} (atol {c.atol:g}, rtol {c.rtol:g})")
        floats = [c for c in self.failures if c.tolerance is None]
        hint = "; run with --per-region to find the region that introduced it" if self.regions is None and floats \
            else ""
        if len(floats) < len(self.failures):
            hint += ("; report.json lists the int8 layers adding the most error (int8.layers): convert with "
                     "--int8-keep LAYER,... to keep them in float")
        return f"verification failed for {len(parts)} of {len(self.judged)} model(s): " + "; ".join(parts) + hint

    def raise_if_failed(self) -> None:
        if not self.judged:  # "passed" with nothing compared would be a lie
            skipped = [f"{c.label}: {c.skipped}" for c in self.candidates if not c.baseline and c.skipped]
            raise BadInputError("nothing was verified: every artifact was skipped (" + "; ".join(skipped or ["none ran"])
                                + "); install what they need, or convert with the artifacts this machine can run")
        if not self.passed:
            raise VerificationError(self.failure_message())

    def to_dict(self) -> dict[str, Any]:
        return {
            "compactify_version": __version__,
            "passed": self.passed,
            "reference": self.reference,
            "reference_accuracy": self.reference_accuracy,
            "inputs": self.inputs,
            "candidates": [c.to_dict() for c in self.candidates],
            "regions": [r.to_dict() for r in self.regions] if self.regions is not None else None,
            "warnings": list(self.warnings),
            "truncation": self.truncation,
        }
