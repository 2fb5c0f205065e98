"""RepVGG (Ding et al., CVPR 2021) in its training-time form: the structural
re-parameterization case.

Each block sums a 3x3 conv + BN, a 1x1 conv + BN and, where shapes allow, an identity BN,
then applies ReLU; the three branches are one 3x3 conv at inference, which is what the
converter must find and fold. Module names follow the official code (stage0..stage4,
rbr_dense / rbr_1x1 / rbr_identity, gap, linear). Defaults are RepVGG-A0.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from compactify.errors import BadInputError
from compactify.models.architectures._util import check_common, min_input, scaled
from compactify.models.registry import register_model


def conv_bn(cin: int, cout: int, kernel: int, stride: int, padding: int) -> nn.Sequential:
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, kernel, stride, padding, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    return seq


class RepVGGBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.rbr_identity = nn.BatchNorm2d(cin) if cout == cin and stride == 1 else None
        self.rbr_dense = conv_bn(cin, cout, 3, stride, 1)
        self.rbr_1x1 = conv_bn(cin, cout, 1, stride, 0)
        self.nonlinearity = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.rbr_dense(x) + self.rbr_1x1(x)
        if self.rbr_identity is not None:  # fixed at construction: structure, not data
            out = out + self.rbr_identity(x)
        return self.nonlinearity(out)


class RepVGG(nn.Module):
    def __init__(self, num_blocks: Sequence[int], widths: Sequence[int], num_classes: int, in_chans: int):
        super().__init__()
        cin = min(64, widths[0])
        self.stage0 = RepVGGBlock(in_chans, cin, 2)
        for i, (n, cout) in enumerate(zip(num_blocks, widths), start=1):
            blocks = [RepVGGBlock(cin, cout, 2)] + [RepVGGBlock(cout, cout, 1) for _ in range(n - 1)]
            setattr(self, f"stage{i}", nn.Sequential(*blocks))
            cin = cout
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage0(x)
        x = self.stage4(self.stage3(self.stage2(self.stage1(x))))
        return self.linear(self.gap(x).flatten(1))


@register_model
def repvgg(num_classes: int = 1000, in_chans: int = 3, input_size: int | Sequence[int] = 224,
           width: float = 1.0, num_blocks: Sequence[int] = (2, 4, 14, 1),
           width_multiplier: Sequence[float] = (0.75, 0.75, 0.75, 2.5)) -> RepVGG:
    """RepVGG-A0, training-time blocks (3x3+BN, 1x1+BN, identity BN summed, then ReLU)."""
    h, w = check_common("repvgg", num_classes, in_chans, input_size)
    min_input("repvgg", h, w, 32)
    if len(num_blocks) != 4 or min(num_blocks) < 1:
        raise BadInputError(f"repvgg: num_blocks must be four positive ints, got {list(num_blocks)}")
    if len(width_multiplier) != 4:
        raise BadInputError(f"repvgg: width_multiplier must have four entries, got {list(width_multiplier)}")
    widths = [scaled(int(base * m), width) for base, m in zip((64, 128, 256, 512), width_multiplier)]
    return RepVGG([int(n) for n in num_blocks], widths, num_classes, in_chans)
