"""compact.pt2: the compact network as a torch.export program, run on PyTorch."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from compactify import __version__
from compactify.errors import BadInputError
from compactify.models.metadata import PT2_META_FILE
from compactify.targets.base import Built, CompactModel, Target, register_target

# Members only a torch.export archive has (torch.save archives hold data.pkl instead).
_PT2_MARKERS = ("/archive_format", "/archive_version", "/models/model.json")


@dataclass(frozen=True)
class Pt2Settings:
    """compact.pt2 has nothing to choose: the program is dynamic where the conversion was."""


@register_target
class Pt2Target(Target):
    name = "pt2"
    file = "compact.pt2"
    suffixes = (".pt2",)
    description = "torch.export program"
    runtime = "torch"
    settings_type = Pt2Settings

    def sniff(self, path: Path) -> bool:
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return False
        return any(n.endswith(_PT2_MARKERS) or "/serialized_exported_program" in n for n in names)

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: Pt2Settings) -> Built:
        program = compact.program()
        if program is None:
            raise BadInputError(f"{self.file} is a torch.export program, and an ONNX source has no PyTorch graph; "
                                "ask for the ONNX artifacts only")
        meta = {"source": dict(compact.source_meta), "input_shape": list(compact.input_shape),
                "compactify_version": __version__, **compact.metadata}
        torch.export.save(program, str(folder / self.file), extra_files={PT2_META_FILE: json.dumps(meta)})
        return Built(self.file)
