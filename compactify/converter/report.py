"""report.json and report.md of a conversion: what was merged, why, and how exact it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from compactify import __version__
from compactify.converter.contract import EXACT_REL, SOURCE_ERROR_FACTOR, Contraction
from compactify.tensors import flatten_outputs

if TYPE_CHECKING:
    from compactify.converter.convert import ConvertOptions
    from compactify.converter.load.ingest import Source

def build_report(ckpt, source: Source, options: ConvertOptions, result: Contraction) -> dict:
    meta = source.meta
    return {
        "compactify_version": __version__,
        "source": {
            "checkpoint": str(Path(ckpt.path).resolve()),
            "sha256": ckpt.sha256,
            "format": ckpt.format,
            "arch": meta.get("arch"),
            "arch_kwargs": meta.get("arch_kwargs") or {},
            "meta": meta,
            "trust_pickle": options.trust_pickle,
            "outputs": options.outputs,
        },
        "input_shape": list(source.input_shape),
        "input_names": ["x"],
        "output_names": [f"output{i}" for i in range(len(flatten_outputs(result.compact(result.example))))],
        "allow_approximate": options.allow_approximate,
        "dynamic_hw": options.dynamic_hw,
        "exact_at": "every input size" if not result.size_notes else "the traced input size only",
        "accepts_input_size": "any" if options.dynamic_hw or len(source.input_shape) < 3 else
        "x".join(str(d) for d in source.input_shape[2:]) + " only (captured there; --dynamic-hw for every size)",
        **result_fields(result, "compact float32 vs source float64 on seeded N(0,1) inputs; "
                        "max_rel_error = max|compact - ref| / max|ref| per output"),
    }


def result_fields(result, error_definition: str) -> dict:
    """What a conversion did and how exact it is, the same for every source format: ``result`` is a
    ``Contraction`` or an ``OnnxContraction``."""
    return {
        "regions": result.regions,
        "params_before": result.params_before,
        "params_after": result.params_after,
        "flops_before": result.flops_before,
        "flops_after": result.flops_after,
        "max_abs_error": result.max_abs_error,
        "max_rel_error": result.max_rel_error,
        "source_float32_rel_error": result.source_rel_error,
        "exact": result.max_rel_error <= max(EXACT_REL, SOURCE_ERROR_FACTOR * result.source_rel_error),
        "exact_definition": f"max_rel_error <= max({EXACT_REL:g}, {SOURCE_ERROR_FACTOR:g} x "
        "source_float32_rel_error), the source's own float32 run against float64 on the same inputs",
        "error_definition": error_definition,
        "warnings": result.warnings,
        **({"truncation": result.truncation} if result.truncation is not None else {}),
    }


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
        from compactify.converter.lowrank.truncation_report import truncation_markdown

        lines += truncation_markdown(report["truncation"])
    if report.get("int8") is not None:
        from compactify.targets.int8_quantize import int8_markdown

        lines += int8_markdown(report["int8"])
    if report["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
