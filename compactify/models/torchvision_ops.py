"""Let ``import torchvision`` (and so ``import timm``) succeed where torchvision's C++ extension
cannot load.

The registry's torchvision wheels are CUDA builds: beside a CPU torch their ``_C`` extension
fails to load (it links libtorch_cuda), so ``torchvision::nms`` is never defined, and
torchvision's ``_meta_registrations`` then fails at import when it registers fake kernels for
it. timm imports torchvision unconditionally, so every timm model fails to import with
``operator torchvision::nms does not exist``. Declaring the two schemas (no kernels) lets the
packages import; classification models call no torchvision op, and a model that does call one
fails at capture with a line naming the op, as any missing kernel does.

Nothing is declared where the extension loads or torchvision is absent: then torchvision's own
definitions stand.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)


@functools.cache
def declare_missing_torchvision_ops() -> bool:
    """Declare torchvision's op schemas when its installed extension cannot define them.

    Returns whether it declared them. Safe to call before or after torchvision is imported.
    """
    if _defined("torchvision::nms"):
        return False
    extension = _extension_path()
    if extension is None:
        return False  # torchvision is not installed: nothing to help import
    try:
        torch.ops.load_library(str(extension))
    except OSError:
        pass  # the CUDA build beside a CPU torch: its libraries are missing
    if _defined("torchvision::nms"):
        return False
    library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        library.define(schema)
    declare_missing_torchvision_ops.library = library  # the declarations live as long as this object
    return True


def _defined(op: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(op, "")
    except RuntimeError:
        return False
    return True


def _extension_path() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("_C*.so")) + sorted(Path(folder).glob("_C*.pyd"))
        if found:
            return found[0]
    return None
