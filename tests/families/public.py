"""Import the public model packages the tests convert (timm, torchvision, ultralytics) as they are.

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


def ultralytics_nn():
    """``ultralytics.nn`` as it ships. Its import writes a settings file under YOLO_CONFIG_DIR (the
    user's ~/.config by default) and prints about it: both go to a folder of the test run's own."""
    import os
    import tempfile

    os.environ.setdefault("YOLO_CONFIG_DIR", tempfile.mkdtemp(prefix="compactify-yolo-"))
    os.environ.setdefault("YOLO_VERBOSE", "False")
    declare_missing_torchvision_ops()
    import ultralytics.nn as module
    import ultralytics.nn.modules  # noqa: F401  (ConvTranspose, C2f, SPPF, Detect, Proto)
    import ultralytics.nn.tasks  # noqa: F401  (DetectionModel, SegmentationModel from their yaml)

    return module
