"""The check of an ONNX conversion: the compact model on ONNX Runtime against the source graph
evaluated in float64 with onnx.reference, on seeded inputs at the planned shapes."""

from __future__ import annotations

import numpy as np
import onnx

from compactify.converter.engine.exactness import NetworkCheck
from compactify.targets.onnx_io import run_ort, short_error
from compactify.converter.frontends.onnx.prepare import CHECK_BATCH
from compactify.converter.frontends.onnx.shapes import InputSpec
from compactify.errors import BadInputError, CompactifyError
from compactify.measure.metrics import compare, outputs_relative_error
from compactify.measure.onnx_float64 import Float64Reference

CHECK_SEED = 1  # the seed of the check inputs, as the PyTorch path uses
REFERENCE = "the source ONNX graph evaluated in float64 with onnx.reference"


def check_feeds(specs: list[InputSpec], shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Seeded N(0, 1) inputs at the planned shapes (a symbolic batch checked at CHECK_BATCH)."""
    rng = np.random.default_rng(CHECK_SEED)
    feeds = {}
    for spec in specs:
        shape = list(shapes[spec.name])
        if not isinstance(spec.dims[0], int):
            shape[0] = CHECK_BATCH
        if spec.dtype.kind != "f":
            raise BadInputError(f"input {spec.name!r} is {spec.dtype}; compactify checks models with float inputs")
        feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
    return feeds


def float64_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return Float64Reference(model).run(feeds)
    except CompactifyError:
        raise
    except Exception as exc:
        raise CompactifyError(f"the source model does not run in float64 with onnx.reference: {short_error(exc)}") \
            from exc


def check_network(source: onnx.ModelProto, compact: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> NetworkCheck:
    """The compact model on ONNX Runtime against the source in float64, and the source's own float32
    error on the same inputs."""
    reference = float64_outputs(source, feeds)
    try:
        got, baseline = run_ort(compact, feeds), run_ort(source, feeds)
    except Exception as exc:
        raise CompactifyError(f"ONNX Runtime cannot run the model: {short_error(exc)}") from exc
    batch = int(next(iter(feeds.values())).shape[0]) if feeds else 0
    result = NetworkCheck(batch=batch, float64_batch=batch, reference=REFERENCE)
    for i, (g, b, r) in enumerate(zip(got, baseline, reference)):
        if np.asarray(r).dtype.itemsize < 4:
            continue  # an output the graph itself casts to float16 (see low_precision_outputs)
        c = compare(g, r, name=f"output{i}")
        result.max_abs, result.max_rel_error = max(result.max_abs, c.max_abs), max(result.max_rel_error, c.max_rel_error)
        result.source_rel = max(result.source_rel, compare(b, r, name=f"output{i}").max_rel_error)
    return result


def model_error(model: onnx.ModelProto, reference: list[np.ndarray], feeds: dict[str, np.ndarray]) -> tuple[float, float]:
    """``(max_abs, max_rel_error)`` of ``model`` on ONNX Runtime against reference outputs."""
    return outputs_relative_error(run_ort(model, feeds), reference)


def low_precision_outputs(model: onnx.ModelProto) -> list[str]:
    """Outputs the graph itself makes float16 or bfloat16: the compact model's float32 rounding
    differs from the source's, so these can differ by one unit in their last place; they are
    judged with float16 tolerances, not with the float32 bar."""
    low = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type in low]
