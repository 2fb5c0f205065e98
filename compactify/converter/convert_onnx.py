"""The contraction pipeline on an ONNX model: no source code, no checkpoint, any exporter.

read -> cancel layout transposes -> shapes -> ONNX front-end -> engine plan -> ONNX back-end ->
check (the compact model on ONNX Runtime against the source evaluated in float64 with
onnx.reference) -> compact.onnx (+ onnxsim, fp16, TensorRT) with report.json and report.md in
the schema of the PyTorch path.

Where the source has a symbolic spatial size, only what is exact at every size is merged, so
the compact model takes every size the source takes.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from compactify import __version__
from compactify.converter.backends.onnx_rewrite import rewrite_onnx
from compactify.converter.contract import EXACT_REL, SOURCE_ERROR_FACTOR
from compactify.converter.engine.plan import Decision, PlanSummary, plan_graph
from compactify.targets.onnx_io import check_onnx, short_error
from compactify.converter.frontends.onnx.graph import affine_graph
from compactify.converter.frontends.onnx.read import check_model, read_onnx
from compactify.converter.frontends.onnx.shapes import (InputSpec, concrete_shapes, example_shapes, graph_inputs,
                                                        has_unknown, settle_unknown, symbolic_shapes)
from compactify.converter.frontends.onnx.transposes import cancel_transposes
from compactify.converter.stages import Stages, silent
from compactify.errors import BadInputError, CompactifyError

# The batch a symbolic batch is planned, costed and checked at (2, as the PyTorch path traces:
# a graph exported at batch 1 may have folded the batch into its reshapes).
CHECK_BATCH = 2
CHECK_SEED = 1  # the seed of the check inputs, as the PyTorch path uses
# Options of `compactify convert` that have no meaning for an ONNX source (they choose how Python
# code is built or captured) or that this path does not do yet.
_NOT_FOR_ONNX = {
    "arch": "--arch (the graph is in the file)",
    "arch_kwargs": "--arch-kwargs (the graph is in the file)",
    "trust_pickle": "--trust-pickle (an ONNX file runs no code when loaded)",
    "dynamic_hw": "--dynamic-hw (a symbolic H and W in the file already mean every size)",
    "rank_data": "--data (judging --rank on labelled data is done for PyTorch sources)",
    "max_accuracy_drop": "--max-accuracy-drop (judging --rank on labelled data is done for PyTorch sources)",
    "int8": "--int8 (INT8 quantization of an ONNX source is not implemented yet; convert the PyTorch checkpoint)",
}


@dataclass
class OnnxContraction(PlanSummary):
    model: onnx.ModelProto  # the compact model
    decisions: list[Decision]
    input_shapes: dict[str, tuple[int, ...]]  # where it was planned and checked
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    transposes_cancelled: int = 0
    warnings: list[str] = field(default_factory=list)
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    source_rel_error: float | None = None
    every_size: bool = False  # planned for a symbolic spatial size: exact at every size
    truncation: dict | None = None  # the --rank report section
    check_feeds: dict = field(default_factory=dict)  # the inputs the check ran on


def contract_onnx(model: onnx.ModelProto, *, allow_approximate: bool = False,
                  input_shape: Sequence[int] | None = None, outputs: str | Sequence[str] | None = None,
                  rank: str | None = None, rank_multiple: int = 1, check: bool = True,
                  stages: Stages | None = None) -> OnnxContraction:
    """Contract every linear region of ``model`` that merges exactly (and pays); with ``rank``
    (a ``--rank`` rule) also factor the plan's conv/linear layers at the ranks it chooses.
    ``stages`` times (and, for a long conversion, announces) regions, plan and check."""
    stages = stages or silent()
    with stages("regions"):
        prepared, source, specs, shapes, symbolic, concrete, every_size, cancelled = _prepare(
            model, input_shape, outputs)
        graph, onnx_graph = affine_graph(prepared, symbolic, concrete)
    with stages("plan"):
        decisions = plan_graph(graph, allow_approximate, dynamic_hw=every_size)
        untruncated = None
        if rank is not None:
            from compactify.converter.lowrank.rank_plan import rank_plan

            ranked = rank_plan(decisions, graph.example_shapes, rank, rank_multiple)
            untruncated, _ = rewrite_onnx(onnx_graph, graph, decisions)
            decisions = ranked.decisions
        compact, _ = rewrite_onnx(onnx_graph, graph, decisions)
        try:
            check_onnx(compact, "compact")
        except CompactifyError as exc:
            raise CompactifyError(f"{exc} (a bug: please report it with the source model)") from exc
    merged = [d for d in decisions if d.kind in ("dense", "removed", "factored")]
    flops_before = int(sum(graph.flops.values()))
    result = OnnxContraction(
        model=compact, decisions=decisions, input_shapes=shapes,
        params_before=_param_count(model), params_after=_param_count(compact),
        flops_before=flops_before, flops_after=flops_before - sum(d.flops_before - d.flops_after for d in merged),
        transposes_cancelled=cancelled, warnings=[w for d in decisions for w in d.warnings], every_size=every_size,
    )
    with stages("check"):
        if check:
            result.check_feeds = check_feeds(specs, shapes)
            result.max_abs_error, result.max_rel_error, result.source_rel_error = measure_onnx_errors(
                source, compact, result.check_feeds)
        if rank is not None:
            result.truncation = truncation_section(ranked, rank, rank_multiple, untruncated, compact,
                                                   result.check_feeds or check_feeds(specs, shapes))
        elif check and result.max_rel_error > max(EXACT_REL, SOURCE_ERROR_FACTOR * result.source_rel_error):
            result.warnings.append(
                f"the compact model's error ({result.max_rel_error:.2e} of the output scale) is more than "
                f"{SOURCE_ERROR_FACTOR:g}x the source's own float32 error ({result.source_rel_error:.2e}) and above "
                f"{EXACT_REL:g}: check report.json's regions for approximate merges")
    return result


def _prepare(model: onnx.ModelProto, input_shape, outputs):
    """The source as checked (its --outputs selection), the graph as planned (layout transposes
    cancelled), its inputs, their example shapes, and every tensor's symbolic and concrete shape."""
    check_model(model, "the ONNX model")
    source = onnx.ModelProto()
    source.CopyFrom(model)
    select_outputs(source, outputs)
    prepared = onnx.ModelProto()
    prepared.CopyFrom(source)  # the check runs the source as given, transposes and all
    prepared, cancelled = cancel_transposes(prepared)
    specs = graph_inputs(prepared)
    if not specs:
        raise BadInputError("the ONNX graph has no inputs to feed")
    shapes = example_shapes(specs, tuple(input_shape) if input_shape else None, batch=CHECK_BATCH)
    symbolic = symbolic_shapes(prepared)
    concrete = concrete_shapes(prepared, shapes)
    if has_unknown(symbolic):  # e.g. flatten written as Reshape(x, Concat(Shape(x)[0], -1))
        other = {s.name: (shapes[s.name][0] + 1, *shapes[s.name][1:]) if not isinstance(s.dims[0], int)
                 else shapes[s.name] for s in specs}
        if other != shapes:
            first = specs[0]
            batch = (first.dims[0], shapes[first.name][0], other[first.name][0]) if isinstance(first.dims[0], str) \
                else None
            symbolic = settle_unknown(symbolic, concrete, concrete_shapes(prepared, other), batch)
    every_size = any(not isinstance(d, int) for s in specs for d in s.dims[2:])
    if every_size and input_shape is None:
        raise BadInputError(f"input {specs[0].name!r} has a symbolic size {list(specs[0].dims)}; pass --input-shape "
                            "N,C,H,W to plan at (merges are kept only where they hold at every size)")
    return prepared, source, specs, shapes, symbolic, concrete, every_size, cancelled


