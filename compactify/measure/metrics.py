"""Error statistics between a candidate output and its reference (pure numpy).

Everything is computed in float64, whatever the inputs' dtypes, so the statistics do not add
error of their own. The pass rule is numpy's ``allclose`` rule, elementwise::

    |candidate - reference| <= atol + rtol * |reference|

with one difference: a NaN or Inf anywhere in the candidate fails, even where the reference
holds the same value (numpy would call ``inf == inf`` close). A non-finite reference fails too:
there is nothing trustworthy to compare against.

The relative error of an output, everywhere in compactify (convert, verify, report.json), is
``relative_error``: ``max|candidate - reference| / max|reference|``, the largest error against the
output's scale, named ``max_rel_error`` in JSON and "max rel error" when printed. The elementwise
ratio ``max(|candidate - reference| / |reference|)`` is another figure: ``max_elementwise_rel``.

The "smallest tolerance that would pass" numbers are exact for this rule in float64 arithmetic:
the reported value passes and the next smaller float64 does not (see ``_tighten``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from compactify.errors import BadInputError

# Float32-appropriate defaults for a contracted model against its float64 reference.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4

# max_elementwise_rel divides by max(|reference|, REL_FLOOR), the smallest normal float64 (2.2e-308). The
# floor only prevents a division by zero: where the reference is exactly zero and the candidate
# is not, the relative error is reported as huge (or inf), which is the truth (no rtol can pass
# that element; min_rtol is then inf).
REL_FLOOR = float(np.finfo(np.float64).tiny)


@dataclasses.dataclass
class OutputComparison:
    """How one candidate output compares with its reference.

    Statistics (max_abs, max_rel_error, max_elementwise_rel, mean_abs, cosine) are over the elements
    where both arrays are finite; ``nonfinite`` / ``reference_nonfinite`` count the others. Tolerances that
    no value can satisfy are ``inf``.
    """

    name: str
    shape: tuple[int, ...]
    atol: float
    rtol: float
    passed: bool
    max_abs: float
    max_rel_error: float  # max_abs / max|reference|: ``relative_error``, the figure every report gives
    max_elementwise_rel: float  # max of |candidate - reference| / |reference| element by element
    mean_abs: float
    cosine: float
    min_atol: float  # smallest atol that passes with rtol = 0
    min_rtol: float  # smallest rtol that passes with atol = 0
    min_atol_at_rtol: float  # smallest atol that passes with the given rtol
    min_rtol_at_atol: float  # smallest rtol that passes with the given atol
    failing: int  # elements outside the tolerance (non-finite candidate elements included)
    size: int
    nonfinite: int  # NaN or Inf elements in the candidate
    reference_nonfinite: int
    top1: float | None = None  # fraction of rows whose argmax agrees (classifier logits only)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        return d

    def summary(self) -> str:
        """One line for logs and error messages."""
        verdict = "ok" if self.passed else "FAIL"
        line = (
            f"{self.name}: {verdict} max_abs={self.max_abs:.3g} max_rel_error={self.max_rel_error:.3g} "
            f"cos={self.cosine:.9f} min_atol={self.min_atol:.3g} min_rtol={self.min_rtol:.3g}"
        )
        if self.nonfinite:
            line += f" nonfinite={self.nonfinite}"
        if self.reference_nonfinite:
            line += f" reference_nonfinite={self.reference_nonfinite}"
        if self.top1 is not None:
            line += f" top1={self.top1:.4f}"
        return line


def relative_error(candidate, reference) -> tuple[float, float]:
    """``(max|candidate - reference|, that / max|reference|)`` in float64: the relative error of one
    output. Arrays or CPU tensors of the same size; inf where a value is not finite (no error is
    known there), and where the reference is all zero but the candidate is not."""
    diff = np.abs(np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64))
    if diff.size == 0:
        return 0.0, 0.0
    max_abs = float(diff.max())
    if not math.isfinite(max_abs):
        return math.inf, math.inf
    scale = float(np.abs(np.asarray(reference, dtype=np.float64)).max())
    return max_abs, (max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf))


def outputs_relative_error(candidates, references) -> tuple[float, float]:
    """``(max_abs, max_rel_error)`` over a model's outputs, paired in order: the worst output's."""
    errors = [relative_error(c, r) for c, r in zip(candidates, references)]
    return max((a for a, _ in errors), default=0.0), max((r for _, r in errors), default=0.0)


def _as_float64(x, what: str, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. ragged lists
        raise BadInputError(f"{what} output {name!r} is not an array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise BadInputError(f"{what} output {name!r} has dtype {arr.dtype}; expected a numeric array")
    return arr.astype(np.float64, copy=False)


def _bits(x: float) -> int:
    return int(np.float64(x).view(np.int64))


def _from_bits(b: int) -> float:
    return float(np.int64(b).view(np.float64))


def _tighten(value: float, passes: Callable[[float], bool]) -> float:
    """Move a closed-form tolerance onto the exact float64 boundary of ``passes``.

    ``passes`` is monotone in the tolerance. The closed form is usually an ulp or two off
    because ``t * |ref|`` and ``atol + ...`` round, but with subnormal references the rounding
    is coarse and the boundary can be far away; so bracket it and bisect over the float64 bit
    patterns (monotone for non-negative floats). The result passes and its predecessor fails.
    """
    if not math.isfinite(value):
        return value
    hi = max(value, 0.0)
    step = 0
    while not passes(hi):
        step += 1
        hi = float(np.nextafter(hi, math.inf)) if step < 4 else max(hi * 2.0, 5e-324)
        if not math.isfinite(hi):
            return math.inf
    if hi == 0.0 or passes(0.0):
        return 0.0
    lo = float(np.nextafter(hi, 0.0))
    if not passes(lo):
        return hi
    while passes(lo):  # lo > 0 here since passes(0) is false
        hi, lo = lo, lo / 2.0
    lo_b, hi_b = _bits(lo), _bits(hi)  # lo fails, hi passes
    while hi_b - lo_b > 1:
        mid = (lo_b + hi_b) // 2
        if passes(_from_bits(mid)):
            hi_b = mid
        else:
            lo_b = mid
    return _from_bits(hi_b)


def top1_agreement(candidate, reference, axis: int = -1) -> float:
    """Fraction of rows whose argmax along ``axis`` is the same in both arrays."""
    a = np.asarray(candidate)
    r = np.asarray(reference)
    if a.shape != r.shape:
        raise BadInputError(f"top-1 agreement needs equal shapes; got {a.shape} and {r.shape}")
    if a.size == 0:
        return 1.0
    return float(np.mean(np.argmax(a, axis=axis) == np.argmax(r, axis=axis)))


def _is_logits(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[1] >= 2


def compare(
    candidate,
    reference,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    name: str = "output",
    classifier: bool | None = None,
) -> OutputComparison:
    """Compare one output. ``classifier=None`` computes top-1 agreement for ``[N, classes]`` arrays."""
    if not (atol >= 0 and rtol >= 0 and math.isfinite(atol) and math.isfinite(rtol)):
        raise BadInputError(f"tolerances must be finite and >= 0; got atol={atol}, rtol={rtol}")
    a = _as_float64(candidate, "candidate", name)
    r = _as_float64(reference, "reference", name)
    if a.shape != r.shape:
        raise BadInputError(
            f"output {name!r}: candidate shape {tuple(a.shape)} does not match reference shape {tuple(r.shape)}"
        )
    a = a.ravel()
    r = r.ravel()
    bad_a = ~np.isfinite(a)
    bad_r = ~np.isfinite(r)
    nonfinite = int(bad_a.sum())
    reference_nonfinite = int(bad_r.sum())
    ok = ~(bad_a | bad_r)
    af, rf = a[ok], r[ok]

    diff = np.abs(af - rf)
    absr = np.abs(rf)
    n = diff.size
    max_abs, max_rel_error = relative_error(af, rf)
    mean_abs = float(diff.mean()) if n else 0.0
    with np.errstate(over="ignore"):
        max_elementwise_rel = float((diff / np.maximum(absr, REL_FLOOR)).max()) if n else 0.0
    cosine = _cosine(af, rf)

    with np.errstate(over="ignore"):
        within = diff <= atol + rtol * absr
    failing = int(n - within.sum()) + int((bad_a | bad_r).sum())
    passed = failing == 0

    if nonfinite or reference_nonfinite:
        min_atol = min_rtol = min_atol_at_rtol = min_rtol_at_atol = math.inf
    else:
        min_atol = max_abs  # diff <= max(diff) is exact: no rounding to correct
        min_atol_at_rtol = _tighten(
            float((diff - rtol * absr).max()) if n else 0.0,
            lambda t: _all_within(diff, absr, t, rtol),
        )
        min_rtol = _min_rtol(diff, absr, 0.0)
        min_rtol_at_atol = _min_rtol(diff, absr, float(atol))

    shape = tuple(int(s) for s in np.shape(candidate))
    use_top1 = _is_logits(shape) if classifier is None else classifier
    top1 = top1_agreement(np.asarray(candidate), np.asarray(reference)) if use_top1 else None

    return OutputComparison(
        name=name,
        shape=shape,
        atol=float(atol),
        rtol=float(rtol),
        passed=passed,
        max_abs=max_abs,
        max_rel_error=max_rel_error,
        max_elementwise_rel=max_elementwise_rel,
        mean_abs=mean_abs,
        cosine=cosine,
        min_atol=min_atol,
        min_rtol=min_rtol,
        min_atol_at_rtol=min_atol_at_rtol,
        min_rtol_at_atol=min_rtol_at_atol,
        failing=failing,
        size=int(a.size),
        nonfinite=nonfinite,
        reference_nonfinite=reference_nonfinite,
        top1=top1,
    )


def _all_within(diff: np.ndarray, absr: np.ndarray, atol: float, rtol: float) -> bool:
    with np.errstate(over="ignore"):  # t * |ref| overflowing to inf still decides correctly
        return bool(np.all(diff <= atol + rtol * absr))


def _cosine(a: np.ndarray, r: np.ndarray) -> float:
    """Cosine similarity; 1 for two zero vectors, 0 when only one is zero."""
    sa = float(np.abs(a).max()) if a.size else 0.0
    sr = float(np.abs(r).max()) if r.size else 0.0
    if sa == 0 and sr == 0:
        return 1.0
    if sa == 0 or sr == 0:
        return 0.0
    # Scale by the max first so that huge outputs cannot overflow the norms.
    a, r = a / sa, r / sr
    return float(np.clip(np.dot(a, r) / (np.linalg.norm(a) * np.linalg.norm(r)), -1.0, 1.0))


def _min_rtol(diff: np.ndarray, absr: np.ndarray, atol: float) -> float:
    """Smallest rtol with ``diff <= atol + rtol * absr`` everywhere (inf if an element cannot pass)."""
    need = diff > atol
    if not need.any():
        return 0.0
    if np.any(absr[need] == 0):
        return math.inf  # a nonzero error on a zero reference beyond atol: no rtol helps
    with np.errstate(over="ignore"):  # an overflowing ratio means no finite rtol passes
        guess = float(((diff[need] - atol) / absr[need]).max())
    return _tighten(guess, lambda t: _all_within(diff, absr, atol, t))


def compare_all(
    candidate: Mapping[str, object],
    reference: Mapping[str, object],
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    classifier: bool | None = None,
) -> dict[str, OutputComparison]:
    """Compare every output by name; both sides must name the same outputs."""
    missing = [k for k in reference if k not in candidate]
    extra = [k for k in candidate if k not in reference]
    if missing or extra:
        raise BadInputError(
            f"candidate outputs {sorted(candidate)} do not match reference outputs {sorted(reference)}"
            + (f" (missing {missing})" if missing else "")
            + (f" (unexpected {extra})" if extra else "")
        )
    return {k: compare(candidate[k], reference[k], atol, rtol, name=k, classifier=classifier) for k in reference}
