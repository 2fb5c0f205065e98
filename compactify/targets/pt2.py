"""compact.pt2: the compact network as a torch.export program, run on PyTorch."""

from __future__ import annotations

import zipfile
from pathlib import Path

from compactify.targets.base import Target, register_target

# The extra file in a .pt2 archive that carries compactify's metadata (source, input shape, version).
PT2_META_FILE = "compactify.json"
# Members only a torch.export archive has (torch.save archives hold data.pkl instead).
_PT2_MARKERS = ("/archive_format", "/archive_version", "/models/model.json")


@register_target
class Pt2Target(Target):
    name = "pt2"
    file = "compact.pt2"
    suffixes = (".pt2",)
    description = "torch.export program"
    runtime = "torch"

    def sniff(self, path: Path) -> bool:
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return False
        return any(n.endswith(_PT2_MARKERS) or "/serialized_exported_program" in n for n in names)
