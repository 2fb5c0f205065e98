"""Model outputs as a flat list of tensors, the one order every runtime and report uses."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from compactify.errors import BadInputError


def flatten_outputs(out: Any, what: str = "compactify") -> list[torch.Tensor]:
    """Leaves of a tensor, or of (nested) tuples, lists and dicts of tensors, in pytree order."""
    leaves = pytree.tree_leaves(out)
    bad = [type(leaf).__name__ for leaf in leaves if not isinstance(leaf, torch.Tensor)]
    if bad or not leaves:
        kind = bad[0] if bad else type(out).__name__
        raise BadInputError(f"the model returned a {kind}; {what} needs tensors or tuples of tensors")
    return leaves
