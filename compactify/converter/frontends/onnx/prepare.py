"""An ONNX model made ready for the front-end: the --outputs selection, layout transposes cancelled,
and every tensor's symbolic and concrete shape, with the dims shape inference leaves open settled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import onnx

from compactify.converter.frontends.onnx.read import check_model
from compactify.converter.frontends.onnx.shapes import (
    InputSpec,
    concrete_shapes,
    example_shapes,
    graph_inputs,
    has_unknown,
    settle_unknown,
    symbolic_shapes,
)
from compactify.converter.frontends.onnx.transposes import cancel_transposes
from compactify.errors import BadInputError

# The batch a symbolic batch is planned, costed and checked at (2, as the PyTorch path traces:
# a graph exported at batch 1 may have folded the batch into its reshapes).
CHECK_BATCH = 2


@dataclass
class Prepared:
    source: onnx.ModelProto  # the model as given, less the outputs not selected: what the check runs
    model: onnx.ModelProto  # the model as planned (layout transposes cancelled)
    specs: list[InputSpec]
    shapes: dict[str, tuple[int, ...]]  # the example shape of each input
    symbolic: dict
    concrete: dict
    every_size: bool  # a symbolic spatial size: merges must hold at every size
    transposes_cancelled: int


def prepare(model: onnx.ModelProto, input_shape: Sequence[int] | None, outputs) -> Prepared:
    check_model(model, "the ONNX model")
    source = onnx.ModelProto()
    source.CopyFrom(model)
    select_outputs(source, outputs)
    planned = onnx.ModelProto()
    planned.CopyFrom(source)  # the check runs the source as given, transposes and all
    planned, cancelled = cancel_transposes(planned)
    specs = graph_inputs(planned)
    if not specs:
        raise BadInputError("the ONNX graph has no inputs to feed")
    shapes = example_shapes(specs, tuple(input_shape) if input_shape else None, batch=CHECK_BATCH)
    symbolic = symbolic_shapes(planned)
    concrete = concrete_shapes(planned, shapes)
    # e.g. flatten written as Reshape(x, Concat(Shape(x)[0], -1)): a dim left unknown, or, past a
    # reshape to a computed shape, no shape at all
    if has_unknown(symbolic) or any(name not in symbolic for name in concrete):
        other = {s.name: (shapes[s.name][0] + 1, *shapes[s.name][1:]) if not isinstance(s.dims[0], int)
                 else shapes[s.name] for s in specs}
        if other != shapes:
            first = specs[0]
            batch = (first.dims[0], shapes[first.name][0], other[first.name][0]) if isinstance(first.dims[0], str) \
                else None
            symbolic = settle_unknown(symbolic, concrete, concrete_shapes(planned, other), batch)
    every_size = any(not isinstance(d, int) for s in specs for d in s.dims[2:])
    if every_size and input_shape is None:
        raise BadInputError(f"input {specs[0].name!r} has a symbolic size {list(specs[0].dims)}; pass --input-shape "
                            "N,C,H,W to plan at (merges are kept only where they hold at every size)")
    return Prepared(source, planned, specs, shapes, symbolic, concrete, every_size, cancelled)


def select_outputs(model: onnx.ModelProto, outputs: str | Sequence[str] | None) -> None:
    """Keep only the named graph outputs (names or positions); the rest, and what only they
    need, is dropped by the rewrite."""
    if not outputs:
        return
    keys = [k.strip() for k in outputs.split(",")] if isinstance(outputs, str) else list(outputs)
    names = [o.name for o in model.graph.output]
    chosen = []
    for k in keys:
        if k in names:
            chosen.append(k)
        elif k.lstrip("-").isdigit() and -len(names) <= int(k) < len(names):
            chosen.append(names[int(k)])
        else:
            raise BadInputError(f"--outputs names {k!r}, which is not one of the model's outputs ({', '.join(names)})")
    keep = [o for o in model.graph.output if o.name in chosen]
    keep.sort(key=lambda o: chosen.index(o.name))
    del model.graph.output[:]
    model.graph.output.extend(keep)
