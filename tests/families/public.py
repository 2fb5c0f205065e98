"""Import the public model packages the tests convert (timm, torchvision) as they are.

torchvision 0.28.0 from the registry is a CUDA build: its C++ extension does not load beside
the CPU torch, so its ``torchvision::nms`` and ``qnms`` ops are never defined, and its
``_meta_registrations`` then fails on import when it registers fake kernels for them without
checking. Declaring the two schemas first (no kernels: nothing here calls them) lets the
package import; the classification models use no torchvision op.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _declare_torchvision_ops() -> None:
    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
        return  # a working extension defined it
    except RuntimeError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _declare_torchvision_ops.lib = lib  # keep the library object alive


def timm():
    _declare_torchvision_ops()
    import timm as module

    return module


def torchvision_models():
    _declare_torchvision_ops()
    import torchvision.models as module

    return module
