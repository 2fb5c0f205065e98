"""A compact module proved exact at one input size refuses the others.

A graph captured at one spatial size holds that size in its shapes (a ``view`` to ``h, w``, a
slice to ``h // 2``), and padding after a strided layer, or a crop measured from the start of
an axis, can make a merged operator exact at the traced size and wrong at another (the last
window of a strided layer stops short of the input's end at some sizes). Rather than answer
wrongly there, the compact module checks its input's spatial size first.
"""

from __future__ import annotations

import torch

from compactify.errors import BadInputError


class InputSizeError(BadInputError, ValueError):
    """The input's spatial size is not the one the compact module was proved exact for."""


def check_spatial_size(x: torch.Tensor, expected: tuple[int, ...], why: str) -> torch.Tensor:
    got = tuple(int(d) for d in x.shape[2:])
    if got != tuple(expected):
        size = "x".join(str(d) for d in expected)
        raise InputSizeError(
            f"this compact model was proved exact only at input size {size} ({why}), "
            f"not at {'x'.join(str(d) for d in got)}: convert at that size, or with --dynamic-hw "
            "(contract(..., dynamic_hw=True)) to merge only what is exact at every size"
        )
    return x
