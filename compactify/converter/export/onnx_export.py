"""Export a model to one self-contained ONNX file: checked, simplified, stamped, verified.

``export_onnx`` accepts a plain ``nn.Module`` or the ``torch.fx.GraphModule`` that
``torch.export``'s ``ep.module()`` returns. Which exporter runs (the torch.export-based
"dynamo" one or the TorchScript one) is decided in ``_export_with_fallback`` alone; when it
falls back, the result and a warning say why. Before anything is written, ONNX Runtime runs
the file on random inputs (batch 1 and 3 for a dynamic batch) and its outputs are compared
with the PyTorch model's, and again after onnxsim, so a file that computes something else
never reaches the disk.

``to_fp16`` turns an fp32 ONNX file into an fp16 one for GPU targets (TensorRT 11 takes its
precision from the graph, not from builder flags), keeping fp32 inputs and outputs by default.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from compactify.errors import BadInputError, CompactifyError, MissingRuntimeError, VerificationError
from compactify.outputs import atomic_file
from compactify.tensors import flatten_outputs

MIN_OPSET = 18
EXPORTERS = ("auto", "dynamo", "torchscript")
BATCH_DIM_NAME = "batch"
_PROTOBUF_LIMIT = 2**31 - 1
# Loggers that print pages of progress or tracebacks of attempts the exporter itself recovers from.
_NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx.experimental.symbolic_shapes", "onnxscript")


@dataclass
class OnnxExportResult:
    path: Path
    exporter: str  # "dynamo" (torch.export-based) or "torchscript"
    fallback_reason: str | None  # why the preferred exporter did not run, None when it did
    opset: int
    input_names: list[str]
    output_names: list[str]
    dynamic_batch: bool
    simplified: bool
    simplify_max_abs_diff: float | None  # ORT outputs before vs after onnxsim
    nodes_before: int  # nodes as exported
    nodes_after: int  # nodes in the written file
    max_abs_diff: float  # ORT vs the PyTorch model on the check inputs
    max_rel_diff: float
    metadata: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


@dataclass
class Fp16Result:
    path: Path
    keep_io_types: bool
    converted_initializers: int
    clamped_values: int  # |w| > 65504, clamped to the largest finite fp16
    flushed_values: int  # nonzero weights that became 0 in fp16
    kept_fp32_nodes: list[str]  # ops whose float inputs are parameters, run in fp32 between casts
    max_abs_diff: float | None  # fp16 vs fp32 model in ONNX Runtime on random inputs
    max_rel_diff: float | None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        return out


# --------------------------------------------------------------------------- export


def export_onnx(
    model: torch.nn.Module,
    example_input: torch.Tensor | Sequence[torch.Tensor],
    path: str | Path,
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
    force: bool = True,
) -> OnnxExportResult:
    """Write ``model`` to ``path`` as ONNX and return what was done.

    ``example_input`` fixes every dimension except the batch (dim 0), which stays symbolic
    ("batch") unless ``dynamic_batch=False``. ``metadata`` values that are not strings are
    stored as JSON. ``exporter`` is "auto" (torch.export-based, TorchScript as fallback),
    "dynamo" or "torchscript". Raises VerificationError when ONNX Runtime disagrees with
    PyTorch beyond ``|a - b| <= check_atol + check_rtol * |b|``, or when onnxsim changed the
    outputs.
    """
    path = Path(path)
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
    with _eval_mode(module), torch.no_grad():
        reference_out = flatten_outputs(module(*args), "ONNX export")
    output_names = _output_names(output_names, len(reference_out), input_names)
    notes: list[str] = []

    trace_args = _trace_args(args) if dynamic_batch else args
    with _eval_mode(module), torch.no_grad():
        proto, used, fallback_reason = _export_with_fallback(
            module, trace_args, input_names, output_names, opset, dynamic_batch, exporter
        )
    if fallback_reason:
        msg = f"ONNX export used the {used} exporter because {fallback_reason}"
        warnings.warn(msg, stacklevel=2)
        notes.append(msg)
    actual_opset = _default_opset(proto)
    if actual_opset < MIN_OPSET:
        raise CompactifyError(f"the {used} exporter wrote opset {actual_opset}, older than the {MIN_OPSET} asked for")
    _check(proto, "exported")

    feeds = _check_feeds(args, input_names, dynamic_batch)
    with _eval_mode(module), torch.no_grad():
        torch_outs = [flatten_outputs(module(*(torch.from_numpy(f[n]).to(device) for n in input_names)), "ONNX export")
                      for f in feeds]
    torch_np = [[t.detach().cpu().numpy() for t in outs] for outs in torch_outs]
    ort_np = [_run_ort(proto, f) for f in feeds]
    max_abs, max_rel, ok = _compare_runs(ort_np, torch_np, check_atol, check_rtol)
    if not ok:
        raise VerificationError(
            f"ONNX Runtime disagrees with PyTorch on the {used}-exported model: max abs diff {max_abs:.3g}, "
            f"max rel diff {max_rel:.3g} (atol {check_atol:g}, rtol {check_rtol:g})"
            + ("" if exporter != "auto" else f"; export_onnx(..., exporter=\"{'torchscript' if used == 'dynamo' else 'dynamo'}\") "
               "tries the other exporter, and `compactify convert --no-onnx` skips ONNX")
        )

    nodes_before = len(proto.graph.node)
    simplify_diff: float | None = None
    if simplify:
        simplified = _simplify(proto)
        _check(simplified, "simplified")
        simp_np = [_run_ort(simplified, f) for f in feeds]
        simplify_diff, simp_rel, ok = _compare_runs(simp_np, ort_np, check_atol, check_rtol)
        if not ok:
            raise VerificationError(
                f"onnxsim changed the model's outputs (max abs diff {simplify_diff:.3g}, max rel diff {simp_rel:.3g}); "
                "export again with --no-simplify"
            )
        proto = simplified
        max_abs, max_rel, _ = _compare_runs(simp_np, torch_np, check_atol, check_rtol)

    props = {"compactify.exporter": used, "compactify.dynamic_batch": str(bool(dynamic_batch)).lower()}
    props.update(_string_props(metadata or {}))
    helper.set_model_props(proto, props)
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise CompactifyError("the ONNX model is larger than 2 GiB and cannot be a single self-contained file")
    _save(proto, path, force)
    return OnnxExportResult(
        path=path,
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
    """The one place that picks the exporter: torch.export-based first, TorchScript as fallback.

    The dynamo exporter reads the graph torch.export captures, which is what the converter
    hands us, so it goes first; the TorchScript tracer still handles models torch.export
    refuses (data-dependent Python control flow that is constant in practice). An exporter
    that "succeeds" but pins a batch dimension we asked to be dynamic counts as failed.
    """
    order = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}[exporter]
    failures: list[str] = []
    for name in order:
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
            failures.append(f"the {name} exporter failed: {_short(exc)}")
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
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _short(exc: BaseException) -> str:
    """The innermost cause's first line: torch wraps export errors in pages of generic advice."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    return text if len(text) <= 240 else text[:237] + "..."


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


