"""One forward pass of a model on the meta device (shapes only: nothing allocated, no data), leaving
the model as it was.

The model's weights are swapped for meta tensors of their shapes for the call (``functional_call``
puts them back), and whatever the forward stores on a module besides them is undone after: real code
caches state on its first call (ultralytics' Detect keeps its anchors and strides for the input size
it saw), and a cache made of meta tensors breaks the first real run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

# What functional_call itself swaps and restores; every other entry of a module's __dict__ is saved.
_SWAPPED = ("_parameters", "_buffers", "_modules")


def meta_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)`` with the weights on the meta device; ``x`` is a meta tensor."""
    tensors = {name: torch.empty_like(t, device="meta")
               for name, t in [*model.named_parameters(), *model.named_buffers()]}
    with attributes_kept(model), torch.no_grad():
        return functional_call(model, tensors, (x,), strict=False)


@contextlib.contextmanager
def attributes_kept(model: nn.Module) -> Iterator[None]:
    """Every module's own attributes as they were before the block: changed ones put back, new ones
    removed. A container changed in place (a list a forward appends to) is not seen."""
    saved = {module: {k: v for k, v in vars(module).items() if k not in _SWAPPED} for module in model.modules()}
    try:
        yield
    finally:
        for module, before in saved.items():
            now = vars(module)
            for key in [k for k in now if k not in _SWAPPED and k not in before]:
                del now[key]
            for key, value in before.items():
                if now.get(key, _MISSING) is not value:
                    now[key] = value


_MISSING = object()
