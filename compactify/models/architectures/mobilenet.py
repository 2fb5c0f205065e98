"""MobileNetV1 (Howard et al. 2017) and MobileNetV2 (Sandler et al. 2018), ImageNet layouts.

``width`` is the paper's width multiplier (channels rounded to multiples of 8, as in
torchvision); ``input_size`` only sets the default input shape, since both end in a global
average pool. At width 1.0 with 1000 classes they have 4,231,976 and 3,504,872 parameters.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from compactify.models.architectures._util import check_common, make_divisible, min_input
from compactify.models.registry import register_model


def conv_bn_act(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                act: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


# (output channels, stride) of the 13 depthwise-separable blocks of MobileNetV1.
_V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(conv_bn_act(cin, cin, 3, stride, groups=cin), conv_bn_act(cin, cout, 1))


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0):
        super().__init__()
        cin = make_divisible(32 * width)
        self.stem = conv_bn_act(in_chans, cin, 3, 2)
        blocks = []
        for c, s in _V1_BLOCKS:
            cout = make_divisible(c * width)
            blocks.append(DepthwiseSeparable(cin, cout, s))
            cin = cout
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(self.stem(x))).flatten(1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = int(round(cin * expand_ratio))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn_act(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:  # fixed at construction: structure, not data
            return x + self.conv(x)
        return self.conv(x)


# (expansion t, channels c, repeats n, first stride s) of MobileNetV2.
_V2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0, dropout: float = 0.2):
        super().__init__()
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [conv_bn_act(in_chans, cin, 3, 2, act=nn.ReLU6)]
        for t, c, n, s in _V2_SETTING:
            cout = make_divisible(c * width)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_act(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@register_model
def mobilenetv1(num_classes: int = 1000, in_chans: int = 3, input_size: int | Sequence[int] = 224,
                width: float = 1.0) -> MobileNetV1:
    """MobileNetV1: 3x3 depthwise + 1x1 pointwise blocks (ImageNet layout)."""
    h, w = check_common("mobilenetv1", num_classes, in_chans, input_size)
    min_input("mobilenetv1", h, w, 32)
    return MobileNetV1(num_classes, in_chans, width)


@register_model
def mobilenetv2(num_classes: int = 1000, in_chans: int = 3, input_size: int | Sequence[int] = 224,
                width: float = 1.0, dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2: inverted residual blocks with linear bottlenecks (ImageNet layout)."""
    h, w = check_common("mobilenetv2", num_classes, in_chans, input_size)
    min_input("mobilenetv2", h, w, 32)
    return MobileNetV2(num_classes, in_chans, width, dropout)
