"""From a loaded checkpoint to an eval-mode model: architecture, weights and sanity checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from compactify.converter.frontends.fx.capture import graph_module
from compactify.converter.load.checkpoint import Checkpoint
from compactify.converter.load.input_fit import check_declared_dims, check_input_fits
from compactify.converter.load.resources import check_memory
from compactify.errors import BadInputError
from compactify.models import build_model, default_input_shape
from compactify.models.metadata import check_shape, validate_meta
from compactify.runtimes.torch_runner import program_inputs


@dataclass
class Source:
    model: nn.Module  # eval mode, float32
    meta: dict = field(default_factory=dict)  # what rebuilds it: arch, arch_kwargs, expand, rate, ...
    input_shape: tuple[int, ...] | None = None


def build_source(
    ckpt: Checkpoint,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    input_shape: tuple[int, ...] | None = None,
    run_memory_check: bool = True,
    max_memory: int | None = None,
) -> Source:
    """The eval-mode float32 model a checkpoint stands for, its metadata and its input shape.

    The metadata is checked against the schema, the weights for NaN/Inf and negative BatchNorm
    variances, and the input shape against the memory budget (``converter.resources``), before
    the model ever runs: by a forward pass on the meta device, or with ``run_memory_check=False``
    by the input's size alone (``convert`` then checks the activations on the captured graph)."""

    where = f"checkpoint {ckpt.path} metadata"
    if ckpt.format == "pt2":
        model = graph_module(ckpt.exported)
        inputs = program_inputs(ckpt.exported)
        traced = tuple(1 if d is None else d for d in inputs[0][1]) if inputs else None
        if input_shape and inputs:
            check_declared_dims(inputs[0][1], input_shape, f"the exported program {ckpt.path.name}")
        meta = validate_meta(ckpt.meta, where)
        shape = input_shape or tuple(meta.get("input_shape") or ()) or traced
        check_weights(model.state_dict(), ckpt.path)
        return _checked(Source(model, meta, shape), run_memory_check, max_memory)
    if ckpt.format == "module":
        model = ckpt.module.float().eval()
        check_weights(model.state_dict(), ckpt.path)
        meta = validate_meta(ckpt.meta, where)
        if input_shape:
            check_input_fits(model, input_shape, meta.get("input_shape"))
        shape = input_shape or tuple(meta.get("input_shape") or ()) or None
        return _checked(Source(model, meta, shape), run_memory_check, max_memory)

    meta = dict(ckpt.meta)
    if arch:
        meta = {"arch": arch, "arch_kwargs": arch_kwargs or {}}
        where = "--arch/--arch-kwargs"
    elif arch_kwargs:
        meta["arch_kwargs"] = {**(meta.get("arch_kwargs") or {}), **arch_kwargs}
    meta = validate_meta(meta, where)
    if not meta.get("arch"):
        raise BadInputError(
            f"{ckpt.path} is a bare state_dict: pass --arch NAME (see `compactify models`) "
            "or --arch package.module:factory"
        )
    check_weights(ckpt.state_dict, ckpt.path)
    model = model_with_weights(meta, ckpt.state_dict)
    model = model.float().eval()
    built_for = default_input_shape(meta)  # the metadata's shape, else the registry's default
    if input_shape:
        check_input_fits(model, input_shape, built_for)
    shape = input_shape or built_for
    if shape is not None:
        shape = tuple(check_shape(list(shape), "the input shape"))
    return _checked(Source(model, meta, tuple(shape) if shape else None), run_memory_check, max_memory)


def _checked(source: Source, run_memory_check: bool = True, max_memory: int | None = None) -> Source:
    if source.input_shape:
        source.input_shape = tuple(check_shape(list(source.input_shape), "the input shape"))
        check_memory(source.model, source.input_shape, run=run_memory_check, budget_bytes=max_memory)
    return source


def model_with_weights(meta: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model ``meta`` describes, holding ``state``'s own tensors.

    A registry architecture is built on the meta device and takes the checkpoint's tensors as they
    are (``assign``): the random initialization a real build does is thrown away at once, and for a
    large checkpoint it cost seconds and a second copy of every weight. A model whose construction
    leaves a tensor the checkpoint does not hold on the meta device (a table its ``__init__``
    computes) is built the ordinary way instead, as is a user's factory, whose ``__init__`` may
    compute anything from tensors."""
    arch = str(meta["arch"])
    if ":" not in arch:
        try:
            with torch.device("meta"):
                model = build_model(meta)
        except Exception:  # an op without a meta kernel in some __init__: the ordinary build says what is wrong
            model = None
        if model is not None:
            load_weights(model, state, arch, assign=True)
            if _materialized(model):
                return model
    model = build_model(meta)
    load_weights(model, state, arch)
    return model


def _materialized(model: nn.Module) -> bool:
    """Whether every tensor of ``model`` is real after an assigning load, a missing BatchNorm step
    counter (which no forward in eval reads) made zero."""
    for module in model.modules():
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_meta and name == "num_batches_tracked":
                module._buffers[name] = torch.zeros((), dtype=buf.dtype)
        tensors = [*module._parameters.values(), *module._buffers.values(),
                   *(v for v in vars(module).values() if isinstance(v, torch.Tensor))]
        if any(t is not None and t.is_meta for t in tensors):
            return False
    return True


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], arch: str, assign: bool = False) -> None:
    """load_state_dict, with every missing, unexpected or mis-shaped key listed in one error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {list(state[k].shape)} vs model {list(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            shown = ", ".join(items[:6]) + (f", ... ({len(items) - 6} more)" if len(items) > 6 else "")
            problems.append(f"{len(items)} {label}: {shown}")
    if problems:
        raise BadInputError(f"checkpoint does not fit arch {arch}: " + "; ".join(problems))
    model.load_state_dict(state, strict=False, assign=assign)


def check_weights(state: dict[str, torch.Tensor], path) -> None:
    """NaN/Inf anywhere, or a negative BatchNorm running variance (no trained BatchNorm has one): bad input."""
    check_finite(state, path)
    negative = [f"{k} ({int((v < 0).sum())} of {v.numel()} values < 0)" for k, v in state.items()
                if k.endswith("running_var") and v.is_floating_point() and bool((v < 0).any())]
    if negative:
        shown = ", ".join(negative[:4]) + (f", ... ({len(negative) - 4} more)" if len(negative) > 4 else "")
        raise BadInputError(f"checkpoint {path} has a negative BatchNorm running variance in {shown}: a variance "
                            "cannot be negative, so the checkpoint is damaged or was edited; save it again from "
                            "the trained model")


def check_finite(state: dict[str, torch.Tensor], path) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not _all_finite(v)]
    if bad:
        shown = ", ".join(bad[:6]) + (f", ... ({len(bad) - 6} more)" if len(bad) > 6 else "")
        raise BadInputError(f"checkpoint {path} has NaN or Inf values in {shown}")


def _all_finite(v: torch.Tensor) -> bool:
    """A NaN or an infinity makes the sum NaN or infinite, so a finite sum proves every value finite in
    one pass without a mask as large as the tensor; only an infinite sum (an overflow of finite values,
    or a real NaN/Inf) needs the element-wise look."""
    with torch.no_grad():
        total = v.sum(dtype=torch.float32) if v.element_size() < 4 else v.sum()  # float16 sums overflow early
        return bool(torch.isfinite(total)) or bool(torch.isfinite(v).all())