def truncation_section(ranked, rule: str, multiple: int, untruncated: onnx.ModelProto, truncated: onnx.ModelProto,
                       feeds: dict[str, np.ndarray]) -> dict:
    """The --rank report section, in the PyTorch path's schema: per layer the ranks and costs, and
    the truncated model (ONNX Runtime) against the untruncated compact model in float64."""
    from compactify.targets.onnx_io import run_ort
    from compactify.converter.lowrank.rank_rules import parse_rank_rule
    from compactify.measure.metrics import compare
    from compactify.measure.onnx_float64 import Float64Reference

    reference = Float64Reference(untruncated).run(feeds)
    max_abs = max_rel = 0.0
    for i, (g, r) in enumerate(zip(run_ort(truncated, feeds), reference)):
        c = compare(g, r, name=f"output{i}")
        max_abs, max_rel = max(max_abs, c.max_abs), max(max_rel, c.scale_rel)
    return {
        "rule": parse_rank_rule(rule).text,
        "multiple": multiple,
        "cost": "flops",
        "layers": ranked.rows,
        "pruning": [],
        "pruning_limits": "all-zero units are not removed from ONNX sources (pruning runs on PyTorch sources)",
        "params_untruncated": ranked.params_untruncated,
        "params_pruned": ranked.params_untruncated,
        "params_truncated": ranked.params_truncated,
        "flops_untruncated": ranked.flops_untruncated,
        "flops_pruned": ranked.flops_untruncated,
        "flops_truncated": ranked.flops_truncated,
        "flops_ratio": ranked.flops_truncated / ranked.flops_untruncated if ranked.flops_untruncated else 1.0,
        "flops_ratio_of_pruned": ranked.flops_truncated / ranked.flops_untruncated if ranked.flops_untruncated else 1.0,
        "output_error": {
            "max_abs": max_abs, "max_rel": max_rel, "inputs": f"{len(feeds)} seeded N(0,1) input(s)",
            "dtype": "float32 (ONNX Runtime) vs float64 (onnx.reference)",
            "definition": "compact.onnx with --rank vs the contracted model without it, on the check inputs; "
                          "max_rel = max|truncated - untruncated| / max|untruncated|",
        },
    }


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


