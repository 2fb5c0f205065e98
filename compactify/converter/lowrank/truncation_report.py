"""The truncation section of a conversion report: one row per layer, and its report.md lines."""

from __future__ import annotations

from compactify.converter.lowrank.layers import Layer
from compactify.converter.lowrank.rank_rules import RankChoice
from compactify.errors import VerificationError

# --rank warns when it costs more accuracy than this (percentage points), --max-accuracy-drop or not.
ACCURACY_WARN_POINTS = 1.0


def accuracy_drop(section: dict) -> float | None:
    """Percentage points of accuracy --rank lost on the held-out labels (None when unknown)."""
    before, after = section.get("accuracy_before"), section.get("accuracy_after")
    if before is None or after is None:
        return None
    return 100.0 * (before - after)


def judge_accuracy(section: dict, max_drop: float | None) -> list[str]:
    """The warnings about what truncation cost in accuracy; raises VerificationError when it lost more
    than ``max_drop`` points (the conversion then writes nothing)."""
    drop = accuracy_drop(section)
    if drop is None:
        return []
    what = (f"--rank {section['rule']} lowered the accuracy on the {section['accuracy_on']} from "
            f"{100 * section['accuracy_before']:.2f}% to {100 * section['accuracy_after']:.2f}% ({drop:.2f} points)")
    if max_drop is not None and drop > max_drop:
        raise VerificationError(f"{what}, more than --max-accuracy-drop {max_drop:g}: nothing written; keep more rank "
                                "(a larger flops: or energy: budget), or train with --nuclear (compactify sweep shows "
                                "the budgets side by side)")
    if drop > ACCURACY_WARN_POINTS:
        return [f"{what}, more than {ACCURACY_WARN_POINTS:g} point; pass --max-accuracy-drop D to refuse such a "
                "conversion"]
    return []


def prune_text(layer: Layer) -> str:
    parts = []
    if layer.units_removed:
        parts.append(f"{len(layer.units_removed)} all-zero units removed")
    if layer.inputs_removed:
        parts.append(f"{layer.inputs_removed} inputs of removed units dropped")
    return "; ".join(parts) + "; " if parts else ""


def report_row(layer: Layer, choice: RankChoice | None, params_before: int, flops_before: int,
               timing: tuple[float, float] | None) -> dict:
    row = decision_row(layer.decision, choice, params_before, flops_before, units_removed=len(layer.units_removed),
                       inputs_removed=layer.inputs_removed, note=prune_text(layer))
    if timing is not None:
        row["latency_dense_ms"], row["latency_factored_ms"] = timing
    return row


def decision_row(d, choice: RankChoice | None, params_before: int, flops_before: int, *, units_removed: int = 0,
                 inputs_removed: int = 0, note: str = "") -> dict:
    """One row of the truncation table: a layer's ranks, energy kept and costs before and after."""
    return {
        "region": d.region.name,
        "layers": d.region.layers,
        "form": choice.form if choice else "dense",
        "rank_before": choice.rank_before if choice else None,
        "full_rank": choice.full_rank if choice else None,
        "rank_after": choice.rank_after if choice else None,
        "energy_kept": choice.energy_kept if choice else 1.0,
        "params_before": params_before,
        "params_after": d.params_after,
        "flops_before": flops_before,
        "flops_after": d.flops_after,
        "units_removed": units_removed,
        "inputs_removed": inputs_removed,
        "reason": note + (choice.reason if choice else "no rank rule applies"),
    }


def truncation_summary(section: dict) -> str:
    """What --rank did, in one line: its FLOPs, its error and the accuracy it cost. The error is measured
    once, by the conversion, on the inputs it names; convert prints this line and verify repeats it."""
    err = section["output_error"]
    text = f"--rank {section['rule']}: FLOPs {100 * section['flops_ratio']:.1f}% of the plan without it"
    if err.get("max_rel_error") is not None:  # a report.json of an older compactify named it otherwise
        text += (f", max rel error {err['max_rel_error']:.2e} against that plan ({err['dtype']}, on "
                 f"{err['inputs']})")
    if section.get("accuracy_before") is not None and section.get("accuracy_after") is not None:
        text += (f", accuracy {100 * section['accuracy_before']:.2f}% -> {100 * section['accuracy_after']:.2f}% "
                 f"on the {section['accuracy_on']}")
    return text


def truncation_markdown(section: dict) -> list[str]:
    """The report.md lines of the truncation section."""
    err = section["output_error"]
    lines = [
        "",
        f"## Rank truncation: `{section['rule']}`"
        + (f", ranks rounded up to multiples of {section['multiple']}" if section["multiple"] != 1 else "")
        + f", cost: {section['cost']}",
        "",
        f"- FLOPs: {section['flops_untruncated']:,} -> {section['flops_truncated']:,} "
        f"({100 * section['flops_ratio']:.1f}% of the plan without --rank"
        + (f"; {section['flops_pruned']:,} after removing all-zero units, which flops: budgets count from)"
           if section["flops_pruned"] != section["flops_untruncated"] else ")"),
        f"- parameters: {section['params_untruncated']:,} -> {section['params_truncated']:,}"
        + (f" ({section['params_pruned']:,} after removing all-zero units)"
           if section["params_pruned"] != section["params_untruncated"] else ""),
        f"- error against the plan without --rank ({err['dtype']}, on {err['inputs']}): "
        f"max rel error {err['max_rel_error']:.3g}, max abs error {err['max_abs']:.3g}",
    ]
    if "accuracy_before" in section:
        def pct(a):
            return "n/a" if a is None else f"{100 * a:.2f}%"

        lines.append(f"- accuracy on the {section['accuracy_on']}: {pct(section['accuracy_before'])} -> "
                     f"{pct(section['accuracy_after'])}")
    lines += [
        "",
        "| region | form | rank | energy kept | params | FLOPs | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in section["layers"]:
        rank = "-" if r["rank_before"] is None else f"{r['rank_before']} -> {r['rank_after']} (of {r['full_rank']})"
        lines.append(
            f"| {r['region']} | {r['form']} | {rank} | {100 * r['energy_kept']:.2f}% | "
            f"{r['params_before']:,} -> {r['params_after']:,} | {r['flops_before']:,} -> {r['flops_after']:,} | "
            f"{r['reason']} |"
        )
    pruned = [p for p in section["pruning"] if p["dead_units"]]
    if pruned:
        lines += ["", "Group-lasso units (all weights zero):", ""]
        for p in pruned:
            text = f"- {p['producer']}: {p['dead_units']} dead, {p['removed']} removed"
            if p["consumer"]:
                text += f" with the matching inputs of {p['consumer']}"
            if p.get("why_not"):
                text += f" ({p['why_not']})"
            lines.append(text)
        lines.append(f"- limits: {section['pruning_limits']}")
    return lines
