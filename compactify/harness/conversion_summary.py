"""What `compactify convert` prints: one region table for every source format (PyTorch or ONNX),
fitted to the terminal, and the totals and the error under it. Counts are shortened (2.36M) and a
reason is cut at two lines here; report.md has every figure, layer and reason whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from compactify.converter.lowrank.truncation_report import truncation_summary
from compactify.converter.pipeline.convert import report_beside
from compactify.harness.report import Column, print_table, short_count
from compactify.targets.int8_artifact import summary_lines as int8_summary_lines
from compactify.targets.pte import summary_line as pte_summary_line

REASON_LINES = 2
REGION_COLUMNS = [Column("region"), Column("decision"), Column("params", align="right"),
                  Column("flops", "FLOPs", align="right"), Column("reason", max_lines=REASON_LINES)]


def _change(before: int, after: int) -> str:
    return f"{short_count(before)} -> {short_count(after)}"


def terminal_reason(region: dict, truncated: dict | None) -> str:
    """A region's reason as the table shows it: a factored layer says its rank and the energy kept
    (report.md says how it was chosen)."""
    if region["decision"] != "factored" or truncated is None or truncated.get("rank_after") is None:
        return region["reason"]
    text = (f"rank {truncated['rank_after']} of {truncated['full_rank']} "
            f"({100 * truncated['energy_kept']:.1f}% of the energy)")
    if truncated.get("units_removed"):
        text = f"{truncated['units_removed']} all-zero units removed; {text}"
    return text


def region_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per region of report.json, the same for every source format."""
    truncated = {row["region"]: row for row in (report.get("truncation") or {}).get("layers", [])}
    return [{"region": r["name"], "decision": r["decision"], "reason": terminal_reason(r, truncated.get(r["name"])),
             "params": _change(r["params_before"], r["params_after"]),
             "flops": _change(r["flops_before"], r["flops_after"])} for r in report["regions"]]


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The lines under the table: the totals, and the one error figure (with --rank, the truncation's)."""
    totals = (f"parameters {report['params_before']:,} -> {report['params_after']:,}, "
              f"FLOPs {report['flops_before']:,} -> {report['flops_after']:,}")
    lines = [totals]
    if report.get("truncation") is not None:
        lines.append(truncation_summary(report["truncation"]))
    else:
        lines.append(f"max rel error {report['max_rel_error']:.2e} against the source in float64 (its own float32 "
                     f"run: {report['source_float32_rel_error']:.2e}), max abs error {report['max_abs_error']:.2e}")
    if report.get("pte") is not None:
        lines.append(pte_summary_line(report["pte"]))
    if report.get("int8") is not None:
        lines += int8_summary_lines(report["int8"])
    return lines


def print_conversion_summary(console, report: dict[str, Any], out: str | Path) -> None:
    """The region table and the lines under it, fitted to ``console``'s width (``out``: convert's -o)."""
    print_table(console, region_rows(report), REGION_COLUMNS, title=f"compactify convert -> {out}")
    for line in summary_lines(report):
        console.print(line, highlight=False)
    out = Path(out)
    markdown = out / "report.md" if out.is_dir() else report_beside(out, ".md")
    console.print(f"{markdown} has every region's layers and reason in full", highlight=False)
