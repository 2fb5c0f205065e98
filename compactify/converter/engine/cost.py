"""What an operator costs as the one layer that computes it: FLOPs and parameters, counted from
its shape alone the way ``torch.utils.flop_counter`` counts a conv or linear layer (two per
multiply-add, bias adds not counted), so plans are costed the same whatever the source format.
"""

from __future__ import annotations

import math
from typing import Sequence

from compactify.converter.engine.algebra import AffineConv, transposed_layer, unwritable


def operator_flops(op: AffineConv, input_shape: Sequence[int]) -> int:
    """FLOPs of ``op`` as one conv (or linear, or transposed conv) layer on an input of
    ``input_shape`` (``[N, C, *spatial]``; for a linear operator ``[..., C]``)."""
    if op.ndim == 0:
        return 2 * math.prod(input_shape[:-1]) * op.in_channels * op.out_channels
    if op.dilates_input and not unwritable(op):
        # A transposed conv is counted per input sample (its zero pad included), as
        # torch.utils.flop_counter counts it: the inserted zeros cost nothing.
        pads = transposed_layer(op).input_pad
        size = [n + b + a for n, (b, a) in zip(input_shape[-op.ndim:], pads)]
        per_sample = op.in_channels * (op.out_channels // op.groups) * math.prod(op.kernel)
        return 2 * input_shape[0] * math.prod(size) * per_sample
    out = op.output_size(tuple(input_shape[-op.ndim:]))
    return 2 * input_shape[0] * op.out_channels * math.prod(out) * (op.in_channels // op.groups) * math.prod(op.kernel)


def operator_params(op: AffineConv) -> int:
    """Parameters of the layer computing ``op``: its weight, and its bias unless all zero."""
    weight = op.out_channels * op.in_channels if op.ndim == 0 else op.weight.numel()
    return weight + (op.out_channels if op.has_bias else 0)