def measure_onnx_errors(source: onnx.ModelProto, compact: onnx.ModelProto,
                        feeds: dict[str, np.ndarray]) -> tuple[float, float, float]:
    """``(max_abs, max_rel)`` of the compact model on ONNX Runtime against the source evaluated
    in float64, and the source's own float32 error on the same inputs."""
    from compactify.targets.onnx_io import run_ort
    from compactify.measure.metrics import compare
    from compactify.measure.onnx_float64 import Float64Reference
    try:
        reference = Float64Reference(source).run(feeds)
    except CompactifyError:
        raise
    except Exception as exc:
        raise CompactifyError(f"the source model does not run in float64 with onnx.reference: {short_error(exc)}") from exc
    try:
        got, baseline = run_ort(compact, feeds), run_ort(source, feeds)
    except Exception as exc:
        raise CompactifyError(f"ONNX Runtime cannot run the model: {short_error(exc)}") from exc
    max_abs = max_rel = source_rel = 0.0
    for i, (g, b, r) in enumerate(zip(got, baseline, reference)):
        if np.asarray(r).dtype.itemsize < 4:
            continue  # an output the graph itself casts to float16 (see low_precision_outputs)
        c = compare(g, r, name=f"output{i}")
        max_abs, max_rel = max(max_abs, c.max_abs), max(max_rel, c.scale_rel)
        source_rel = max(source_rel, compare(b, r, name=f"output{i}").scale_rel)
    return max_abs, max_rel, source_rel


def low_precision_outputs(model: onnx.ModelProto) -> list[str]:
    """Outputs the graph itself makes float16 or bfloat16: the compact model's float32 rounding
    differs from the source's, so these can differ by one unit in their last place; they are
    judged with float16 tolerances, not with the float32 bar."""
    low = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return [o.name for o in model.graph.output if o.type.tensor_type.elem_type in low]


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


