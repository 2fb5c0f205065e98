"""Export a model to one self-contained ONNX file: checked, simplified, stamped, verified.

``export_onnx`` accepts a plain ``nn.Module`` or the ``torch.fx.GraphModule`` that
``torch.export``'s ``ep.module()`` returns. Which exporter runs (the torch.export-based
"dynamo" one or the TorchScript one) is decided in ``_export_with_fallback`` alone; when it
falls back, the result and a warning say why. Before anything is written, ONNX Runtime runs
the file on random inputs (batch 1 and 3 for a dynamic batch) and its outputs are compared
with the PyTorch model's, and again after onnxsim, so a file that computes something else
never reaches the disk.

``torch_to_onnx`` is the conversion's fx -> ONNX back-end: the same export and check, unsimplified
and unwritten, for the onnx target to simplify and write.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import helper

from compactify.converter.backends import fx_onnx
from compactify.converter.frontends.fx.capture import quiet_torch_logs
from compactify.errors import BadInputError, CompactifyError, VerificationError
from compactify.measure.metrics import relative_error
from compactify.targets.base import OnnxGraph
from compactify.targets.onnx_io import check_onnx, run_ort_feeds, save_onnx, short_error
from compactify.targets.onnx_simplify import simplify
from compactify.tensors import flatten_outputs

MIN_OPSET = 18
EXPORTERS = ("auto", "fx", "dynamo", "torchscript")
BATCH_DIM_NAME = "batch"
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class OnnxExportResult:
    path: Path | None  # where export_onnx wrote it
    exporter: str  # "fx" (backends.fx_onnx, the graph written op by op), "dynamo" (torch.export-based) or "torchscript"
    fallback_reason: str | None  # why the preferred exporter did not run, None when it did
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    simplified: bool
    simplify_max_abs_diff: float | None  # ORT outputs before vs after onnxsim (None: only the final file was run)
    nodes_before: int  # nodes as exported
    nodes_after: int  # nodes in the written file
    max_abs_diff: float  # ORT vs the PyTorch model on the check inputs
    max_rel_diff: float
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = None if self.path is None else str(self.path)
        return out


# --------------------------------------------------------------------------- export


def export_onnx(
    model: torch.nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
    *,
    force: bool = True,
    **kwargs: Any,
) -> OnnxExportResult:
    """Write ``model`` to ``path`` as ONNX and return what was done (``export_model`` says how)."""
    path = Path(path)
    proto, result = export_model(model, example_input, **kwargs)
    result.path = path
    save_onnx(proto, path, force)
    return result


def torch_to_onnx(model: torch.nn.Module, example: torch.Tensor, input_names: Sequence[str],
                  output_names: Sequence[str], metadata: Mapping[str, Any], *, dynamic_batch: bool = True) -> OnnxGraph:
    """The compact network as an unsimplified ONNX model checked against PyTorch on ONNX Runtime, and
    report.json's ``onnx`` entry: the fx -> ONNX back-end of a conversion (the onnx target simplifies
    and writes it)."""
    proto, result = export_model(model, example, input_names=input_names, output_names=output_names,
                                 dynamic_batch=dynamic_batch, simplify=False, metadata=metadata)
    return OnnxGraph(proto, {
        "exporter": result.exporter, "fallback_reason": result.fallback_reason, "opset": result.opset,
        "dynamic_batch": result.dynamic_batch, "nodes_before": result.nodes_before,
        "max_abs_diff_vs_torch": result.max_abs_diff, "max_rel_diff_vs_torch": result.max_rel_diff,
        "warnings": result.warnings})


def export_model(
    model: torch.nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    *,
    input_names: Sequence[str] = ("x",),
    output_names: Sequence[str] | None = None,
    opset: int = MIN_OPSET,
    dynamic_batch: bool = True,
    simplify: bool = True,
    metadata: Mapping[str, Any] | None = None,
    exporter: str = "auto",
    check_atol: float = 1e-4,
    check_rtol: float = 1e-3,
) -> tuple[onnx.ModelProto, OnnxExportResult]:
    """``model`` as ONNX, checked on ONNX Runtime against PyTorch, and what was done.

    ``example_input`` fixes every dimension except the batch (dim 0), which stays symbolic
    ("batch") unless ``dynamic_batch=False``. ``metadata`` values that are not strings are
    stored as JSON. ``exporter`` is "auto" (torch.export-based, TorchScript as fallback),
    "dynamo" or "torchscript". Raises VerificationError when ONNX Runtime disagrees with
    PyTorch beyond ``|a - b| <= check_atol + check_rtol * |b|``, or when onnxsim changed the
    outputs.
    """
    if exporter not in EXPORTERS:
        raise BadInputError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    if opset < MIN_OPSET:
        raise BadInputError(f"opset {opset} is too old; compactify exports opset {MIN_OPSET} or newer")
    args = _as_args(example_input)
    input_names = list(input_names)
    if len(input_names) != len(args):
        raise BadInputError(f"{len(args)} example input(s) but {len(input_names)} input name(s) {input_names}")
    if len(set(input_names)) != len(input_names):
        raise BadInputError(f"input names must be distinct, got {input_names}")

    module = _exportable(model)
    device = _module_device(module)
    args = tuple(a.to(device) for a in args)
    # The PyTorch outputs the file is checked against; the first feed is the example itself, whose
    # outputs also say how many there are.
    feeds = _check_feeds(args, input_names, dynamic_batch)
    with _eval_mode(module), torch.no_grad():
        torch_outs = [flatten_outputs(module(*(torch.from_numpy(f[n]).to(device) for n in input_names)), "ONNX export")
                      for f in feeds]
    torch_np = [[t.detach().cpu().numpy() for t in outs] for outs in torch_outs]
    output_names = _output_names(output_names, len(torch_np[0]), input_names)
    notes: list[str] = []

    trace_args = _trace_args(args) if dynamic_batch else args
    with _eval_mode(module), torch.no_grad():
        proto, used, fallback_reason = _export_with_fallback(
            module, trace_args, input_names, output_names, opset, dynamic_batch, exporter
        )
    if fallback_reason and "exporter failed" in fallback_reason:
        # The fx writer leaving an op to torch.onnx.export is the ordinary path for such graphs
        # (report.json's onnx.exporter and fallback_reason say it); a torch exporter failing is news.
        msg = f"ONNX export used the {used} exporter because {fallback_reason}"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    actual_opset = _default_opset(proto)
    if actual_opset < MIN_OPSET:
        raise CompactifyError(f"the {used} exporter wrote opset {actual_opset}, older than the {MIN_OPSET} asked for")
    check_onnx(proto, "exported")

    # Checked once: the file that will be written, against PyTorch. Only when that fails does the
    # unsimplified model run too, to say whether the exporter or onnxsim is at fault.
    nodes_before = len(proto.graph.node)
    exported = proto
    if simplify:
        proto = _simplify(exported)  # checked by onnx.checker there
    ort_np = run_ort_feeds(proto, feeds)
    max_abs, max_rel, ok = _compare_runs(ort_np, torch_np, check_atol, check_rtol)
    simplify_diff: float | None = None
    if not ok and simplify:
        plain_np = run_ort_feeds(exported, feeds)
        plain_abs, plain_rel, plain_ok = _compare_runs(plain_np, torch_np, check_atol, check_rtol)
        if plain_ok:
            simplify_diff, simp_rel, _ = _compare_runs(ort_np, plain_np, check_atol, check_rtol)
            raise VerificationError(
                f"onnxsim changed the model's outputs (max abs diff {simplify_diff:.3g}, max rel diff {simp_rel:.3g}); "
                "export again with --no-simplify"
            )
        max_abs, max_rel = plain_abs, plain_rel
    if not ok:
        other = {"fx": "dynamo", "dynamo": "torchscript"}.get(used, "dynamo")
        raise VerificationError(
            f"ONNX Runtime disagrees with PyTorch on the {used}-exported model: max abs diff {max_abs:.3g}, "
            f"max rel diff {max_rel:.3g} (atol {check_atol:g}, rtol {check_rtol:g})"
            + ("" if exporter != "auto" else f"; export_onnx(..., exporter=\"{other}\") "
               "tries another exporter, and `compactify convert --no-onnx` skips ONNX")
        )

    props = {"compactify.exporter": used, "compactify.dynamic_batch": str(bool(dynamic_batch)).lower()}
    props.update(_string_props(metadata or {}))
    helper.set_model_props(proto, props)
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise CompactifyError("the ONNX model is larger than 2 GiB and cannot be a single self-contained file")
    return proto, OnnxExportResult(
        path=None,
        exporter=used,
        fallback_reason=fallback_reason,
        opset=actual_opset,
        input_names=input_names,
        output_names=list(output_names),
        dynamic_batch=dynamic_batch,
        simplified=simplify,
        simplify_max_abs_diff=simplify_diff,
        nodes_before=nodes_before,
        nodes_after=len(proto.graph.node),
        max_abs_diff=max_abs,
        max_rel_diff=max_rel,
        metadata=props,
        warnings=notes,
    )


def _export_with_fallback(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int,
    dynamic_batch: bool,
    exporter: str,
) -> tuple[onnx.ModelProto, str, str | None]:
    """The one place that picks the exporter: the fx writer, then torch.export-based, then TorchScript.

    The converter hands us a captured fx graph of a few kinds of ops, which ``fx_onnx`` writes
    directly in a fraction of the time torch.onnx.export takes to re-export and decompose it;
    a graph with an op it does not write (or a plain nn.Module) goes to the dynamo exporter,
    which reads what torch.export captures; the TorchScript tracer still handles models
    torch.export refuses (data-dependent Python control flow that is constant in practice). An
    exporter that "succeeds" but pins a batch dimension we asked to be dynamic counts as failed.
    """
    order = {"auto": ("fx", "dynamo", "torchscript"), "fx": ("fx",), "dynamo": ("dynamo",),
             "torchscript": ("torchscript",)}[exporter]
    failures: list[str] = []
    for name in order:
        if name == "fx":
            if not isinstance(module, torch.fx.GraphModule):
                if exporter == "fx":
                    raise BadInputError("the fx exporter writes torch.fx GraphModules; this is a "
                                        f"{type(module).__name__}")
                continue  # an eager module has no graph to write: not a fallback
            try:
                proto = fx_onnx.to_onnx(module, args, input_names, output_names, opset, dynamic_batch)
                if dynamic_batch:
                    _require_symbolic_batch(proto)
                return proto, name, ("; ".join(failures) or None)
            except fx_onnx.Unsupported as exc:
                failures.append(f"the fx writer does not write {exc}")
                continue
            except Exception as exc:  # a fault of the writer: torch.onnx.export may still manage, and the warning says so
                failures.append(f"the fx exporter failed: {short_error(exc)}")
                continue
        try:
            with tempfile.TemporaryDirectory(prefix="compactify-onnx-") as tmp:
                target = Path(tmp) / f"{name}.onnx"
                with _quiet():
                    if name == "dynamo":
                        _export_dynamo(module, args, target, input_names, output_names, opset, dynamic_batch)
                    else:
                        _export_torchscript(module, args, target, input_names, output_names, opset, dynamic_batch)
                proto = onnx.load(str(target), load_external_data=True)
            if dynamic_batch:
                _require_symbolic_batch(proto)
            return proto, name, ("; ".join(failures) or None)
        except Exception as exc:  # exporters raise anything from deep inside torch; we report and try the next
            failures.append(f"the {name} exporter failed: {short_error(exc)}")
    raise CompactifyError("could not export the model to ONNX: " + "; ".join(failures))


_TORCHLIB_OPS: list | None = None


@contextlib.contextmanager
def _torchlib_cached() -> Iterator[None]:
    """Reuse the aten->ONNX function table across exports in this process.

    torch.onnx's dynamo exporter rebuilds it on every call by re-parsing the source of ~500
    onnxscript functions, which costs seconds per export; the table is read-only, so one copy
    serves all exports. If the private hook moves in another torch version we just skip it.
    """
    global _TORCHLIB_OPS
    try:
        from torch.onnx._internal.exporter import _registration

        apis = _registration.onnxscript_apis
        original = apis.get_torchlib_ops
    except (ImportError, AttributeError):
        yield
        return
    if _TORCHLIB_OPS is None:
        _TORCHLIB_OPS = list(original())
    apis.get_torchlib_ops = lambda: list(_TORCHLIB_OPS)
    try:
        yield
    finally:
        apis.get_torchlib_ops = original


def _export_dynamo(module, args, target, input_names, output_names, opset, dynamic_batch) -> None:
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim(BATCH_DIM_NAME, min=1)
        dynamic_shapes = tuple({0: batch} for _ in args)
    with _torchlib_cached():
        _dynamo_export_call(module, args, target, input_names, output_names, opset, dynamic_shapes)


def _dynamo_export_call(module, args, target, input_names, output_names, opset, dynamic_shapes) -> None:
    torch.onnx.export(
        module,
        args,
        str(target),
        dynamo=True,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        dynamic_shapes=dynamic_shapes,
        external_data=False,  # one self-contained file; our models are far below the 2 GiB protobuf limit
        optimize=True,
        verbose=False,
        report=False,
    )


class _CallThrough(torch.nn.Module):
    """The TorchScript exporter treats anything with a ``.graph`` as a ScriptModule; fx GraphModules have one."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        return self.inner(*args)