def _check(proto: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError / others
        raise CompactifyError(f"the {what} ONNX model fails onnx.checker: {_short(exc)}") from exc


def _simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    try:
        import onnxsim
    except ImportError as exc:
        raise MissingRuntimeError("ONNX simplification needs onnxsim, which is not installed; pip install onnxsim or pass --no-simplify") from exc
    try:
        with _quiet():
            simplified, ok = onnxsim.simplify(copy.deepcopy(proto), check_n=0)  # we compare outputs ourselves
    except Exception as exc:
        raise CompactifyError(f"onnxsim failed: {_short(exc)}; export again with --no-simplify") from exc
    if not ok:
        raise CompactifyError("onnxsim could not validate the simplified model; export again with --no-simplify")
    return simplified


def _run_ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # check inputs are tiny; extra threads only spin on a busy machine
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


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
            err = np.abs(g - r)
            if not np.all(np.isfinite(err)):
                return float("inf"), float("inf"), False
            # Relative to the output's scale, as every report here: near-zero entries of a deep
            # float32 net differ between runtimes by rounding alone and prove nothing.
            scale = max(float(np.abs(r).max()), np.finfo(np.float32).tiny)
            max_abs = max(max_abs, float(err.max()))
            max_rel = max(max_rel, float(err.max()) / scale)
            ok = ok and bool(np.all(err <= atol + rtol * scale))
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


def _save(proto: onnx.ModelProto, path: Path, force: bool) -> None:
    with atomic_file(path, force=force) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)


