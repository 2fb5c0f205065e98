"""Compact architectures; importing this package registers them."""

from compactify.models.architectures import mobilenet, repvgg, resnet, shufflenet, smallnet, widevgg  # noqa: F401
