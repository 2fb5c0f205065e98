"""PyTorch eager runner: an nn.Module, a torch.export GraphModule/ExportedProgram, or a .pt2 file."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from compactify.errors import BadInputError, CompactifyError
from compactify.runtimes.base import Runner, TensorSpec, register_runner
from compactify.runtimes.devices import require_cuda
from compactify.tensors import flatten_outputs

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@register_runner
class TorchRunner(Runner):
    """Runs a copy of the model, so the caller's module keeps its device, dtype and mode.

    ``input_shape`` (one shape, or one per input; ``None`` for the batch) describes the
    inputs of a plain module, which has no declared signature; a .pt2 file or an
    ExportedProgram carries its own. With known input shapes the outputs are described by
    one probe run at load; otherwise they are known after the first ``infer``.
    """

    name = "torch"
    description = "PyTorch, cpu or cuda"
    runs_objects = True

    def __init__(
        self,
        model: torch.nn.Module | torch.export.ExportedProgram | str | Path,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        input_names: Sequence[str] | None = None,
        input_shape: Sequence[int | None] | Sequence[Sequence[int | None]] | None = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if device not in ("cpu", "cuda"):
            raise BadInputError(f"torch runner device must be cpu or cuda, got {device!r}")
        if dtype not in _DTYPES:
            raise BadInputError(f"torch runner dtype must be float32 or float64, got {dtype!r}")
        self.device = device
        self.dtype = dtype
        self._source = model
        self._input_names = list(input_names) if input_names is not None else None
        self._input_shapes = _normalise_shapes(input_shape)
        self._output_names = list(output_names) if output_names is not None else None
        self._model: torch.nn.Module | None = None
        self._in_specs: list[TensorSpec] = []
        self._out_specs: list[TensorSpec] | None = None

    def _load(self) -> None:
        if self.device == "cuda":
            require_cuda("the torch runner on cuda")
        source = self._source
        signature: list[tuple[str, tuple[int | None, ...]]] | None = None
        if isinstance(source, (str, Path)):
            source = _load_pt2(Path(source))
        if isinstance(source, torch.export.ExportedProgram):
            signature = program_inputs(source)  # a batch captured as static stays static: guards enforce it
            source = source.module()
        if not isinstance(source, torch.nn.Module):
            raise BadInputError(f"the torch runner needs an nn.Module, ExportedProgram or .pt2 file, got {type(source).__name__}")
        with warnings.catch_warnings():  # copying ep.module()'s pytree specs trips a torch-internal FutureWarning
            warnings.simplefilter("ignore", FutureWarning)
            model = copy.deepcopy(source)
        try:
            model.eval()
        except NotImplementedError:  # ep.module() refuses eval(); its graph is already in inference form
            pass
        self._model = model.to(device=self.device, dtype=_DTYPES[self.dtype])

        shapes = self._input_shapes
        names = self._input_names
        if signature is not None:
            names = names or [n for n, _ in signature]
            shapes = shapes or [s for _, s in signature]
        if names is None:
            names = ["x"] if shapes is None or len(shapes) == 1 else [f"x{i}" for i in range(len(shapes))]
        if shapes is not None and len(shapes) != len(names):
            raise BadInputError(f"{len(names)} input name(s) {names} but {len(shapes)} input shape(s)")
        self._in_specs = [TensorSpec(n, None if shapes is None else shapes[i], self.dtype) for i, n in enumerate(names)]
        self._out_specs = None
        if shapes is not None and all(d is not None for s in shapes for d in s[1:]):
            probe = {s.name: np.zeros([1 if d is None else d for d in s.shape], dtype=self.dtype) for s in self._in_specs}
            self._infer(probe)

    def _close(self) -> None:
        self._model = None

    def _input_specs(self) -> list[TensorSpec]:
        return list(self._in_specs)

    def _output_specs(self) -> list[TensorSpec]:
        if self._out_specs is None:
            raise CompactifyError("the torch runner learns its outputs from the first infer(); pass input_shape to know them at load")
        return list(self._out_specs)

    def _forward(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        assert self._model is not None
        try:
            with torch.inference_mode():
                out = self._model(*tensors)
        except AssertionError as exc:
            if "Guard failed" in str(exc):  # ep.module() checks the shapes it was captured for
                raise BadInputError(f"the exported model rejects this input: {str(exc).splitlines()[0]}") from exc
            raise
        return flatten_outputs(out, "the torch runner")

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [torch.from_numpy(feeds[s.name]).to(self.device) for s in self._in_specs]
        outs = self._forward(tensors)
        names = self._names_for(outs)
        return {n: t.detach().cpu().numpy() for n, t in zip(names, outs)}

    def _bind(self, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
        tensors = [torch.from_numpy(feeds[s.name]).to(self.device) for s in self._in_specs]
        model = self._model
        assert model is not None

        def run() -> None:
            with torch.inference_mode():
                model(*tensors)

        return run

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def _names_for(self, outs: list[torch.Tensor]) -> list[str]:
        names = self._output_names or (["y"] if len(outs) == 1 else [f"y{i}" for i in range(len(outs))])
        if len(names) != len(outs):
            raise CompactifyError(f"the model returned {len(outs)} output(s) but {len(names)} output name(s) are set: {names}")
        if self._out_specs is None:
            free_batch = any(s.shape is None or (s.shape and s.shape[0] is None) for s in self._in_specs)
            self._out_specs = [
                TensorSpec(n, (None, *t.shape[1:]) if t.dim() and free_batch else tuple(t.shape), str(t.dtype).replace("torch.", ""))
                for n, t in zip(names, outs)
            ]
        return names


def _normalise_shapes(shape: Any) -> list[tuple[int | None, ...]] | None:
    if shape is None:
        return None
    shape = list(shape)
    if not shape:
        raise BadInputError("input_shape must not be empty")
    if all(d is None or isinstance(d, int) for d in shape):
        shapes = [shape]
    else:
        shapes = [list(s) for s in shape]
    out = []
    for s in shapes:
        if not all(d is None or (isinstance(d, int) and d > 0) for d in s):
            raise BadInputError(f"input shape {s} must hold positive ints or None")
        out.append((None, *s[1:]))  # the batch is always free
    return out


def program_inputs(program: torch.export.ExportedProgram) -> list[tuple[str, tuple[int | None, ...]]]:
    """The user inputs of an exported program: name and shape, None where a dimension is dynamic."""
    nodes = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = []
    for name in program.graph_signature.user_inputs:
        val = nodes[name].meta.get("val") if name in nodes else None
        if not isinstance(val, torch.Tensor):
            raise BadInputError(f"the exported program's input {name!r} is not a tensor; only tensor inputs are supported")
        out.append((name, tuple(int(d) if isinstance(d, int) else None for d in val.shape)))
    return out


def _load_pt2(path: Path) -> torch.export.ExportedProgram:
    if not path.is_file():
        raise BadInputError(f"model file {path} does not exist")
    try:
        return torch.export.load(str(path))
    except Exception as exc:
        raise BadInputError(f"{path} is not a loadable torch.export .pt2 file: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
