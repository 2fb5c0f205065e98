"""SmallNet-3 and SmallNet-7, the compact CIFAR nets of ExpandNets (Guo et al., NeurIPS 2020).

Three convs of 8, 16 and 32 channels, each followed by BatchNorm, ReLU and a 2x2 max-pool,
then a hidden FC of 64 units and the classifier. Module names follow the official code
(conv1, conv1_bn, ..., fc1, fc2), so its state_dicts load here unchanged. At 3x32x32 with
10 classes SmallNet-7 has 66,186 parameters (BatchNorm weight and bias included).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compactify.errors import BadInputError
from compactify.models.architectures._util import check_common, scaled
from compactify.models.registry import register_model


class SmallNet(nn.Module):
    def __init__(self, kernel_size: int, padding: int, num_classes: int = 10, in_chans: int = 3,
                 input_size: int | Sequence[int] = 32, width: float = 1.0, hidden: int = 64,
                 name: str = "smallnet"):
        super().__init__()
        h, w = check_common(name, num_classes, in_chans, input_size)
        c1, c2, c3 = (scaled(c, width) for c in (8, 16, 32))
        for _ in range(3):  # conv (stride 1) then 2x2 max-pool, floor mode
            h, w = (h + 2 * padding - kernel_size + 1) // 2, (w + 2 * padding - kernel_size + 1) // 2
            if h < 1 or w < 1:
                raise BadInputError(f"{name}: input_size {input_size} is too small for three "
                                    f"{kernel_size}x{kernel_size} conv + 2x2 pool stages")
        if hidden < 1:
            raise BadInputError(f"{name}: hidden must be >= 1, got {hidden}")
        self.conv1 = nn.Conv2d(in_chans, c1, kernel_size, padding=padding)
        self.conv1_bn = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size, padding=padding)
        self.conv2_bn = nn.BatchNorm2d(c2)
        self.conv3 = nn.Conv2d(c2, c3, kernel_size, padding=padding)
        self.conv3_bn = nn.BatchNorm2d(c3)
        self.fc1 = nn.Linear(c3 * h * w, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv1_bn(self.conv1(x))), 2)
        out = F.max_pool2d(F.relu(self.conv2_bn(self.conv2(out))), 2)
        out = F.max_pool2d(F.relu(self.conv3_bn(self.conv3(out))), 2)
        out = F.relu(self.fc1(out.flatten(1)))
        return self.fc2(out)


@register_model
def smallnet3(num_classes: int = 10, in_chans: int = 3, input_size: int | Sequence[int] = 32,
              width: float = 1.0, hidden: int = 64) -> SmallNet:
    """SmallNet with 3x3 convs without padding (ExpandNets CIFAR baseline)."""
    return SmallNet(3, 0, num_classes, in_chans, input_size, width, hidden, name="smallnet3")


# Digits are 8x8: 16x16 keeps every stage at least 2x2 and makes the 7x7 expansions cheap
# enough to train in seconds on two CPU cores (at 32x32 the CL expansion costs 4x as much).
@register_model(train_kwargs={"input_size": 16})
def smallnet7(num_classes: int = 10, in_chans: int = 3, input_size: int | Sequence[int] = 32,
              width: float = 1.0, hidden: int = 64) -> SmallNet:
    """SmallNet with 7x7 convs, padding 3 (ExpandNets CIFAR baseline, 66,186 params)."""
    return SmallNet(7, 3, num_classes, in_chans, input_size, width, hidden, name="smallnet7")
