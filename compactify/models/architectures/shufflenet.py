"""ShuffleNetV2 (Ma et al. 2018), torchvision layout; 0.5x by default (1,366,792 params)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from compactify.errors import BadInputError
from compactify.models.architectures._util import check_common, min_input
from compactify.models.registry import register_model

# Stage output channels per width multiplier, from the paper's Table 5.
_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    # unflatten/flatten instead of view(b, g, ...) so no tensor size is read at trace time.
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def _dw(c: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c, c, 3, stride, 1, groups=c, bias=False), nn.BatchNorm2d(c)]


def _pw(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        branch = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(*_dw(cin, stride), *_pw(cin, branch))
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(*_pw(cin if stride > 1 else branch, branch), *_dw(branch, stride), *_pw(branch, branch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, channels: Sequence[int], num_classes: int = 1000, in_chans: int = 3,
                 repeats: Sequence[int] = (4, 8, 4)):
        super().__init__()
        c0 = channels[0]
        self.conv1 = nn.Sequential(nn.Conv2d(in_chans, c0, 3, 2, 1, bias=False), nn.BatchNorm2d(c0), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = c0
        for i, (n, cout) in enumerate(zip(repeats, channels[1:4]), start=2):
            units = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*units))
            cin = cout
        self.conv5 = nn.Sequential(*_pw(cin, channels[4]))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[4], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        x = self.stage4(self.stage3(self.stage2(x)))
        return self.fc(self.pool(self.conv5(x)).flatten(1))


@register_model
def shufflenetv2(num_classes: int = 1000, in_chans: int = 3, input_size: int | Sequence[int] = 224,
                 width: float = 0.5, repeats: Sequence[int] = (4, 8, 4)) -> ShuffleNetV2:
    """ShuffleNetV2 0.5x: channel split, depthwise 3x3 and channel shuffle (ImageNet layout)."""
    h, w = check_common("shufflenetv2", num_classes, in_chans, input_size)
    min_input("shufflenetv2", h, w, 32)
    if float(width) not in _CHANNELS:
        raise BadInputError(f"shufflenetv2: width must be one of {sorted(_CHANNELS)}, got {width}")
    if len(repeats) != 3 or min(repeats) < 1:
        raise BadInputError(f"shufflenetv2: repeats must be three positive ints, got {list(repeats)}")
    return ShuffleNetV2(_CHANNELS[float(width)], num_classes, in_chans, tuple(int(r) for r in repeats))
