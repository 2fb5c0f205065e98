"""onnxsim on a model compactify wrote, and proof that it changed no output."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from typing import Mapping, Sequence

import numpy as np
import onnx

from compactify.errors import CompactifyError, VerificationError
from compactify.targets.onnx_io import check_onnx, run_ort, short_error

SIMPLIFY_RTOL = 1e-5  # of the output scale: onnxsim folds constants in float32, in another order


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    # Imported here, by the one step that uses it: onnxsim (with sympy) takes 0.5 s to import, which
    # every conversion without ONNX and every verify and bench would otherwise pay.
    import onnxsim

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            simplified, ok = onnxsim.simplify(copy.deepcopy(proto), check_n=0)  # outputs are compared here
    except Exception as exc:
        raise CompactifyError(f"onnxsim failed: {short_error(exc)}; run again with --no-simplify") from exc
    if not ok:
        raise CompactifyError("onnxsim could not validate the simplified model; run again with --no-simplify")
    check_onnx(simplified, "simplified")
    return simplified


def simplify_checked(proto: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> tuple[onnx.ModelProto, float]:
    """The simplified model and the largest difference of its outputs from ``proto``'s on ``feeds``
    (ONNX Runtime); VerificationError when onnxsim changed what the model computes."""
    simplified = simplify(proto)
    worst = 0.0
    for f in feeds:
        for a, b in zip(run_ort(simplified, dict(f)), run_ort(proto, dict(f))):
            diff = float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0
            scale = float(np.max(np.abs(b))) if b.size else 0.0
            if not np.isfinite(diff) or diff > SIMPLIFY_RTOL * max(scale, 1e-30):
                raise VerificationError(f"onnxsim changed the model's outputs (max abs diff {diff:.3g}); convert again "
                                        "with --no-simplify")
            worst = max(worst, diff)
    return simplified, worst
