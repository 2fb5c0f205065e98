"""compact.tflite: the compact network as a LiteRT (TensorFlow Lite) model, converted by litert-torch
from the compact torch.export program, static at the planned input shape (``edge_program``), run on
LiteRT's interpreter (cpu). An ONNX source has no program to convert.

litert-torch converts every op to a LiteRT builtin or fails: there is no partial lowering to report.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from compactify.optional import EDGE_INSTALL, missing_package, optional_import
from compactify.runtimes.litert_runner import LiteRTRunner, litert_missing
from compactify.targets.base import Built, CompactModel, Target, register_target
from compactify.targets.edge_program import edge_lowering, static_entry, static_module


@dataclass(frozen=True)
class TfliteSettings:
    """compact.tflite has nothing to choose: float32, at the planned input shape."""


@register_target
class TfliteTarget(Target):
    name = "tflite"
    file = "compact.tflite"
    suffixes = (".tflite",)
    description = "LiteRT model"
    runtime = "litert"
    flag = "--litert"
    install_hint = EDGE_INSTALL
    settings_type = TfliteSettings

    def sniff(self, path: Path) -> bool:
        return LiteRTRunner.holds_its_file(path)

    def missing(self) -> str | None:
        return missing_package("litert_torch", "litert-torch") or litert_missing()

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: TfliteSettings) -> Built:
        (folder / self.file).write_bytes(convert_to_tflite(*static_module(compact, self.flag, self.file)))
        entry = {"converter": f"litert-torch {metadata.version('litert-torch')}", **static_entry(compact)}
        return Built(self.file, {self.name: entry})


def convert_to_tflite(module: torch.nn.Module, example: torch.Tensor) -> bytes:
    """``module`` converted by litert-torch at ``example``'s shape; BadInputError in one line when it
    cannot be."""
    with edge_lowering("litert-torch", "--litert: litert-torch cannot convert the compact network",
                       native_reason=False):
        litert_torch = optional_import("litert_torch", package="litert-torch", what="--litert", hint=EDGE_INSTALL)
        content = litert_torch.convert(module, (example,)).model_content()
    return bytes(content)