def _export_torchscript(module, args, target, input_names, output_names, opset, dynamic_batch) -> None:
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: BATCH_DIM_NAME} for name in [*input_names, *output_names]}
    torch.onnx.export(
        _CallThrough(module).eval(),
        args,
        str(target),
        dynamo=False,
        input_names=input_names,
        output_names=output_names,
        opset_version=opset,
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
    )


def _require_symbolic_batch(proto: onnx.ModelProto) -> None:
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            raise CompactifyError(f"it fixed the batch dimension of input {value.name!r} to {dims[0].dim_value}")


def _exportable(model: Any) -> torch.nn.Module:
    """A module both exporters accept, without touching the caller's object.

    ``ep.module()`` returns a GraphModule whose train()/eval() raise and which carries a
    ``_guards_fn`` call asserting the shapes it was captured with (a batch of 1 pins the
    batch). Re-wrapping its graph in a plain GraphModule, minus that call, keeps the same
    aten ops and parameters and lets the exporters trace a symbolic batch; the ONNX
    Runtime check below catches a graph that really depended on that batch size.
    """
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    if isinstance(model, torch.fx.GraphModule):
        with warnings.catch_warnings():  # copying the pytree specs trips a torch-internal FutureWarning
            warnings.simplefilter("ignore", FutureWarning)
            graph = copy.deepcopy(model.graph)
        for node in list(graph.nodes):
            if node.op == "call_module" and str(node.target) == "_guards_fn":
                graph.erase_node(node)
        graph.lint()
        return torch.fx.GraphModule(model, graph)
    if not isinstance(model, torch.nn.Module):
        raise BadInputError(f"cannot export a {type(model).__name__}; pass an nn.Module or a torch.export GraphModule")
    return model