# --------------------------------------------------------------------------- fp16

_FP16_MAX = float(np.finfo(np.float16).max)
# Ops whose float inputs are parameters (scales, sizes, distribution settings), not
# activations: they stay fp32, between casts, so fp16 rounding cannot change their meaning.
_KEEP_FP32_OPS = frozenset(
    {"Resize", "Upsample", "Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "RoiAlign", "NonMaxSuppression"}
)


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

    Float initializers and constants become fp16 (clamped to +-65504), Casts to float become
    casts to fp16, and with ``keep_io_types`` the graph keeps fp32 inputs and outputs with
    Cast nodes just inside. With ``check``, ONNX Runtime compares both models on random
    inputs and VerificationError is raised if the fp16 outputs are not finite or differ by
    more than ``check_rtol`` times the largest fp32 output magnitude.
    """
    onnx_path, out_path = Path(onnx_path), Path(out_path)
    source = _load_onnx(onnx_path)
    model, stats = _convert_fp16(source, keep_io_types)
    _check(model, "fp16")
    max_abs = max_rel = None
    if check:
        max_abs, max_rel = _compare_fp16(source, model, keep_io_types)
        if not (np.isfinite(max_abs) and max_rel <= check_rtol):
            raise VerificationError(
                f"the fp16 model's outputs differ from fp32 by {max_abs:.3g} ({max_rel:.3g} of the output scale, "
                f"limit {check_rtol:g}); this model is not safe to run in fp16"
            )
    _save(model, out_path, force)
    return Fp16Result(path=out_path, keep_io_types=keep_io_types, max_abs_diff=max_abs, max_rel_diff=max_rel, **stats)


def _load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise BadInputError(f"ONNX file {path} does not exist")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise BadInputError(f"{path} is not a readable ONNX model: {_short(exc)}") from exc


def _convert_fp16(source: onnx.ModelProto, keep_io_types: bool) -> tuple[onnx.ModelProto, dict[str, Any]]:
    model = copy.deepcopy(source)
    graph = model.graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
                raise BadInputError(f"fp16 conversion does not handle control flow ({node.op_type} {node.name!r} has a subgraph)")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise BadInputError(f"cannot infer the tensor types needed for fp16 conversion: {_short(exc)}") from exc
    elem: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        elem[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        elem[init.name] = init.data_type

    def is_float(name: str) -> bool:
        return bool(name) and elem.get(name) == TensorProto.FLOAT

    for node in graph.node:
        for out in node.output:
            if out and out not in elem:
                raise BadInputError(f"cannot convert to fp16: the type of tensor {out!r} ({node.op_type}) is unknown")

    def blocked(node: onnx.NodeProto) -> bool:
        return node.op_type in _KEEP_FP32_OPS or node.domain not in ("", "ai.onnx")

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    output_names = {o.name for o in graph.output}

    def only_blocked_use(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(blocked(u) for u in users) and name not in output_names

    stats = {"converted_initializers": 0, "clamped_values": 0, "flushed_values": 0, "kept_fp32_nodes": []}
    h16: dict[str, str] = {}  # tensor -> name of its fp16 version
    h32: dict[str, str] = {}  # tensor -> name of its fp32 version
    new_nodes: list[onnx.NodeProto] = []
    counter = [0]

    def cast(src: str, dst: str, to: int) -> onnx.NodeProto:
        counter[0] += 1
        return helper.make_node("Cast", [src], [dst], to=to, name=f"compactify_fp16_cast_{counter[0]}")

    def need16(name: str) -> str:
        if name not in h16:
            new_nodes.append(cast(h32[name], f"{name}__fp16", TensorProto.FLOAT16))
            h16[name] = f"{name}__fp16"
        return h16[name]

    def need32(name: str) -> str:
        if name not in h32:
            new_nodes.append(cast(h16[name], f"{name}__fp32", TensorProto.FLOAT))
            h32[name] = f"{name}__fp32"
        return h32[name]

    for value in graph.input:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            if keep_io_types:
                h32[value.name] = value.name
            else:
                value.type.tensor_type.elem_type = TensorProto.FLOAT16
                h16[value.name] = value.name

    for i, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        if only_blocked_use(init.name):
            h32[init.name] = init.name
            continue
        graph.initializer[i].CopyFrom(_tensor_to_fp16(init, stats))
        stats["converted_initializers"] += 1
        h16[init.name] = init.name

    for node in graph.node:
        if blocked(node):
            stats["kept_fp32_nodes"].append(f"{node.op_type}:{node.name}")
            for k, name in enumerate(node.input):
                if is_float(name):
                    node.input[k] = need32(name)
            new_nodes.append(node)
            for name in node.output:
                if is_float(name):
                    h32[name] = name
            continue
        if node.op_type == "Constant" and is_float(node.output[0]):
            if only_blocked_use(node.output[0]):
                h32[node.output[0]] = node.output[0]
                new_nodes.append(node)
                continue
            _constant_to_fp16(node, stats)
        for k, name in enumerate(node.input):
            if is_float(name):
                node.input[k] = need16(name)
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        if node.op_type == "ConstantOfShape":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(_tensor_to_fp16(attr.t, stats))
        new_nodes.append(node)
        for name in node.output:
            if is_float(name):
                h16[name] = name

    # Graph outputs: the tensor named like the output must have the io type.
    renames: dict[str, str] = {}
    tail: list[onnx.NodeProto] = []
    for value in graph.output:
        name = value.name
        if value.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        want32 = keep_io_types
        if want32 and h32.get(name) == name or not want32 and h16.get(name) == name:
            pass
        else:
            inner = f"{name}__{'fp16' if want32 else 'fp32'}_out"
            renames[name] = inner
            tail.append(cast(inner, name, TensorProto.FLOAT if want32 else TensorProto.FLOAT16))
        if not want32:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    if renames:
        for node in new_nodes:
            for k, name in enumerate(node.input):
                node.input[k] = renames.get(name, name)
            for k, name in enumerate(node.output):
                node.output[k] = renames.get(name, name)

    del graph.node[:]
    graph.node.extend(new_nodes + tail)
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:
        raise CompactifyError(f"the fp16 graph is not type-consistent: {_short(exc)}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    props["compactify.precision"] = "fp16" + (" (fp32 io)" if keep_io_types else "")
    helper.set_model_props(model, props)
    return model, stats


def _tensor_to_fp16(tensor: onnx.TensorProto, stats: dict[str, Any]) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor).astype(np.float64)
    clamped = np.clip(values, -_FP16_MAX, _FP16_MAX)
    stats["clamped_values"] += int(np.count_nonzero(clamped != values))
    half = clamped.astype(np.float16)
    stats["flushed_values"] += int(np.count_nonzero((half == 0) & (values != 0)))
    return numpy_helper.from_array(half, tensor.name)


def _constant_to_fp16(node: onnx.NodeProto, stats: dict[str, Any]) -> None:
    for attr in list(node.attribute):
        if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_tensor_to_fp16(attr.t, stats))
        elif attr.name in ("value_float", "value_floats"):
            values = np.array(attr.f if attr.name == "value_float" else list(attr.floats), dtype=np.float32)
            node.attribute.remove(attr)
            node.attribute.append(helper.make_attribute("value", _tensor_to_fp16(numpy_helper.from_array(values), stats)))


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
    max_abs = 0.0
    scale = 0.0
    for feed in _static_feeds(fp32, np.float32):
        ref = _run_ort(fp32, feed)
        feed16 = feed if keep_io_types else {k: v.astype(np.float16) for k, v in feed.items()}
        got = _run_ort(fp16, feed16)
        for g, r in zip(got, ref):
            g = np.asarray(g, dtype=np.float64)
            r = np.asarray(r, dtype=np.float64)
            if g.shape != r.shape or not np.all(np.isfinite(g)):
                return float("inf"), float("inf")
            if r.size:
                max_abs = max(max_abs, float(np.abs(g - r).max()))
                scale = max(scale, float(np.abs(r).max()))
    return max_abs, (max_abs / scale if scale > 0 else max_abs)
