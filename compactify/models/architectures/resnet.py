"""ResNet-18 (He et al. 2016) with basic blocks, torchvision layout and module names.

At width 1.0 with 1000 classes it has 11,689,512 parameters; ``width`` scales every stage
(0.125 gives 8-16-32-64 channels for tests).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from compactify.models.architectures._util import check_common, min_input, scaled
from compactify.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class ResNet(nn.Module):
    def __init__(self, blocks: Sequence[int], num_classes: int = 1000, in_chans: int = 3, width: float = 1.0):
        super().__init__()
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = widths[0]
        for i, (n, cout) in enumerate(zip(blocks, widths), start=1):
            stride = 1 if i == 1 else 2
            layer = [BasicBlock(cin, cout, stride)] + [BasicBlock(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


@register_model
def resnet18(num_classes: int = 1000, in_chans: int = 3, input_size: int | Sequence[int] = 224,
             width: float = 1.0) -> ResNet:
    """ResNet-18: 7x7 stem and basic blocks (ImageNet layout)."""
    h, w = check_common("resnet18", num_classes, in_chans, input_size)
    min_input("resnet18", h, w, 32)
    return ResNet((2, 2, 2, 2), num_classes, in_chans, width)
