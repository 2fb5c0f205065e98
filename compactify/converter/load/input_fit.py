"""Does the input shape a user gave (``--input-shape``) fit the model? Answered from the model itself,
on the meta device (nothing is allocated, no data runs), in one line that names what was expected:
the rank and channels its first layer takes ("expected 4 dims (batch, channels, height, width), got
3", a missing batch dim, "the first layer takes 3 channels"), and, where the model does not run at
the shape, the layer that refuses it and the size the model was built for. Without this the user
reads torch's message about ``input[1, 1, 3, 16]``.

A failure this check cannot pin on a layer (data-dependent control flow, an op the meta device
lacks) is left to the eager run that follows, which reports it in torch's words.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from compactify.converter.load.meta_run import meta_forward
from compactify.errors import BadInputError, first_line

# What the dims of a convolution's input are, by its number of spatial dims.
_CONV_DIMS = {1: "(batch, channels, length)", 2: "(batch, channels, height, width)",
              3: "(batch, channels, depth, height, width)"}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# A first BatchNorm fixes the rank too (BatchNorm1d takes 2 or 3 dims, so it fixes only the channels).
_NORM_SPATIAL = {nn.BatchNorm2d: 2, nn.BatchNorm3d: 3}


@dataclasses.dataclass
class _Call:
    name: str
    module: nn.Module
    shape: tuple[int, ...]
    takes_model_input: bool  # its input is the model's input itself, not a tensor computed from it
    returned: bool = False  # it ran to its end (a failure after it is in code between the layers)


def check_input_fits(model: nn.Module, shape: Sequence[int], built_for: Sequence[int] | None = None,
                     option: str = "--input-shape") -> None:
    """BadInputError when ``shape`` (N,C,...) does not fit ``model``: its first layer's rank or
    channels, or (the model failing on the meta device) the layer that refuses it. ``built_for``: the
    shape the model is known to take (its metadata's, or its registry default), named in the message."""
    shape = tuple(int(d) for d in shape)
    calls, failure = _trace(model, shape)
    text = f"{option} {','.join(map(str, shape))}"
    if calls and calls[0].takes_model_input:
        _check_first_layer(calls[0], shape, text)
    if failure is None or not calls:
        return
    last = calls[-1]
    layer = f"{last.name} ({type(last.module).__name__})"
    problem = None if last.returned else _layer_problem(last)
    built = tuple(built_for) if built_for else None
    if built is not None and built[1:] != shape[1:]:
        refusal = f"its layer {layer} {problem}" if problem else \
            f"it fails {'after' if last.returned else 'in'} its layer {layer}: {first_line(failure)}"
        raise BadInputError(f"{text}: the model was built for {_size(built)} inputs ({','.join(map(str, built))}); "
                            f"at {_size(shape)} {refusal}")
    if problem is not None:
        raise BadInputError(f"{text} does not fit the model: at {_size(shape)} its layer {layer} {problem}; give "
                            "the input size the model was built for")


def check_declared_dims(declared: Sequence[int | None], shape: Sequence[int], what: str,
                        option: str = "--input-shape") -> None:
    """BadInputError when ``shape`` does not fit the input dims a model file declares (None: a dynamic
    dim), as an exported program or an ONNX graph does: the same rank, and every fixed dim after the
    batch the same (the batch is the caller's to judge: some take another batch, some refuse it)."""
    shape = tuple(int(d) for d in shape)
    text = f"{option} {','.join(map(str, shape))}"
    want = "x".join("?" if d is None else str(d) for d in declared)
    if len(shape) != len(declared):
        raise BadInputError(f"{text}: {what} takes {len(declared)} dims ({want}; ? is any size), got {len(shape)}")
    if any(d is not None and d != s for d, s in zip(declared[1:], shape[1:])):
        fitted = ",".join(str(s if i == 0 or d is None else d) for i, (d, s) in enumerate(zip(declared, shape)))
        raise BadInputError(f"{text}: {what} takes {want} (? is any size); did you mean {fitted}?")


def _trace(model: nn.Module, shape: tuple[int, ...]) -> tuple[list[_Call], BaseException | None]:
    """Every leaf module entered, in order, in one forward pass at ``shape`` on the meta device, and the
    exception that ended it (None: the model runs at this shape)."""
    x = torch.empty(shape, device="meta")
    calls: list[_Call] = []
    names = {m: n for n, m in model.named_modules()}

    def enter(module, args):
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if first is not None:
            calls.append(_Call(names.get(module, type(module).__name__), module, tuple(first.shape), first is x))

    def leave(module, args, output):
        calls[-1].returned = True

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_pre_hook(enter) for m in leaves] + [m.register_forward_hook(leave) for m in leaves]
    try:
        meta_forward(model, x)
        return calls, None
    except Exception as exc:  # a shape the model rejects, or what the meta device cannot run
        return calls, exc
    finally:
        for hook in hooks:
            hook.remove()


def _check_first_layer(call: _Call, shape: tuple[int, ...], text: str) -> None:
    module = call.module
    kind = type(module).__name__
    if isinstance(module, _CONVS) or type(module) in _NORM_SPATIAL:
        spatial = module.weight.dim() - 2 if isinstance(module, _CONVS) else _NORM_SPATIAL[type(module)]
        channels = module.in_channels if isinstance(module, _CONVS) else module.num_features
        rank = spatial + 2
        dims = _CONV_DIMS.get(spatial, f"(batch, channels, {spatial} spatial dims)")
        if len(shape) == rank - 1 and shape[0] == channels:
            raise BadInputError(f"{text} has no batch dim: the first layer ({call.name}, a {kind}) takes {rank} dims "
                                f"{dims}; did you mean 1,{','.join(map(str, shape))}?")
        if len(shape) != rank:
            raise BadInputError(f"{text}: expected {rank} dims {dims}, got {len(shape)} (the first layer, "
                                f"{call.name}, is a {kind})")
        if shape[1] != channels:
            raise BadInputError(f"{text}: the first layer ({call.name}, a {kind}) takes {_count(channels, 'channel')}, "
                                f"got {shape[1]}")
    elif isinstance(module, nn.Linear) and shape[-1] != module.in_features:
        raise BadInputError(f"{text}: the first layer ({call.name}, a Linear) takes "
                            f"{_count(module.in_features, 'feature')} in the last dim, got {shape[-1]}")


def _layer_problem(call: _Call) -> str | None:
    """What a layer says about the input it got, where its own sizes tell (None: they do not)."""
    module = call.module
    if isinstance(module, nn.Linear) and call.shape and call.shape[-1] != module.in_features:
        return f"gets {_count(call.shape[-1], 'feature')} where it takes {module.in_features}"
    if isinstance(module, _CONVS) and len(call.shape) >= 2 and call.shape[1] != module.in_channels:
        return f"gets {_count(call.shape[1], 'channel')} where it takes {module.in_channels}"
    return None


def _size(shape: Sequence[int]) -> str:
    """The dims after batch and channels ("32x32"), or after the batch for a rank-2 shape."""
    rest = shape[2:] if len(shape) > 2 else shape[1:]
    return "x".join(map(str, rest))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
