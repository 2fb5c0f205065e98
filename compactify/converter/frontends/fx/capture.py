"""Capture an eval-mode model as an ATen graph with torch.export.

torch.export sees nn.Module layers and functional calls (F.conv2d, F.linear, ``x @ W``)
alike, which is what lets the converter work from the graph instead of from module types.
The batch dimension is exported as dynamic where the model allows it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import re
import traceback
import warnings

import torch
from torch import fx, nn

from compactify.converter.frontends.fx.functionalize import functionalize_inplace
from compactify.errors import BadInputError, first_line


class OutputSelector(nn.Module):
    """Keep only the declared outputs (indices into a tuple/list output, or keys of a dict)."""

    def __init__(self, model: nn.Module, keys: list[int | str]):
        super().__init__()
        self.model = model
        self.keys = list(keys)

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            out = (out,)
        picked = tuple(out[k] for k in self.keys)
        return picked[0] if len(picked) == 1 else picked


def select_outputs(model: nn.Module, spec: str | None, example: torch.Tensor) -> nn.Module:
    if not spec:
        return model
    keys: list[int | str] = [int(k) if k.strip().lstrip("-").isdigit() else k.strip() for k in spec.split(",")]
    with torch.no_grad():
        out = model(example)
    container = (out,) if isinstance(out, torch.Tensor) else out
    for k in keys:
        try:
            container[k]
        except (IndexError, KeyError, TypeError):
            raise BadInputError(f"--outputs names {k!r}, which the model's output does not have") from None
    return OutputSelector(model, keys).eval()


def check_runs(model: nn.Module, example: torch.Tensor) -> None:
    """Run once eagerly so that a shape the model rejects is reported as such."""
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # any failure here is the model refusing this input
        shape = ",".join(str(d) for d in example.shape)
        raise BadInputError(f"the model rejects input shape {shape}: {first_line(exc)}") from None


def export_program(model: nn.Module, example: torch.Tensor, dynamic_spatial: bool = False):
    """torch.export the model with a dynamic batch (and, with ``dynamic_spatial``, dynamic
    spatial sizes) where possible; one clear error otherwise."""
    model = model.eval()
    dims = range(example.dim()) if dynamic_spatial else (0,)
    dynamic = ({d: torch.export.Dim.AUTO for d in dims if d != 1},)
    try:
        with warnings.catch_warnings(), quiet_torch_logs():
            warnings.simplefilter("ignore")
            return torch.export.export(model, (example,), dynamic_shapes=dynamic, strict=False)
    except Exception as exc:  # torch.export raises many error types; all mean "cannot capture"
        raise BadInputError(f"torch.export could not capture the model: {_export_failure(exc)}") from None


def graph_module(program) -> fx.GraphModule:
    """The program as a GraphModule whose parameters are ``get_attr`` nodes."""
    unlifted = program.module(check_guards=False)
    # A plain GraphModule: the unlifted one refuses .eval()/.train(), which users will call.
    gm = fx.GraphModule(unlifted, unlifted.graph, class_name="CapturedModule")
    return gm.eval()


def capture_graph(model: nn.Module, example: torch.Tensor, dynamic_spatial: bool = False) -> fx.GraphModule:
    """The model as the graph the converter reads: captured, in-place ops made pure where no
    one can see the difference, and everything the outputs do not need removed first, so that
    an auxiliary head never splits the chain it hangs from. A graph captured at one spatial
    size holds that size in its shapes; ``dynamic_spatial`` keeps the sizes symbolic."""
    gm, _ = functionalize_inplace(graph_module(export_program(model, example, dynamic_spatial)))
    if gm.graph.eliminate_dead_code():
        gm.recompile()
    return gm


def float64_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A float64 copy of a captured graph. Code that casts (``.to(torch.float32)``, DBB's
    identity kernels) leaves dtype assertions and casts to float32 in the graph; in the copy
    they assert and cast to float64 instead."""
    ref = copy.deepcopy(gm).double()
    for node in list(ref.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
            ref.graph.erase_node(node)
        elif node.kwargs.get("dtype") is torch.float32:
            node.kwargs = {**node.kwargs, "dtype": torch.float64}
    ref.recompile()
    return ref


def _export_failure(exc: BaseException) -> str:
    """The first line of the error and, where found, the user's call that failed."""
    text = str(exc)
    where = ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)\n\s+(.+)', text)
    user = [f for f in frames if "/torch/" not in f[0]]
    if user:
        path, line, func, code = user[-1]
        where = f" (in {func} at {path}:{line}: {code.strip()})"
    else:
        tb = [f for f in traceback.extract_tb(exc.__traceback__) if "/torch/" not in f.filename]
        if tb:
            f = tb[-1]
            where = f" (in {f.name} at {f.filename}:{f.lineno})"
    return first_line(exc) + where


class _Keep(logging.Handler):
    """Keeps the records it is handed: level, logger and message (with its traceback, if any)."""

    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {self.format(record)}")


@contextlib.contextmanager
def quiet_torch_logs(*others: str):
    """Nothing torch logs or prints reaches the terminal while the block runs; the one-line error
    says what matters, and ``--debug`` shows what torch said (on the "compactify" logger, at debug
    level, once the block ends). A level on "torch" is not enough: torch puts its own stderr
    handlers on many of its loggers (``torch._subclasses.fake_tensor`` among them) with
    propagate off, and logs a failed meta kernel's traceback at error level; those handlers hold
    the stderr of import time, so redirecting sys.stderr misses them too. So every console
    handler in the "torch" logger tree is swapped for one that keeps the records; files the user
    asked for (TORCH_LOGS_OUT, TORCH_TRACE) are left alone. ``others`` names other libraries'
    loggers, which print through the root logger (or Python's last resort) otherwise."""
    keep = _Keep()
    tops = ("torch", *others)
    loggers = [logging.getLogger(name) for name in tops] + [
        logger for name, logger in list(logging.root.manager.loggerDict.items())
        if isinstance(logger, logging.Logger) and name.startswith(tuple(f"{top}." for top in tops))]
    saved = []
    for logger in loggers:
        kept = [h for h in logger.handlers if type(h) is not logging.StreamHandler]  # torch's console kind exactly
        if logger.name in tops or len(kept) < len(logger.handlers):
            saved.append((logger, logger.handlers, logger.propagate))
            logger.handlers, logger.propagate = [*kept, keep], False  # nothing goes up to the root
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        said = "\n".join([*keep.lines, out.getvalue().rstrip(), err.getvalue().rstrip()]).strip()
        if said:
            logging.getLogger("compactify").debug("torch said:\n%s", said)
