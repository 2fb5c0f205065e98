"""report.json and report.md of a conversion, the same for every source format: what was merged,
why, and how exact it is."""

from __future__ import annotations

import json
from pathlib import Path

from compactify import __version__
from compactify.converter.engine.exactness import EXACT_DEFINITION, within
from compactify.converter.lowrank.truncation_report import truncation_markdown
from compactify.targets.int8_artifact import int8_markdown


def build_report(described: dict, result, allow_approximate: bool) -> dict:
    """``described``: the source's own description (``Source.describe``); ``result``: a ``Contraction``."""
    described = dict(described)
    error_definition = described.pop("error_definition")
    report = {"compactify_version": __version__, **described, "allow_approximate": allow_approximate,
              "exact_at": "every input size" if not result.size_notes else "the traced input size only"}
    report.update({
        "regions": result.regions,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "flops_before": result.flops_before,
        "flops_after": result.flops_after,
        "max_abs_error": result.max_abs_error,
        "max_rel_error": result.max_rel_error,
        "source_float32_rel_error": result.source_rel_error,
        "exact": within(result.max_rel_error, result.source_rel_error),
        "exact_definition": EXACT_DEFINITION,
        "error_definition": error_definition,
        "warnings": list(result.warnings),
    })
    if result.truncation is not None:
        report["truncation"] = result.truncation
    if result.check is not None:
        report["check"] = result.check
    return report


def file_metadata(report: dict, result) -> dict[str, str]:
    """The compactify.* keys stamped into every artifact that carries metadata."""
    return {"compactify.version": __version__, "compactify.source_sha256": report["source"]["sha256"],
            "compactify.source_arch": str(report["source"]["arch"]),
            "compactify.contraction": json.dumps(result.summary())}


def write_report(report: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(report_markdown(report))


def report_markdown(report: dict) -> str:
    src = report["source"]
    lines = [
        "# compactify conversion report",
        "",
        f"- source: `{src['checkpoint']}` (sha256 `{src['sha256'][:16]}...`, {src['format']})",
        f"- arch: `{src['arch']}` {json.dumps(src['arch_kwargs']) if src['arch_kwargs'] else ''}".rstrip(),
        f"- input shape: {tuple(report['input_shape'])}",
        f"- parameters: {report['params_before']:,} -> {report['params_after']:,}",
        f"- FLOPs: {report['flops_before']:,} -> {report['flops_after']:,}",
        f"- error vs float64 source: max abs {report['max_abs_error']:.3g}, max rel {report['max_rel_error']:.3g} "
        f"(the source's own float32 run: {report['source_float32_rel_error']:.3g})",
        "",
        "| region | layers | decision | reason | params | FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["regions"]:
        layers = ", ".join(r["layers"])
        if len(layers) > 80:
            layers = layers[:77] + "..."
        lines.append(
            f"| {r['name']} | {layers} | {r['decision']} | {r['reason']} | "
            f"{r['params_before']:,} -> {r['params_after']:,} | {r['flops_before']:,} -> {r['flops_after']:,} |"
        )
    if report.get("truncation") is not None:
        lines += truncation_markdown(report["truncation"])
    if report.get("int8") is not None:
        lines += int8_markdown(report["int8"])
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
