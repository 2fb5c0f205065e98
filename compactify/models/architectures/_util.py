"""Small helpers shared by the architecture definitions."""

from __future__ import annotations

from typing import Sequence

from compactify.errors import BadInputError


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An int or an (h, w) pair (JSON gives lists) as an (h, w) tuple."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def check_common(name: str, num_classes: int, in_chans: int, input_size: int | Sequence[int]) -> tuple[int, int]:
    """Validate the arguments every factory takes; returns (h, w)."""
    if int(num_classes) < 1:
        raise BadInputError(f"{name}: num_classes must be >= 1, got {num_classes}")
    if int(in_chans) < 1:
        raise BadInputError(f"{name}: in_chans must be >= 1, got {in_chans}")
    h, w = pair(input_size)
    if h < 1 or w < 1:
        raise BadInputError(f"{name}: input_size must be positive, got {input_size}")
    return h, w


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < 0.9 * value:
        new += divisor
    return new


def scaled(channels: int, width: float) -> int:
    """A channel count times a width multiplier, at least 1."""
    if width <= 0:
        raise BadInputError(f"width must be positive, got {width}")
    return max(1, int(round(channels * width)))


def min_input(name: str, h: int, w: int, need: int) -> None:
    """Reject inputs smaller than the net's total downsampling."""
    if h < need or w < need:
        raise BadInputError(f"{name}: input_size must be at least {need}x{need}, got {h}x{w}")