@contextlib.contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = [(m, m.training) for m in module.modules()]
    try:
        module.eval()
    except NotImplementedError:  # exported GraphModules refuse eval(); their ops are already in eval form
        pass
    try:
        yield
    finally:
        for m, flag in was_training:
            m.training = flag


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Keep the exporters' progress prints, deprecation notices and retry logs off the user's terminal."""
    with warnings.catch_warnings(), quiet_torch_logs("onnxscript"):
        warnings.simplefilter("ignore")
        yield


def _as_args(example_input) -> tuple[torch.Tensor, ...]:
    args = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    if not args or not all(isinstance(a, torch.Tensor) for a in args):
        raise BadInputError("example_input must be a tensor or a sequence of tensors")
    for a in args:
        if a.dtype != torch.float32:
            raise BadInputError(f"example inputs must be float32 (got {a.dtype}); export the float32 model")
        if a.dim() == 0 or a.shape[0] < 1:
            raise BadInputError(f"example input of shape {tuple(a.shape)} has no batch dimension")
    return tuple(a.detach() for a in args)


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _trace_args(args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    # torch.export specialises a size-1 dimension to the constant 1, so trace with batch 2.
    return tuple(torch.cat([a, a]) if a.shape[0] == 1 else a for a in args)


def _output_names(names: Sequence[str] | None, count: int, input_names: list[str]) -> list[str]:
    if names is None:
        names = ["y"] if count == 1 else [f"y{i}" for i in range(count)]
    names = list(names)
    if len(names) != count:
        raise BadInputError(f"the model has {count} output(s) but {len(names)} output name(s) were given: {names}")
    if len(set(names)) != count or set(names) & set(input_names):
        raise BadInputError(f"output names {names} must be distinct and differ from the input names {input_names}")
    return names


def _check_feeds(args, input_names, dynamic_batch) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    batches = [1, 3] if dynamic_batch else [args[0].shape[0]]
    feeds = [{n: a.cpu().numpy() for n, a in zip(input_names, args)}]
    for b in batches:
        feeds.append({n: rng.standard_normal((b, *a.shape[1:])).astype(np.float32) for n, a in zip(input_names, args)})
    return feeds


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    return simplify(proto)  # a module-level name, so that tests can stand a faulty onnxsim in its place


def _compare_runs(got_runs, ref_runs, atol: float, rtol: float) -> tuple[float, float, bool]:
    max_abs = max_rel = 0.0
    ok = True
    for got, ref in zip(got_runs, ref_runs):
        if len(got) != len(ref):
            return float("inf"), float("inf"), False
        for g, r in zip(got, ref):
            g = np.asarray(g, dtype=np.float64)
            r = np.asarray(r, dtype=np.float64)
            if g.shape != r.shape:
                return float("inf"), float("inf"), False
            if g.size == 0:
                continue
            err, rel = relative_error(g, r)
            if not np.isfinite(err):
                return float("inf"), float("inf"), False
            # Relative to the output's scale, as every report here: near-zero entries of a deep
            # float32 net differ between runtimes by rounding alone and prove nothing.
            scale = max(float(np.abs(r).max()), np.finfo(np.float32).tiny)
            max_abs, max_rel = max(max_abs, err), max(max_rel, rel)
            ok = ok and err <= atol + rtol * scale
    return max_abs, max_rel, ok


def _string_props(metadata: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in metadata.items():
        out[str(key)] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return out


def _default_opset(proto: onnx.ModelProto) -> int:
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise CompactifyError("the exported ONNX model declares no default-domain opset")
