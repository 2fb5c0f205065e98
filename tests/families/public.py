"""Import the public model packages the tests convert (timm, torchvision) as they are.

torchvision 0.28.0 from the registry is a CUDA build whose C++ extension does not load beside
the CPU torch; ``compactify.models.torchvision_ops`` declares the op schemas its import needs, as
compactify's own ``--arch`` import does for a user's module.
"""

from __future__ import annotations

from compactify.models.torchvision_ops import declare_missing_torchvision_ops


def timm():
    declare_missing_torchvision_ops()
    import timm as module

    return module


def torchvision_models():
    declare_missing_torchvision_ops()
    import torchvision.models as module

    return module
