"""compact.xml + compact.bin: the compact network as an OpenVINO IR, run on OpenVINO's CPU plugin.

It is converted from compact.onnx, not from the torch.export program. Both give the same graph:
measured on SmallNet-7 CL, timm RepVGG-A0 and MobileOne-S0 at 32x32, the same ops in the IR and in
the compiled model and the same error against float64 (6e-8, 3.8e-6, 6.6e-7 at fp32), and both keep
the dynamic batch. But from the program ``convert_model`` makes height and width dynamic where the
conversion proved its merges at one size (compact.pt2 refuses any other size; the IR would take it
silently), and names the outputs after torch ops (``linear_1:0``) instead of the compact model's
names; it also takes 3 to 5 times as long. compact.onnx keeps the names, the proved input size and
the dynamic batch, and an ONNX source, which has no program, goes the same way.

Two OpenVINO defaults break exactness, and neither is taken: ``save_model`` stores the weights in
fp16 unless told not to (2e-4 of error), so they are stored in fp32; and the CPU plugin computes in
bf16 on CPUs with AVX512-BF16 or AMX, so the runner compiles at fp32 (as exact as ONNX Runtime)
unless bf16 is asked for (``verify --bf16``, ``bench --bf16``): a run of its own, judged with the
bf16 tolerance below.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np

from compactify.errors import BadInputError, CompactifyError
from compactify.measure.metrics import DEFAULT_ATOL, DEFAULT_RTOL, compare
from compactify.optional import available
from compactify.runtimes.openvino_runner import (
    INSTALL_EDGE,
    import_openvino,
    is_ir,
    openvino_message,
    weights_of,
)
from compactify.targets.base import Built, CompactModel, Target, register_target

# bf16 keeps 8 significant bits (fp16 keeps 11), and every layer rounds its activations to it: measured at
# bf16 against float64, 1e-3 (SmallNet-7 CL) to 1.2e-2 (RepVGG-A0) of the largest output.
BF16_ATOL = 5e-2
BF16_RTOL = 5e-2

_STRUCTURE_OPS = ("Parameter", "Result", "Constant")  # what every IR has: not ops that compute


@dataclass(frozen=True)
class OpenVinoSettings:
    """Nothing to choose: fp32 weights always; the compute precision is the runner's (fp32 unless bf16 is asked)."""


def op_counts(model: Any) -> dict[str, int]:
    """How many of each op the IR computes with, most frequent first."""
    counts = Counter(op.get_type_name() for op in model.get_ordered_ops())
    return {op: n for op, n in counts.most_common() if op not in _STRUCTURE_OPS}


@register_target
class OpenVinoTarget(Target):
    name = "openvino"
    file = "compact.xml"
    suffixes = (".xml",)
    description = "OpenVINO IR"
    runtime = "openvino"
    flag = "--openvino"
    install_hint = INSTALL_EDGE
    builds_from = ("onnx",)
    settings_type = OpenVinoSettings
    extra_precisions: ClassVar[Mapping[str, tuple[float, float]]] = {"bf16": (BF16_ATOL, BF16_RTOL)}

    def sniff(self, path: Path) -> bool:
        return is_ir(path)

    def companions(self, path: Path) -> list[Path]:
        return [weights_of(Path(path))]

    def missing(self) -> str | None:
        return None if available("openvino") else "needs the Python package openvino, which is not installed here"

    source: ClassVar[str] = "onnx"  # the artifact the IR is converted from

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: OpenVinoSettings) -> Built:
        source = built[self.source]
        xml = folder / self.file
        model = write_ir(source, xml, compact.input_names, compact.output_names)
        entry: dict[str, Any] = {"built_from": source.name, "weights": weights_of(xml).name,
                                 "weights_precision": self.precision, "ops": op_counts(model)}
        check, warnings = self._check(xml, compact)
        if check is not None:
            entry["check"] = check
        return Built(self.file, {self.name: entry}, warnings)

    def _check(self, xml: Path, compact: CompactModel) -> tuple[dict[str, Any], list[str]]:
        """The IR run at fp32 on the conversion's check inputs against the source in float64: what a
        conversion can say of it before `compactify verify` judges it on more inputs."""
        worst_abs, worst_rel, passed = 0.0, 0.0, True
        with self.open(xml) as runner:
            for feeds in compact.check_feeds:
                outputs = list(runner.infer(feeds).values())
                for name, out, ref in zip(compact.output_names, outputs, compact.reference(feeds)):
                    c = compare(out, ref, DEFAULT_ATOL, DEFAULT_RTOL, name=name)
                    worst_abs, worst_rel = max(worst_abs, c.max_abs), max(worst_rel, c.max_rel_error)
                    passed = passed and c.passed
            check = {"precision": runner.precision, "max_abs_error": worst_abs, "max_rel_error": worst_rel}
        if passed and np.isfinite(worst_abs):
            return check, []
        warning = (f"{self.file} on OpenVINO differs from the source by {worst_rel:.3g} of its largest output on the "
                   f"check inputs, beyond atol {DEFAULT_ATOL:g} / rtol {DEFAULT_RTOL:g}; run `compactify verify` on the "
                   "folder")
        return check, [warning]


def write_ir(source: Path, xml: Path, input_names: list[str] | None = None,
             output_names: list[str] | None = None) -> Any:
    """The IR of the ONNX file ``source``, its weights stored in fp32, written to ``xml`` (and its .bin);
    its ports named ``input_names``/``output_names`` when given. Returns the OpenVINO model."""
    ov = import_openvino("--openvino")
    try:
        model = ov.convert_model(str(source))
    except Exception as exc:  # OpConversionFailure, ovc's Error, RuntimeError: an op OpenVINO cannot lower
        raise BadInputError(f"OpenVINO cannot convert {Path(source).name}: {openvino_message(exc)}") from exc
    if input_names is not None:
        _name_ports(model.inputs, input_names)
    if output_names is not None:
        _name_ports(model.outputs, output_names)
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return model


def _name_ports(ports: Any, names: list[str]) -> None:
    """Give each input or output exactly the compact model's name, so that the runner's names are the
    compact model's whatever names OpenVINO merged onto a tensor."""
    if len(ports) != len(names):
        raise CompactifyError(f"OpenVINO made {len(ports)} port(s) of the compact model's {len(names)} ({', '.join(names)})")
    for port, name in zip(ports, names):
        port.get_tensor().set_names({name})
