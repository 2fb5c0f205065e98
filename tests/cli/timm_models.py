"""A user's own module around timm, imported by ``--arch timm_models:FACTORY`` in the CLI tests.

Written as a user writes it: a plain ``import timm``, with no workaround for the registry's
torchvision (compactify's ``--arch`` import provides it)."""

import timm
from torch import nn


def repvgg_a0(num_classes: int = 10) -> nn.Module:
    return timm.create_model("repvgg_a0", pretrained=False, num_classes=num_classes)
