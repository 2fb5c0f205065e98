"""WideVGG: a plain VGG-style stack of wide 3x3 convs, the case where rank truncation pays.

The digits nets (SmallNet-7: 8 to 32 channels) are too small for a factored layer to run
faster: their convs are memory-bound. Here every conv after the first maps ``width`` channels
to ``width`` (128 by default), so its ``[width, width*9]`` matrix has rank up to ``width`` and a
rank-r factorization ``3x3(width -> r) + 1x1(r -> width)`` costs ``r*(9*width + width)``
multiply-adds per pixel instead of ``9*width^2``: fewer FLOPs for any r below 0.9 x width, and
wide enough for ONNX Runtime to be compute-bound. Stages of ``blocks[i]`` conv-BN-ReLU layers,
each stage ending in a 2x2 max-pool, then a global average pool and the classifier.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from compactify.errors import BadInputError
from compactify.models.architectures._util import check_common, min_input
from compactify.models.registry import register_model


class WideVGG(nn.Module):
    def __init__(self, num_classes: int = 10, in_chans: int = 3, input_size: int | Sequence[int] = 32,
                 width: int = 128, blocks: Sequence[int] = (2, 2)):
        super().__init__()
        h, w = check_common("widevgg", num_classes, in_chans, input_size)
        blocks = [int(b) for b in blocks]
        if not blocks or min(blocks) < 1:
            raise BadInputError(f"widevgg: blocks must list stage depths >= 1, got {list(blocks)}")
        if int(width) < 1:
            raise BadInputError(f"widevgg: width must be >= 1, got {width}")
        min_input("widevgg", h, w, 2 ** len(blocks))
        layers: list[nn.Module] = []
        cin = in_chans
        for depth in blocks:
            for _ in range(depth):
                layers += [nn.Conv2d(cin, int(width), 3, padding=1), nn.BatchNorm2d(int(width)), nn.ReLU()]
                cin = int(width)
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(int(width), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# 16x16 digits: two stages of 16x16 and 8x8 maps, large enough for the wide convs to dominate
# the cost, small enough to train in a minute or two per epoch on one CPU thread.
@register_model(train_kwargs={"input_size": 16})
def widevgg(num_classes: int = 10, in_chans: int = 3, input_size: int | Sequence[int] = 32, width: int = 128,
            blocks: Sequence[int] = (2, 2)) -> WideVGG:
    """VGG-style net of wide 3x3 convs (width 128), where factored layers pay in latency."""
    return WideVGG(num_classes, in_chans, input_size, width, blocks)
