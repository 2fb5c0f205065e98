"""compact.int8.xml + compact.int8.bin: the int8 model (compact.int8.onnx) as an OpenVINO IR, written
when ``convert`` is given both --openvino and --int8.

OpenVINO reads the QDQ file as it is: its low-precision transformations turn each
QuantizeLinear/DequantizeLinear pair around a convolution into an int8 kernel, so the scales and
zero points are the ones compactify calibrated and measured (report.json's ``int8``), and no second
quantizer (NNCF) is involved. Measured here at 224x224, one thread, batch 1: ResNet-18 6.7x and
MobileNetV2 2.3x faster than the fp32 IR (``benchmarks/int8.py``). Like compact.int8.onnx it is
judged by ``verify`` on the held-out inputs of its calibration set, against each output's scale
(``tolerance`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from compactify.targets.base import CompactModel, register_target
from compactify.targets.openvino import OpenVinoTarget


@dataclass(frozen=True)
class OpenVinoInt8Settings:
    """Nothing to choose: the IR of compact.int8.onnx, with its own scales."""


@register_target
class OpenVinoInt8Target(OpenVinoTarget):
    name = "openvino_int8"
    file = "compact.int8.xml"
    suffixes = (".int8.xml",)
    description = "int8 OpenVINO IR"
    flag = None  # asked for by --openvino with --int8
    builds_from = ("onnx_int8",)
    source = "onnx_int8"
    settings_type = OpenVinoInt8Settings
    precision = "int8"
    extra_precisions: ClassVar[Mapping[str, tuple[float, float]]] = {}
    options: ClassVar[tuple[str, ...]] = ("openvino", "int8")

    def sniff(self, path: Path) -> bool:
        return False  # an IR's content does not say int8: only the suffix does

    def _check(self, xml: Path, compact: CompactModel) -> tuple[dict[str, Any] | None, list[str]]:
        return None, []  # int8 is measured on held-out inputs (report.json's int8) and judged by verify

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        return None
