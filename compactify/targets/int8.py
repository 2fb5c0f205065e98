"""compact.int8.onnx: the compact network quantized to int8 (QDQ), run on ONNX Runtime.

The quantizer is in :mod:`compactify.targets.int8_quantize`, its measurements in
:mod:`compactify.targets.int8_measure`, the artifact and its report in
:mod:`compactify.targets.int8_artifact`, the calibration inputs in :mod:`compactify.targets.calibration`. An int8 model is not judged with elementwise float
tolerances: its error is measured per output against the output's scale on held-out inputs
(``tolerance`` returns None; the harness judges it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import onnx

from compactify.errors import BadInputError
from compactify.targets.base import Built, CompactModel, Target, register_target
from compactify.targets.calibration import CalibrationSet, calibration_set
from compactify.targets.int8_outliers import pattern_warnings, weight_outliers
from compactify.targets.int8_artifact import write_int8
from compactify.targets.int8_quantize import METHODS
from compactify.targets.onnx import read_onnx_model

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class Int8Settings:
    calibration: str | None = None  # an .npz of inputs (and labels); None: the digits, for checkpoints trained on them
    method: str = "minmax"  # activation ranges: minmax, entropy or percentile
    keep: tuple[str, ...] = ()  # layers left in float (node names or their weights' names)
    min_agreement: float | None = None  # keep layers in float until the int8 model agrees this much with fp32
    max_accuracy_drop: float | None = None  # the same for accuracy points lost (needs labels)
    tensorrt: bool = False  # write the form TensorRT takes (symmetric activations, float biases)
    equalize: bool = False  # cross-layer equalization of the fp32 graph before quantizing (int8_equalize)
    bias_correction: bool = False  # subtract each layer's measured mean shift from its bias (int8_bias)
    # The calibration and held-out inputs: read and checked by the target's prepare(), before any work.
    data: CalibrationSet | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise BadInputError(f"--calibration-method must be one of {', '.join(METHODS)}, got {self.method!r}")
        a = self.min_agreement
        if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0):
            raise BadInputError(f"--int8-min-agreement must be a fraction in [0, 1], got {a!r}")
        d = self.max_accuracy_drop
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 100.0):
            raise BadInputError(f"--int8-max-accuracy-drop must be percentage points in [0, 100], got {d!r}")
        object.__setattr__(self, "keep", tuple(k.strip() for k in self.keep if k.strip()))


def is_qdq(model: onnx.ModelProto) -> bool:
    """Whether ``model`` is quantized with QuantizeLinear/DequantizeLinear nodes."""
    return any(n.op_type in QDQ_OPS for n in model.graph.node)


@register_target
class Int8Target(Target):
    name = "onnx_int8"
    file = "compact.int8.onnx"
    suffixes = (".int8.onnx",)
    description = "int8 (QDQ) ONNX model"
    runtime = "ort"
    flag = "--int8"
    builds_from = ("onnx",)
    settings_type = Int8Settings
    precision = "int8"
    report_key = "int8"  # report.json's entry has been "int8" since before the targets

    def sniff(self, path: Path) -> bool:
        model = read_onnx_model(path)
        return model is not None and is_qdq(model)

    def prepare(self, settings: Int8Settings, source_meta: Mapping[str, Any],
                input_shape: Sequence[int]) -> Int8Settings:
        """Read and check the calibration file (or the digits) now, before the contraction."""
        if settings.data is not None:
            return settings
        return replace(settings, data=calibration_set(settings.calibration, input_shape, source_meta))

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: Int8Settings) -> Built:
        assert settings.data is not None, "build_artifacts prepares every request first"
        entry = write_int8(settings, settings.data, built["onnx"], folder / self.file, compact.output_names,
                           compact.reference)
        entry["weight_ranges"] = weight_outliers(onnx.load(str(built["onnx"])))
        entry["weight_ranges_definition"] = ("per Conv/Gemm/MatMul weight of compact.onnx: channel_spread = largest "
                                             "channel max|w| / median channel max|w|; outlier_ratio = largest "
                                             "channel max|w| / std; widest first")
        return Built(self.file, {self.report_key: entry}, pattern_warnings(compact.regions, entry["weight_ranges"]))

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        return None
