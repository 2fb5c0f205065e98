"""The built-in data set: scikit-learn's bundled handwritten digits (no download).

1,797 grayscale 8x8 images of the digits 0-9, split once with a fixed seed (stratified, 20%
test), scaled to [0, 1], upsampled bilinearly to the model's input size, standardized with
the training set's mean and standard deviation, and replicated to the model's input channels
(so the 3-channel CIFAR nets of the papers keep their architecture).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from compactify.errors import BadInputError

NUM_CLASSES = 10


@dataclass(frozen=True)
class Digits:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, *self.x_train.shape[1:])  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def _raw_split(seed: int, test_fraction: float) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    return tuple(train_test_split(images, bunch.target.astype(np.int64), test_size=test_fraction,
                                  random_state=seed, stratify=bunch.target))


def _resize(images: np.ndarray, channels: int, h: int, w: int) -> torch.Tensor:
    x = torch.from_numpy(images).unsqueeze(1)
    if (h, w) != (8, 8):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.expand(-1, channels, -1, -1).contiguous()


@functools.lru_cache(maxsize=8)
def _load(channels: int, h: int, w: int, seed: int, test_fraction: float) -> Digits:
    x_tr, x_te, y_tr, y_te = _raw_split(seed, test_fraction)
    train = _resize(x_tr, channels, h, w)
    test = _resize(x_te, channels, h, w)
    mean, std = train.mean(), train.std()
    return Digits((train - mean) / std, torch.from_numpy(y_tr), (test - mean) / std, torch.from_numpy(y_te))


def load_digits_data(input_shape: Sequence[int], seed: int = 0, test_fraction: float = 0.2) -> Digits:
    """Digits as float32 tensors shaped for a model taking ``input_shape`` ((N,)C,H,W).

    The split depends only on ``seed`` and ``test_fraction``; results are cached, so treat
    the returned tensors as read-only.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise BadInputError(f"digits need an image input shape (N, C, H, W), got {list(input_shape)}")
    if not 0.0 < test_fraction < 1.0:
        raise BadInputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    c, h, w = shape
    return _load(c, h, w, int(seed), float(test_fraction))


def trained_on_digits(meta: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint's metadata says it was trained on the built-in digits (as ``compactify train`` writes)."""
    training = (meta or {}).get("training") or {}
    return isinstance(training, Mapping) and str(training.get("dataset", "")).lower() == "digits"
