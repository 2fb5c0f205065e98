"""A user's own module around timm, imported by ``--arch timm_models:FACTORY`` in the CLI tests.

timm imports torchvision, whose registry build does not import beside the CPU torch without the
tests' workaround (families.public)."""

from torch import nn

from families.public import timm


def repvgg_a0(num_classes: int = 10) -> nn.Module:
    return timm().create_model("repvgg_a0", pretrained=False, num_classes=num_classes)