def _param_count(model: onnx.ModelProto) -> int:
    """Elements of the stored float weights (initializers and Constant nodes)."""
    total = 0
    float_types = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    for t in model.graph.initializer:
        if t.data_type in float_types:
            total += math.prod(t.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in float_types:
                    total += math.prod(attr.t.dims)
    return total


# ---------------------------------------------------------------------------------------
# Files


def check_onnx_options(options) -> None:
    for name, what in _NOT_FOR_ONNX.items():
        if getattr(options, name, None):
            raise BadInputError(f"{what} does not apply to an ONNX source")
    if options.rank and options.cost != "flops":
        raise BadInputError("--cost latency times factored layers in PyTorch, for PyTorch sources only; an ONNX "
                            "source is factored by FLOPs (--cost flops)")
    if not options.onnx:
        raise BadInputError("--no-onnx: an ONNX source converts to compact.onnx; drop --no-onnx")
    if options.static:
        raise BadInputError("--static: an ONNX source keeps the batch dimension its file states; drop --static")


def convert_onnx_file(path: str | Path, folder: Path, options, stages: Stages | None = None) -> dict:
    """Convert ``path`` into ``folder`` (a temporary folder the caller renames at the end)."""
    stages = stages or silent()
    path = Path(path)
    with stages("load"):
        model = read_onnx(path)
    result = contract_onnx(model, allow_approximate=options.allow_approximate, input_shape=options.input_shape,
                           outputs=options.outputs, rank=options.rank, rank_multiple=options.rank_multiple,
                           stages=stages)
    for w in result.warnings:
        warnings.warn(w, stacklevel=2)
    report = onnx_report(path, model, options, result)
    with stages("export"):
        report.update(write_artifacts(result, report, options, folder))
    return report


def write_artifacts(result: OnnxContraction, report: dict, options, folder: Path) -> dict:
    import json

    from compactify.converter.export.derived import write_engine, write_fp16
    from compactify.targets.onnx_io import save_onnx
    from compactify.targets.onnx_simplify import simplify_checked

    compact = result.model
    meta = {
        "compactify.version": __version__,
        "compactify.source_sha256": report["source"]["sha256"],
        "compactify.contraction": json.dumps(result.summary()),
    }
    existing = {p.key for p in compact.metadata_props}
    for key, value in meta.items():
        if key not in existing:
            compact.metadata_props.add(key=key, value=value)
    added: dict = {"onnx": {"exporter": "compactify.onnx_rewrite", "opset": report["opset"],
                            "simplified": False, "nodes_before": len(result.model.graph.node)}}
    if options.simplify:
        compact, diff = simplify_checked(compact, [result.check_feeds])
        added["onnx"].update(simplified=True, simplify_max_abs_diff=diff)
    added["onnx"]["nodes_after"] = len(compact.graph.node)
    save_onnx(compact, folder / "compact.onnx", force=True)
    artifacts = {"onnx": "compact.onnx"}
    engine_source = folder / "compact.onnx"
    if options.fp16:
        added["onnx_fp16"] = write_fp16(folder, artifacts)
        engine_source = folder / artifacts["onnx_fp16"]
    if options.trt:
        added["engine"] = write_engine(engine_source, folder, options, artifacts)
    added["artifacts"] = artifacts
    return added


def onnx_report(path: Path, model: onnx.ModelProto, options, result: OnnxContraction) -> dict:
    from compactify.converter.frontends.onnx.read import default_opset
    from compactify.converter.report import result_fields

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p) or "unknown producer"
    first = next(iter(result.input_shapes.values()))
    return {
        "compactify_version": __version__,
        "source": {
            "checkpoint": str(path.resolve()),
            "sha256": sha,
            "format": "onnx",
            "arch": f"ONNX graph ({producer})",
            "arch_kwargs": {},
            "meta": {"producer": producer, "ir_version": model.ir_version, "opset": default_opset(model),
                     "metadata_props": {p.key: p.value for p in model.metadata_props}},
            "trust_pickle": False,
            "outputs": options.outputs,
        },
        "opset": default_opset(model),
        "input_shape": list(first),
        "input_shapes": {k: list(v) for k, v in result.input_shapes.items()},
        "input_names": list(result.input_shapes),
        "output_names": [o.name for o in result.model.graph.output],
        "allow_approximate": options.allow_approximate,
        "dynamic_hw": result.every_size,
        "exact_at": "every input size" if not result.size_notes else "the traced input size only",
        "accepts_input_size": "any the source accepts" if result.every_size or len(first) < 3 else
        "x".join(str(d) for d in first[2:]) + " (the source's own static size)",
        "transposes_cancelled": result.transposes_cancelled,
        "low_precision_outputs": low_precision_outputs(result.model),
        **result_fields(result, "compact model on ONNX Runtime (float32) vs the source ONNX graph evaluated in "
                        "float64 with onnx.reference, on seeded N(0,1) inputs; max_rel_error = max|compact - ref| / "
                        "max|ref| per output"),
    }
