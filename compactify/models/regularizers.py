"""Regularizers of compression-aware training (Alvarez & Salzmann, NIPS 2017).

Each conv / linear layer's weight is read as a matrix in one of two ways:

- ``channel``: ``[n, m*kh*kw]`` (a linear layer's own ``[n, m]``). Rank r means the layer is a
  ``kxk(m -> r)`` conv followed by a ``1x1(r -> n)``.
- ``spatial``: ``[m*kh, n*kw]``. Rank r means a ``kh x 1 (m -> r)`` conv followed by a
  ``1 x kw (r -> n)`` (for a linear layer both views are the ``[n, m]`` matrix).

The nuclear norm (sum of singular values) of that matrix pushes the layer to low rank; the
sparse group lasso with one group per output unit (that unit's weights and bias) pushes whole
units to zero. Both can be used as penalties added to the loss (differentiable) or through
their proximal operators after each optimizer step (proximal gradient), which set singular
values and groups exactly to zero. The proximal step of the sum applies the group lasso
operator and then singular value soft-thresholding, the usual sequential approximation.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Iterable, Sequence

import torch
from torch import nn

from compactify.errors import BadInputError

KINDS = ("channel", "spatial")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise BadInputError(f"matrix kind must be one of {KINDS}, got {kind!r}")


def weight_matrix(weight: torch.Tensor, kind: str = "channel") -> torch.Tensor:
    """The ``kind`` matrix view of a conv (``[n, m, kh, kw]``) or linear (``[n, m]``) weight."""
    _check_kind(kind)
    if weight.dim() == 2:
        return weight
    if weight.dim() != 4:
        raise BadInputError(f"expected a 2-D or 4-D weight, got shape {list(weight.shape)}")
    n, m, kh, kw = weight.shape
    if kind == "channel":
        return weight.reshape(n, m * kh * kw)
    return weight.permute(1, 2, 0, 3).reshape(m * kh, n * kw)


def matrix_to_weight(matrix: torch.Tensor, shape: Sequence[int], kind: str = "channel") -> torch.Tensor:
    """Inverse of :func:`weight_matrix`."""
    _check_kind(kind)
    if len(shape) == 2:
        return matrix.reshape(shape)
    n, m, kh, kw = shape
    if kind == "channel":
        return matrix.reshape(n, m, kh, kw)
    return matrix.reshape(m, kh, n, kw).permute(2, 0, 1, 3)


def regularized_layers(model: nn.Module, layers: Iterable[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The Conv2d and Linear modules of ``model`` (optionally only names matching ``layers``)."""
    patterns = None if layers is None else list(layers)
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        if name.startswith("auxiliary.") or name == "auxiliary":
            continue  # training-only parts are dropped at conversion; compressing them is pointless
        if patterns is not None and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        out.append((name, module))
    return out


def nuclear_norm(weight: torch.Tensor, kind: str = "channel") -> torch.Tensor:
    """Sum of the singular values of the layer's ``kind`` matrix (differentiable)."""
    return torch.linalg.matrix_norm(weight_matrix(weight, kind), ord="nuc")


def nuclear_penalty(model: nn.Module, kind: str = "channel", layers: Iterable[str] | None = None) -> torch.Tensor:
    """Sum over layers of the nuclear norm of each weight matrix; multiply by tau and add to the loss."""
    terms = [nuclear_norm(m.weight, kind) for _, m in regularized_layers(model, layers)]
    if not terms:
        raise BadInputError("no Conv2d or Linear layer to regularize")
    return torch.stack(terms).sum()


def _groups(module: nn.Module) -> torch.Tensor:
    """One row per output unit: its incoming weights, and its bias when it has one."""
    rows = module.weight.reshape(module.weight.shape[0], -1)
    if module.bias is not None:
        rows = torch.cat([rows, module.bias.unsqueeze(1)], dim=1)
    return rows


