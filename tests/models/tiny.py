"""Small versions of every registry model, so the model tests stay fast."""

from __future__ import annotations

TINY_KWARGS: dict[str, dict] = {
    "smallnet3": {"width": 0.5, "hidden": 16},
    "smallnet7": {"width": 0.5, "hidden": 16, "input_size": 16},
    "mobilenetv1": {"width": 0.25, "num_classes": 10, "input_size": 32},
    "mobilenetv2": {"width": 0.25, "num_classes": 10, "input_size": 32},
    "shufflenetv2": {"repeats": (1, 1, 1), "num_classes": 10, "input_size": 32},
    "resnet18": {"width": 0.125, "num_classes": 10, "input_size": 32},
    "repvgg": {"width": 0.25, "num_blocks": (1, 1, 1, 1), "num_classes": 10, "input_size": 32},
    "widevgg": {"width": 8, "blocks": (1, 1), "num_classes": 10, "input_size": 8},
}
