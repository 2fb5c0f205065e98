"""The sweep's table (one row per point) and sweep.md; report.html renders the same rows."""

from __future__ import annotations

from typing import Any, Sequence

from compactify.harness.sweep.frontier import drop_points, quality


def table_rows(points: Sequence[dict[str, Any]], batches: Sequence[str]) -> list[dict[str, str]]:
    """Text cells per point: what a person compares, failures with their error."""
    rows = []
    for p in points:
        marks = []
        if p.get("recommended"):
            marks.append("recommended (batch " + ", ".join(p["recommended"]) + ")")
        if p.get("frontier"):
            marks.append("frontier (batch " + ", ".join(p["frontier"]) + ")")
        row = {"checkpoint": p["checkpoint"], "budget": p["budget"], "precision": p["precision"]}
        if p["status"] != "ok":
            row.update(status=f"failed: {p['error']}")
            rows.append(row)
            continue
        q = quality(p)
        row.update(
            params=f"{p['params']:,}",
            flops=f"{p['flops']:,} ({100 * p['flops_ratio']:.0f}%)",
            accuracy="-" if p.get("accuracy") is None else f"{100 * p['accuracy']:.2f}%",
            agreement=f"{100 * p['agreement']:.2f}%",
            drop=_signed(-drop_points(p)),  # negative: points lost
            status="; ".join(marks) or "ok",
        )
        for b in batches:
            lat = (p.get("latency") or {}).get(b)
            row[f"p50_{b}"] = "-" if lat is None else f"{lat['p50_ms']:.3f}"
            s = (p.get("speedup") or {}).get(b)
            row[f"speedup_{b}"] = "-" if s is None else f"{s:.2f}x"
        row["quality"] = f"{100 * q:.2f}%"
        rows.append(row)
    return rows


def _signed(points: float) -> str:
    return "0.00" if abs(points) < 0.005 else f"{points:+.2f}"


def columns(batches: Sequence[str], labels: bool) -> list[tuple[str, str]]:
    """(key, header) of the table's columns."""
    cols = [("checkpoint", "checkpoint"), ("budget", "--rank"), ("precision", "precision"), ("params", "params"),
            ("flops", "FLOPs/image (of untruncated)")]
    if labels:
        cols.append(("accuracy", "accuracy"))
    cols += [("agreement", "top-1 agreement"), ("drop", "change (points)")]
    for b in batches:
        cols += [(f"p50_{b}", f"p50 ms b{b}"), (f"speedup_{b}", f"speedup b{b}")]
    cols.append(("status", "frontier / status"))
    return cols


def recommendation_lines(summary: dict[str, Any]) -> list[str]:
    lines = []
    for b, rec in summary["recommended"].items():
        if rec is None:
            lines.append(f"batch {b}: no point loses at most {summary['max_accuracy_drop']:g} points")
            continue
        speed = f", {rec['speedup']:.2f}x the untruncated model" if rec.get("speedup") else ""
        lines.append(f"batch {b}: {rec['checkpoint']} --rank {rec['budget']} {rec['precision']}: "
                     f"{summary['quality_name']} {100 * rec['quality']:.2f}% ({_signed(-rec['drop'])} points), "
                     f"{rec['p50_ms']:.3f} ms p50{speed}, {rec['flops']:,} FLOPs/image")
    return lines


def sweep_markdown(summary: dict[str, Any], points: Sequence[dict[str, Any]]) -> str:
    batches = summary["batches"]
    rows = table_rows(points, batches)
    cols = columns(batches, summary["labels"])
    lines = [
        "# compactify sweep",
        "",
        f"- checkpoints: {', '.join(summary['checkpoints'])}",
        f"- budgets: {', '.join(summary['budgets'])}; precisions: {', '.join(summary['precisions'])}",
        f"- judged on {summary['data']}: {summary['quality_name']}; change = points lost against the untruncated "
        "network of the same checkpoint",
        f"- latency: {summary['runtime']}, {summary['threads']} thread(s), every point of the target timed interleaved "
        f"in one process on one node ({summary.get('machine_summary') or 'no point was timed'})",
        "",
        f"## Recommended (at most {summary['max_accuracy_drop']:g} points lost)",
        "",
        *[f"- {line}" for line in recommendation_lines(summary)],
        "",
        "## Points",
        "",
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")).replace("|", "\\|") for k, _ in cols) + " |")
    if summary.get("warnings"):
        lines += ["", "## Warnings", "", *[f"- {w}" for w in summary["warnings"]]]
    return "\n".join(lines) + "\n"
