"""The built-in digits data: shapes, a fixed split, scaling and channel replication."""

from __future__ import annotations

import pytest
import torch

from compactify.errors import BadInputError
from compactify.models.data import load_digits_data


def test_digits_tensors():
    data = load_digits_data((1, 3, 16, 16))
    assert data.x_train.shape == (1437, 3, 16, 16) and data.x_test.shape == (360, 3, 16, 16)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.input_shape == (1, 3, 16, 16)
    assert torch.equal(data.x_train[:, 0], data.x_train[:, 2])  # grayscale replicated
    assert abs(float(data.x_train.mean())) < 1e-4 and abs(float(data.x_train.std()) - 1) < 1e-3
    assert set(data.y_test.tolist()) == set(range(10))
    counts = torch.bincount(data.y_test, minlength=10)
    assert counts.min() >= 35  # stratified: about 36 of each class


def test_split_is_fixed_and_sizes_are_consistent():
    a = load_digits_data((3, 8, 8))
    b = load_digits_data((1, 1, 12, 12))
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.y_test, b.y_test)
    other = load_digits_data((1, 1, 8, 8), seed=1)
    assert not torch.equal(other.y_train, a.y_train)
    with pytest.raises(BadInputError):
        load_digits_data((1, 16))
    with pytest.raises(BadInputError):
        load_digits_data((1, 3, 8, 8), test_fraction=1.5)
