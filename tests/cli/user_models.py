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


def flat(size: int = 8) -> nn.Module:
    """A net whose Linear after the flatten fixes the input size, though nothing else says which."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * size * size, 5))


class FunctionalHead(nn.Module):
    """A head written as F.linear on its own weight: no layer module says which size it takes."""

    def __init__(self, features: int = 48):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(5, features))

    def forward(self, x):
        return torch.nn.functional.linear(x.flatten(1), self.weight)


def functional_head(features: int = 48) -> nn.Module:
    return FunctionalHead(features)
