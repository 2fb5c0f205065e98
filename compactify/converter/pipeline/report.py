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
    max_abs, max_rel = result.max_abs_error, result.max_rel_error
    if result.truncation is not None:
        # --rank changes the network on purpose: its one error figure is the truncation's, measured once
        # on the inputs the truncation section names (not a second figure on the check's inputs).
        measured = result.truncation["output_error"]
        max_abs, max_rel = measured["max_abs"], measured["max_rel_error"]
        error_definition = (f"with --rank, the truncation's error (truncation.output_error, {measured['dtype']}, on "
                            f"{measured['inputs']}): {measured['definition']}")
    report = {"compactify_version": __version__, **described, "allow_approximate": allow_approximate,
              "exact_at": exact_at(described["accepts_input_size"], result.size_notes),
              "merges_exact_at_every_size": not result.size_notes}
    report.update({
        "regions": result.regions,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "flops_before": result.flops_before,
        "flops_after": result.flops_after,
        "max_abs_error": max_abs,
        "max_rel_error": max_rel,
        "source_float32_rel_error": result.source_rel_error,
        "exact": within(max_rel, result.source_rel_error),
        "exact_definition": EXACT_DEFINITION,
        "error_definition": error_definition,
        "warnings": list(result.warnings),
    })
    if result.truncation is not None:
        report["truncation"] = result.truncation
    if result.check is not None:
        report["check"] = result.check
    return report


def exact_at(accepts_input_size: str, size_notes: list[str]) -> str:
    """Where the compact network is exact: at the sizes it accepts (``accepts_input_size`` says which),
    and whether its merges would hold at other sizes too."""
    if accepts_input_size.startswith("any"):
        return "every input size it accepts"
    if size_notes:
        return "the one input size it accepts (some merges hold at that size only)"
    return "the one input size it accepts (its merges hold at every size)"


def file_metadata(report: dict, result) -> dict[str, str]:
    """The compactify.* keys stamped into every artifact that carries metadata."""
    return {"compactify.version": __version__, "compactify.source_sha256": report["source"]["sha256"],
            "compactify.source_arch": str(report["source"]["arch"]),
            "compactify.contraction": json.dumps(result.summary())}


def write_report(report: dict, folder: Path) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "report.md").write_text(report_markdown(report))


def error_line(report: dict) -> str:
    """report.md's line of the conversion's error against the float64 source; with --rank the network
    differs on purpose, and its one error figure is the truncation section's."""
    if report.get("truncation") is not None:
        return "- error: --rank changes the network on purpose; its error is the truncation's, below"
    return (f"- error vs float64 source: max rel error {report['max_rel_error']:.3g}, max abs error "
            f"{report['max_abs_error']:.3g} (the source's own float32 run: {report['source_float32_rel_error']:.3g})")


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
        error_line(report),
        f"- exact at: {report['exact_at']}; accepts input size: {report['accepts_input_size']}",
        "",
        "| region | layers | decision | reason | params | FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["regions"]:
        layers = ", ".join(r["layers"])  # whole: markdown has no width to fit
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
