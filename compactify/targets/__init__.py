"""The artifact targets: one module per kind, registered in ``TARGETS`` when this package is imported.

    from compactify.targets import TARGETS, target_for

    target_for("compact.onnx").open("compact.onnx")   # a loaded Runner
    TARGETS["onnx_fp16"].tolerance(1e-4, 1e-4, artifacts)
"""

from __future__ import annotations

# Each target module registers its target on import: importing them all here fills the registry, in
# this order (the order of the help texts and of building).
from compactify.targets import pt2, onnx, fp16, int8, tensorrt, openvino, openvino_int8, pte, tflite  # noqa: F401, I001
from compactify.targets.base import TARGETS, Built, CompactModel, OnnxGraph, Target, register_target
from compactify.targets.build import build_artifacts, check_requests, prepare_artifacts
from compactify.targets.fp16 import Fp16Settings
from compactify.targets.int8 import Int8Settings
from compactify.targets.lookup import (FileKind, kinds_help, kinds_table, mismatch, open_artifact, runtime_for,
                                       target_for)
from compactify.targets.onnx import OnnxSettings
from compactify.targets.openvino import OpenVinoSettings
from compactify.targets.openvino_int8 import OpenVinoInt8Settings
from compactify.targets.pt2 import Pt2Settings
from compactify.targets.pte import PteSettings
from compactify.targets.tensorrt import EngineSettings
from compactify.targets.tflite import TfliteSettings

__all__ = ["TARGETS", "Built", "CompactModel", "EngineSettings", "FileKind", "Fp16Settings", "Int8Settings",
           "OnnxGraph", "OnnxSettings", "OpenVinoInt8Settings", "OpenVinoSettings", "Pt2Settings", "PteSettings", "Target", "TfliteSettings",
           "build_artifacts", "check_requests", "kinds_help", "kinds_table", "mismatch", "open_artifact",
           "prepare_artifacts", "register_target", "runtime_for", "target_for"]
