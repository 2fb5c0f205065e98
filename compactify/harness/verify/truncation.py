"""What --rank did to the network, reported beside a verification and never judged: a truncated
conversion's artifacts are checked against the truncated network itself (the exactness of the export),
and the truncation's own effect is the one figure the conversion measured and report.json states, on
the inputs it names: verify repeats it, never measures another on inputs of its own."""

from __future__ import annotations

from typing import Any, Mapping

from compactify.converter.lowrank.truncation_report import truncation_summary


def truncation_note(report: Mapping[str, Any]) -> str:
    """The note that says what a truncated conversion's artifacts are checked against."""
    return (f"this conversion truncated ranks (--rank {report['truncation'].get('rule')}): the artifacts are checked "
            "against the truncated network in float64 (the exactness of the export); the truncation's own effect on "
            "the source is reported apart")


def truncation_effect(report: Mapping[str, Any]) -> dict[str, Any]:
    """report.json's truncation figures: the error --rank adds (against the network without it, on the
    inputs report.json names) and the accuracy before and after, where the conversion measured it."""
    section = report["truncation"]
    error = section.get("output_error") or {}
    return {"rule": section.get("rule"), "max_abs": error.get("max_abs"), "max_rel_error": error.get("max_rel_error"),
            "dtype": error.get("dtype"), "inputs": error.get("inputs"),
            "accuracy_before": section.get("accuracy_before"), "accuracy_after": section.get("accuracy_after"),
            "accuracy_on": section.get("accuracy_on"),
            "note": f"{truncation_summary(section)}, as convert measured it (what --rank changed on purpose; not an "
                    "export error)"}
