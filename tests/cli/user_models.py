"""Users' own architectures, imported by ``--arch user_models:FACTORY`` in the CLI tests."""

import torch
from torch import nn


class Expanded(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.chain = nn.Sequential(nn.Conv2d(3, width * 4, 1, padding=1), nn.Conv2d(width * 4, width, 3),
                                   nn.BatchNorm2d(width))
        self.head = nn.Linear(width, 5)

    def forward(self, x):
        return self.head(self.chain(x).relu().mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:  # control flow on data: torch.export cannot capture this
            return y.relu()
        return y


def expanded(width: int = 8) -> nn.Module:
    return Expanded(width)


def data_dependent() -> nn.Module:
    return DataDependent()


def raising(width: int = 2) -> nn.Module:
    raise ValueError("width must be even")
