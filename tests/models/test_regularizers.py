"""Compression-aware regularizers: matrix views, norms, proximal operators, and that they
lower rank in a real (short) training run."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactify.errors import BadInputError
from compactify.models import create_model
from compactify.models.data import load_digits_data
from compactify.models.regularizers import (
    effective_rank,
    group_lasso_penalty,
    matrix_to_weight,
    nuclear_norm,
    nuclear_penalty,
    numerical_rank,
    prox_group_lasso_,
    prox_nuclear_,
    proximal_step,
    regularized_layers,
    weight_matrix,
)
from compactify.models.train import train


def test_matrix_views_round_trip_and_mean_what_they_say():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 5, dtype=torch.float64)
    for kind in ("channel", "spatial"):
        assert torch.equal(matrix_to_weight(weight_matrix(w, kind), w.shape, kind), w)
    assert weight_matrix(w, "channel").shape == (6, 4 * 3 * 5)
    assert weight_matrix(w, "spatial").shape == (4 * 3, 6 * 5)

    # channel rank r  <=>  kxk(m -> r) then 1x1(r -> n)
    a, b = torch.randn(2, 4, 3, 5, dtype=torch.float64), torch.randn(6, 2, 1, 1, dtype=torch.float64)
    composed = torch.einsum("nr,rmhw->nmhw", b[:, :, 0, 0], a)
    assert numerical_rank(composed, "channel") == 2
    x = torch.randn(1, 4, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(F.conv2d(x, composed), F.conv2d(F.conv2d(x, a), b))

    # spatial rank r  <=>  kh x 1 (m -> r) then 1 x kw (r -> n)
    v, h = torch.randn(3, 4, 3, 1, dtype=torch.float64), torch.randn(6, 3, 1, 5, dtype=torch.float64)
    separable = torch.einsum("rmh,nrw->nmhw", v[:, :, :, 0], h[:, :, 0, :])
    assert numerical_rank(separable, "spatial") == 3
    torch.testing.assert_close(F.conv2d(x, separable), F.conv2d(F.conv2d(x, v), h))
    assert numerical_rank(separable, "channel") > 3


def test_norms_and_penalties():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2, bias=False))
    w = model[0].weight
    assert math.isclose(nuclear_norm(w).item(), torch.linalg.svdvals(w.reshape(4, -1)).sum().item(), rel_tol=1e-6)
    total = nuclear_penalty(model)
    total.backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
    rows0 = torch.cat([w.reshape(4, -1), model[0].bias[:, None]], 1)
    lin = model[2].weight
    expect = 0.7 * (math.sqrt(28) * rows0.norm(dim=1).sum() + math.sqrt(4) * lin.norm(dim=1).sum()) + 0.3 * (
        rows0.abs().sum() + lin.abs().sum())
    assert math.isclose(group_lasso_penalty(model, alpha=0.3).item(), expect.item(), rel_tol=1e-6)
    assert [n for n, _ in regularized_layers(model, ["2"])] == ["2"]
    with pytest.raises(BadInputError, match="alpha"):
        group_lasso_penalty(model, alpha=2)
    with pytest.raises(BadInputError, match="no Conv2d or Linear"):
        nuclear_penalty(nn.ReLU())
    with pytest.raises(BadInputError, match="kind"):
        weight_matrix(w, "rows")


def test_proximal_operators():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3, dtype=torch.float64)
    s = torch.linalg.svdvals(weight_matrix(w, "spatial"))
    t = float(s[2])
    rank = prox_nuclear_(w, t, "spatial")
    assert rank == 2
    torch.testing.assert_close(torch.linalg.svdvals(weight_matrix(w, "spatial"))[:3], (s[:3] - t).clamp_min(0))

    lin = nn.Linear(4, 3).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2, 0.5, 0], [0.01, 0.02, -0.01, 0], [3, 0, 0, -4]]))
        lin.bias.copy_(torch.tensor([0.5, 0.0, 1.0]))
    zeroed = prox_group_lasso_(lin, threshold=0.1, alpha=0.5)
    assert zeroed == 1 and lin.weight[1].abs().sum() == 0 and lin.bias[1] == 0
    # closed form for row 0: soft-threshold by 0.05, then shrink the group by 0.05 * sqrt(5)
    soft = torch.tensor([0.95, -1.95, 0.45, 0, 0.45], dtype=torch.float64)
    expect = soft * (1 - 0.05 * math.sqrt(5) / soft.norm())
    torch.testing.assert_close(torch.cat([lin.weight[0], lin.bias[:1]]), expect)

    model = nn.Sequential(nn.Linear(6, 6), nn.Linear(6, 2))
    stats = proximal_step(model, lr=1.0, nuclear=1e3, group_lasso=0.0)
    assert stats == {"0": {"rank": 0}, "1": {"rank": 0}}
    with pytest.raises(BadInputError):
        proximal_step(model, lr=1.0, nuclear=-1)


@functools.lru_cache(maxsize=None)
def _short_run(**reg) -> tuple[nn.Module, float]:
    """Two epochs of SmallNet-7 (half width) on 16x16 digits, regularizing fc1 only."""
    torch.manual_seed(0)
    model = create_model("smallnet7", width=0.5, hidden=32, input_size=16)
    data = load_digits_data((1, 3, 16, 16))
    result = train(model, 2, data=data, progress=False, reg_layers=["fc1"], **reg)
    return model, result.test_accuracy


def test_nuclear_norm_lowers_the_rank_of_a_layer():
    plain, plain_acc = _short_run()
    prox, prox_acc = _short_run(nuclear=10.0)
    pen, _ = _short_run(nuclear=0.5, proximal=False)
    assert numerical_rank(plain.fc1.weight) == 32 and plain_acc > 0.9
    # proximal steps zero singular values exactly; the net still learns
    assert numerical_rank(prox.fc1.weight) <= 12 and prox_acc > 0.6
    # the penalty only shrinks them, so compare the (entropy) effective rank
    assert effective_rank(pen.fc1.weight) < 0.75 * effective_rank(plain.fc1.weight)
    # layers outside reg_layers are left alone
    assert numerical_rank(prox.conv3.weight) == numerical_rank(plain.conv3.weight)


def test_group_lasso_zeroes_whole_units():
    plain, _ = _short_run()
    sparse, acc = _short_run(group_lasso=1.0)
    dead = lambda m: int((m.fc1.weight.abs().sum(1) + m.fc1.bias.abs() == 0).sum())  # noqa: E731
    assert dead(plain) == 0 and dead(sparse) >= 3 and acc > 0.6
