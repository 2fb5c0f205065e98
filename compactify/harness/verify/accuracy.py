"""Top-1 accuracy on the digits test split, for checkpoints trained on the built-in digits: shown beside
the errors, since a person decides by accuracy as much as by max-abs."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from compactify.harness.verify.runnable import Runnable
from compactify.models.data import load_digits_data

PLAIN_BATCH = 256  # rows per call for a model with a dynamic batch


def classifier_output(outputs: Mapping[str, np.ndarray]) -> str | None:
    """The first output shaped [N, classes], or None when the model has no such output."""
    for name, value in outputs.items():
        if value.ndim == 2 and value.shape[1] >= 2:
            return name
    return None


def digits_accuracy(model: Runnable, meta: Mapping[str, Any], input_shape: Sequence[int],
                    fixed_batch: int | None, output_index: int) -> float:
    """Top-1 accuracy on the digits test split the checkpoint was trained against."""
    training = meta.get("training") or {}
    data = load_digits_data(input_shape, seed=int(training.get("data_seed", 0)),
                            test_fraction=float(training.get("test_fraction", 0.2)))
    x = data.x_test.numpy()
    y = data.y_test.numpy()
    size = fixed_batch or PLAIN_BATCH
    preds = []
    for i in range(0, len(x), size):
        chunk = x[i:i + size]
        n = len(chunk)
        if fixed_batch and n < fixed_batch:  # a fixed-batch model: pad the last chunk, keep n rows
            chunk = np.concatenate([chunk, np.zeros((fixed_batch - n, *chunk.shape[1:]), chunk.dtype)])
        logits = model.run([chunk])[output_index]
        preds.append(np.argmax(logits[:n], axis=1))
    return float(np.mean(np.concatenate(preds) == y))
