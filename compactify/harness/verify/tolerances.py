"""The tolerances verify judges by, beyond the float32 allclose defaults of ``measure.metrics``."""

from __future__ import annotations

import math

from compactify.errors import BadInputError
from compactify.targets.fp16 import (  # the fp16 target's own; --fp16-atol/--fp16-rtol replace them
    FP16_ATOL,
    FP16_RTOL,
)

__all__ = ["FP16_ATOL", "FP16_RTOL", "INT8_BATCH", "INT8_TOL", "check_tolerances"]

# An int8 model is judged per output against the output's scale: |int8 - ref| <= INT8_TOL * max|ref|.
# Every int8 activation is rounded to 1/255 of its calibrated range, and the roundings of a whole
# network add up to a few percent of the output scale; it is judged on the inputs it was calibrated
# for (the held-out part of its calibration set), since outside that range int8 clips.
INT8_TOL = 0.1
INT8_BATCH = 64


def check_tolerances(*values: float) -> None:
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise BadInputError(f"tolerances must be finite and >= 0, got {v}")