def group_lasso_penalty(model: nn.Module, alpha: float = 0.5, layers: Iterable[str] | None = None) -> torch.Tensor:
    """Sparse group lasso with groups = output units.

    Per layer: ``(1 - alpha) * sqrt(P) * sum_units ||w_unit||_2 + alpha * ||W||_1``, with P the
    group size; multiply the sum by lambda and add it to the loss.
    """
    if not 0.0 <= alpha <= 1.0:
        raise BadInputError(f"sparse group lasso alpha must be in [0, 1], got {alpha}")
    terms = []
    for _, module in regularized_layers(model, layers):
        rows = _groups(module)
        size = rows.shape[1]
        terms.append((1 - alpha) * math.sqrt(size) * rows.norm(dim=1).sum() + alpha * rows.abs().sum())
    if not terms:
        raise BadInputError("no Conv2d or Linear layer to regularize")
    return torch.stack(terms).sum()


@torch.no_grad()
def prox_nuclear_(weight: torch.Tensor, threshold: float, kind: str = "channel") -> int:
    """Singular value soft-thresholding of the layer's ``kind`` matrix, in place; returns the new rank.

    Computed in float64: ``W <- U diag(max(s - threshold, 0)) V^T``.
    """
    mat = weight_matrix(weight.detach(), kind).double()
    u, s, vh = torch.linalg.svd(mat, full_matrices=False)
    s = (s - threshold).clamp_min(0)
    new = (u * s) @ vh
    weight.copy_(matrix_to_weight(new, weight.shape, kind).to(weight.dtype))
    return int((s > 0).sum())


@torch.no_grad()
def prox_group_lasso_(module: nn.Module, threshold: float, alpha: float = 0.5) -> int:
    """Proximal operator of the sparse group lasso of one layer, in place; returns the zeroed units.

    Elementwise soft-threshold by ``alpha * t``, then shrink each unit's group by
    ``(1 - alpha) * t * sqrt(P)`` (zeroing groups with a smaller norm): the exact prox of the
    sparse group lasso when its groups do not overlap.
    """
    rows = _groups(module).double()
    rows = rows.sign() * (rows.abs() - alpha * threshold).clamp_min(0)
    norms = rows.norm(dim=1, keepdim=True)
    scale = (1 - (1 - alpha) * threshold * math.sqrt(rows.shape[1]) / norms.clamp_min(1e-300)).clamp_min(0)
    rows = rows * scale
    n_w = module.weight[0].numel()
    module.weight.copy_(rows[:, :n_w].reshape(module.weight.shape).to(module.weight.dtype))
    if module.bias is not None:
        module.bias.copy_(rows[:, n_w].to(module.bias.dtype))
    return int((scale.squeeze(1) == 0).sum())


@torch.no_grad()
def proximal_step(model: nn.Module, lr: float, nuclear: float = 0.0, group_lasso: float = 0.0,
                  alpha: float = 0.5, kind: str = "channel", layers: Iterable[str] | None = None) -> dict[str, dict[str, int]]:
    """After an optimizer step with learning rate ``lr``: apply the proximal operators of
    ``group_lasso * SGL`` and ``nuclear * ||.||_*`` to every regularized layer.

    Returns per layer ``{"rank": r, "zero_units": z}`` for the operators applied.
    """
    if nuclear < 0 or group_lasso < 0:
        raise BadInputError("regularization strengths must be >= 0")
    stats: dict[str, dict[str, int]] = {}
    for name, module in regularized_layers(model, layers):
        entry = {}
        if group_lasso > 0:
            entry["zero_units"] = prox_group_lasso_(module, lr * group_lasso, alpha)
        if nuclear > 0:
            entry["rank"] = prox_nuclear_(module.weight, lr * nuclear, kind)
        stats[name] = entry
    return stats


@torch.no_grad()
def singular_values(weight: torch.Tensor, kind: str = "channel") -> torch.Tensor:
    """Singular values of the layer's ``kind`` matrix, float64, descending."""
    return torch.linalg.svdvals(weight_matrix(weight.detach(), kind).double())


def numerical_rank(weight: torch.Tensor, kind: str = "channel", rtol: float = 1e-3) -> int:
    """Number of singular values above ``rtol`` times the largest."""
    s = singular_values(weight, kind)
    if s.numel() == 0 or s[0] == 0:
        return 0
    return int((s > rtol * s[0]).sum())


def effective_rank(weight: torch.Tensor, kind: str = "channel") -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the normalized singular values."""
    s = singular_values(weight, kind)
    total = s.sum()
    if total == 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
