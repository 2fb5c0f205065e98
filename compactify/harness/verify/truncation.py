"""What --rank did to the network, reported beside a verification and never judged: a truncated
conversion's artifacts are checked against the truncated network itself (the exactness of the export),
and the truncation's own effect is measured here, the truncated network against the source, both in
float64 on the same inputs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from compactify.harness.inputs import Inputs
from compactify.harness.verify.accuracy import classifier_output, digits_accuracy
from compactify.harness.verify.runnable import Runnable, run_all
from compactify.measure.metrics import compare_all
from compactify.models.data import trained_on_digits


def truncation_note(report: Mapping[str, Any]) -> str:
    """The note that says what a truncated conversion's artifacts are checked against."""
    return (f"this conversion truncated ranks (--rank {report['truncation'].get('rule')}): the artifacts are checked "
            "against the truncated network in float64 (the exactness of the export); the truncation's own effect on "
            "the source is reported apart")


def truncation_effect(source: Runnable, truncated: Runnable, truncated_out: dict[str, np.ndarray], data: Inputs,
                      report: Mapping[str, Any], meta: Mapping[str, Any], input_shape: Sequence[int]) -> dict[str, Any]:
    """The truncated network (``truncated``, whose outputs on ``data`` are ``truncated_out``) against the
    source: its error, the top-1 agreement, and for digits-trained checkpoints the accuracy before and after."""
    source_out = run_all(source, data, list(truncated_out))
    worst = max(compare_all(truncated_out, source_out, 0.0, 0.0).values(), key=lambda c: c.scale_rel)
    effect: dict[str, Any] = {"rule": report["truncation"].get("rule"), "max_abs": worst.max_abs,
                              "max_rel": worst.scale_rel, "top1_agreement": worst.top1,
                              "accuracy_source": None, "accuracy_truncated": None}
    cls = classifier_output(source_out)
    if trained_on_digits(meta) and cls is not None:
        index = list(source_out).index(cls)
        effect["accuracy_source"] = digits_accuracy(source, meta, input_shape, None, index)
        effect["accuracy_truncated"] = digits_accuracy(truncated, meta, input_shape, None, index)
    text = f"truncation (--rank {effect['rule']}) against the source, both float64: max rel error {worst.scale_rel:.3g}"
    if worst.top1 is not None:
        text += f", top-1 agreement {100 * worst.top1:.1f}%"
    if effect["accuracy_source"] is not None:
        text += (f", digits accuracy {100 * effect['accuracy_source']:.2f}% -> "
                 f"{100 * effect['accuracy_truncated']:.2f}%")
    effect["note"] = text + " (what --rank changed on purpose; not an export error)"
    return effect
