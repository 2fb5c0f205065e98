"""An fp16 copy of an fp32 ONNX model, made by onnxconverter-common's ``convert_float_to_float16``
(float initializers and constants in fp16, casts around the ops that must stay fp32, fp32 kept at
the inputs and outputs if asked), then checked against the original in ONNX Runtime.

The library's defaults are not ours: it clamps weights to +-1e4 and lifts nonzero ones below 1e-7
to 1e-7. Here the bounds are fp16's own (its largest finite value, its smallest subnormal), so a
weight changes only where fp16 cannot hold it, and the report counts those weights.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxconverter_common import float16

from compactify.errors import BadInputError, CompactifyError, VerificationError
from compactify.measure.metrics import outputs_relative_error
from compactify.targets.onnx_io import check_onnx, run_ort, save_onnx, short_error

_FP16_MAX = float(np.finfo(np.float16).max)
_FP16_TINY = float(np.finfo(np.float16).smallest_subnormal)
# Ops whose float inputs are parameters (scales, sizes, distribution settings), not activations, or
# that compare values: the library keeps them in fp32 between casts, so rounding cannot change their meaning.
KEEP_FP32_OPS = tuple(float16.DEFAULT_OP_BLOCK_LIST) + ("RandomNormal", "RandomUniform", "RandomNormalLike",
                                                        "Multinomial")


@dataclass
class Fp16Result:
    path: Path
    keep_io_types: bool
    converted_initializers: int
    clamped_values: int  # |w| > 65504, clamped to the largest finite fp16
    flushed_values: int  # nonzero weights below fp16's smallest subnormal, raised to it (none become 0)
    kept_fp32_nodes: list[str]  # ops whose float inputs are parameters, run in fp32 between casts
    max_abs_diff: float | None  # fp16 vs fp32 model in ONNX Runtime on random inputs
    max_rel_diff: float | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


def to_fp16(
    onnx_path: str | Path,
    out_path: str | Path,
    *,
    keep_io_types: bool = True,
    check: bool = True,
    check_rtol: float = 1e-2,
    force: bool = True,
) -> Fp16Result:
    """Write an fp16 copy of an fp32 ONNX model.

    With ``keep_io_types`` the graph keeps fp32 inputs and outputs with Cast nodes just inside.
    With ``check``, ONNX Runtime compares both models on random inputs and VerificationError is
    raised if the fp16 outputs are not finite or differ by more than ``check_rtol`` times the
    largest fp32 output magnitude.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = _load_onnx(onnx_path)
    try:
        with warnings.catch_warnings():  # it warns per clamped weight; the result counts them instead
            warnings.simplefilter("ignore", UserWarning)
            model = float16.convert_float_to_float16(source, min_positive_val=_FP16_TINY,
                                                     max_finite_val=_FP16_MAX,
                                                     keep_io_types=keep_io_types,
                                                     op_block_list=list(KEEP_FP32_OPS))
    except Exception as exc:  # the library raises ValueError, KeyError and shape-inference errors alike
        raise CompactifyError(f"onnxconverter-common could not convert {onnx_path.name} to fp16: "
                              f"{short_error(exc)}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    props["compactify.precision"] = "fp16" + (" (fp32 io)" if keep_io_types else "")
    helper.set_model_props(model, props)
    check_onnx(model, "fp16")
    max_abs = max_rel = None
    if check:
        max_abs, max_rel = _compare_fp16(source, model, keep_io_types)
        if not (np.isfinite(max_abs) and max_rel <= check_rtol):
            raise VerificationError(
                f"the fp16 model's outputs differ from fp32 by {max_abs:.3g} ({max_rel:.3g} of the output scale, "
                f"limit {check_rtol:g}); this model is not safe to run in fp16"
            )
    save_onnx(model, out_path, force)
    return Fp16Result(path=out_path, keep_io_types=keep_io_types, max_abs_diff=max_abs, max_rel_diff=max_rel,
                      **_weight_changes(source, model))


def _load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise BadInputError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable ONNX model: {short_error(exc)}") from exc


def _weight_changes(fp32: onnx.ModelProto, fp16: onnx.ModelProto) -> dict[str, Any]:
    """What the conversion did to the weights: how many initializers became fp16, how many of their
    values fp16 could not hold (beyond its range, or below its smallest subnormal), which nodes kept fp32."""
    converted = {i.name for i in fp16.graph.initializer if i.data_type == TensorProto.FLOAT16}
    clamped = flushed = 0
    for init in fp32.graph.initializer:
        if init.name in converted and init.data_type == TensorProto.FLOAT:
            values = np.abs(numpy_helper.to_array(init).astype(np.float64))
            clamped += int(np.count_nonzero(values > _FP16_MAX))
            flushed += int(np.count_nonzero((values > 0) & (values < _FP16_TINY)))
    kept = [f"{n.op_type}:{n.name}" for n in fp16.graph.node if n.op_type in KEEP_FP32_OPS]
    return {"converted_initializers": len(converted), "clamped_values": clamped, "flushed_values": flushed,
            "kept_fp32_nodes": kept}


def _static_feeds(model: onnx.ModelProto, dtype, batches=(1, 2)) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    initializers = {i.name for i in model.graph.initializer}
    feeds = []
    for batch in batches:
        feed = {}
        for value in model.graph.input:
            if value.name in initializers:
                continue
            dims = []
            for k, d in enumerate(value.type.tensor_type.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(d.dim_value)
                elif k == 0:
                    dims.append(batch)
                else:
                    raise BadInputError(f"input {value.name!r} has a dynamic dimension {k}; only the batch may be dynamic")
            feed[value.name] = rng.standard_normal(dims).astype(dtype)
        feeds.append(feed)
    return feeds


def _compare_fp16(fp32: onnx.ModelProto, fp16: onnx.ModelProto, keep_io_types: bool) -> tuple[float, float]:
    """``(max_abs, max_rel_error)`` of the fp16 model against the fp32 one, worst output over the feeds."""
    max_abs = max_rel = 0.0
    for feed in _static_feeds(fp32, np.float32):
        ref = run_ort(fp32, feed)
        feed16 = feed if keep_io_types else {k: v.astype(np.float16) for k, v in feed.items()}
        got = run_ort(fp16, feed16)
        if any(np.shape(g) != np.shape(r) for g, r in zip(got, ref)):
            return float("inf"), float("inf")
        a, r = outputs_relative_error(got, ref)
        max_abs, max_rel = max(max_abs, a), max(max_rel, r)
    return max_abs, max_rel
