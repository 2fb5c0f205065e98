"""Architectures for the ``convert --int8`` CLI tests, imported by ``--arch int8_models:FACTORY``."""

import torch
from torch import nn


class Tied(nn.Module):
    """Two logits 0.1% apart, the second always the larger: int8 rounds both to one value, so its argmax
    falls on the first class where float picks the second (a real, measured loss of agreement)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.3)
            self.conv.bias.fill_(0.1)
            row = torch.rand(1, 4, generator=gen) + 0.5
            self.fc.weight.copy_(torch.cat([row, row * 1.001]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def tied() -> nn.Module:
    return Tied()
