"""When a conversion is called exact, and what it says when it is not: the one rule every source
format and every report uses.

A result is exact when its float32 error is within EXACT_REL of the output scale, or within
SOURCE_ERROR_FACTOR times the float32 error of what it replaces (deep nets whose float32 run is
already further off than EXACT_REL, ill-conditioned batch statistics). Errors are relative to the
output's scale: ``max|y - ref| / max|ref|`` per output (``measure.metrics.relative_error``, named
``max_rel_error`` in every report).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compactify.converter.engine.plan import Decision, withdraw

EXACT_REL = 1e-6
SOURCE_ERROR_FACTOR = 4.0
EXACT_RULE = f"error <= max({EXACT_REL:g}, {SOURCE_ERROR_FACTOR:g} x the float32 error of what it replaces)"
EXACT_DEFINITION = (f"max_rel_error <= max({EXACT_REL:g}, {SOURCE_ERROR_FACTOR:g} x source_float32_rel_error), the "
                    "source's own float32 run against float64 on the same inputs")


def within(error: float, own_float32_error: float) -> bool:
    """The exactness rule: ``error`` against the float32 error of what was replaced."""
    return error <= max(EXACT_REL, SOURCE_ERROR_FACTOR * own_float32_error)


@dataclass
class RegionCheck:
    """One merged region's float32 layer against its own layers in float64."""

    name: str
    decision: str
    input_shape: list[int]
    max_abs: float | None = None
    max_rel_error: float | None = None  # merged float32 layer vs its layers in float64, of the output scale
    # Its layers in float32 vs float64, what rounding alone costs: run only when the merged layer is
    # further off than EXACT_REL (below that it passes whatever they give).
    layers_float32_rel: float | None = None
    exact_claimed: bool = True
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is not None or within(self.max_rel_error, self.layers_float32_rel or 0.0)

    def as_dict(self) -> dict:
        out = {"region": self.name, "decision": self.decision, "input_shape": self.input_shape}
        if self.skipped is not None:
            out["skipped"] = self.skipped
        else:
            out.update(max_abs=self.max_abs, max_rel_error=self.max_rel_error, layers_float32_rel=self.layers_float32_rel,
                       passed=self.passed)
        return out


@dataclass
class NetworkCheck:
    """The whole compact network against the source: float32 against the source in float64."""

    batch: int
    float64_batch: int
    max_abs: float = 0.0  # compact float32 vs source float64
    max_rel_error: float = 0.0
    source_rel: float = 0.0  # source float32 vs source float64: rounding alone
    float32_max_abs: float | None = None  # compact float32 vs source float32, whole batch (where run)
    float32_max_rel_error: float | None = None
    reference: str = ""
    notes: list[str] = field(default_factory=list)


def withdraw_failed(decisions: list[Decision], regions: list[RegionCheck]) -> tuple[list[Decision], list[str]]:
    """A new plan in which every merge that claimed to be exact and failed its float64 check keeps the
    region's own layers instead, and what the user is told of each. A merge the user chose knowing it
    is approximate (--allow-approximate) stays."""
    failed = {r.name: r for r in regions if r.exact_claimed and not r.passed}
    folds = _fold_partners(decisions, set(failed))
    plan, told = [], []
    for d in decisions:
        r = failed.get(d.region.name)
        if (r is None and d.region.name not in folds) or d.kind not in ("dense", "removed"):
            plan.append(d)
            continue
        why = (f"its float64 check found it {r.max_rel_error:.2e} (of its output scale) off its own layers, more than "
               f"{SOURCE_ERROR_FACTOR:g}x their float32 error ({r.layers_float32_rel or 0.0:.2e}) and above "
               f"{EXACT_REL:g}") if r is not None else f"it was folded together with {folds[d.region.name]}, which failed"
        plan.append(withdraw(d, why))
        told.append(f"region {d.region.name}: {plan[-1].reason}")
    return plan, told


def _fold_partners(decisions: list[Decision], failed: set[str]) -> dict[str, str]:
    """A fold (engine.fold) stands or falls whole: the regions folded away (each names all the readers
    it went into) and those readers are withdrawn with any one of them that failed. Maps each
    partner to the failed one."""
    partners: dict[str, str] = {}
    for d in decisions:
        group = {d.region.name, *d.folded_into} if d.folded_into else set()
        hit = sorted(group & failed)
        if hit:
            partners.update({name: hit[0] for name in group - failed})
    return partners


def check_warnings(network: NetworkCheck) -> list[str]:
    """What the user is told when the whole network is further off than the rule allows."""
    out = []
    if not within(network.max_rel_error, network.source_rel):
        out.append(
            f"the compact model's error ({network.max_rel_error:.2e} of the output scale) is more than "
            f"{SOURCE_ERROR_FACTOR:g}x the source's own float32 error ({network.source_rel:.2e}) and above "
            f"{EXACT_REL:g}: check report.json's regions for approximate merges")
    elif network.float32_max_rel_error is not None and network.float32_max_rel_error > 2 * max(
            EXACT_REL, SOURCE_ERROR_FACTOR * network.source_rel):
        out.append(f"the compact model differs from the source by {network.float32_max_rel_error:.2e} of the output scale "
                   f"in float32 on a batch of {network.batch}, more than their float32 rounding explains")
    return out
