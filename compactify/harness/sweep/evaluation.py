"""The held-out data a sweep judges its points on, and the top-1 predictions it compares.

``--data digits`` is the test split of the built-in digits (never seen in training, never used to
calibrate int8); ``--data FILE.npz`` is the user's own held-out set: an array ``x`` shaped like
the model input and, optionally, ``labels``. With labels a point is judged by its accuracy, without
by its top-1 agreement with the untruncated model on the same inputs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from compactify.errors import BadInputError
from compactify.models.data import load_digits_data
from compactify.targets.calibration import read_npz

DIGITS = "digits"
PREDICT_BATCH = 256


@dataclasses.dataclass
class EvalData:
    x: np.ndarray  # float32, (N, C, H, W)
    labels: np.ndarray | None  # int64 (N,)
    what: str


def load_eval_data(data: str, input_shape: Sequence[int]) -> EvalData:
    """``data`` is ``digits`` or the path of an .npz file; checked against ``input_shape`` (N, C, H, W)."""
    if data == DIGITS:
        d = load_digits_data(input_shape)
        return EvalData(d.x_test.numpy(), d.y_test.numpy(), f"the digits test split ({len(d.y_test)} images)")

    x, labels, _ = read_npz(data, input_shape)
    with_labels = "with labels" if labels is not None else "no labels: judged by top-1 agreement"
    return EvalData(x, labels, f"{Path(data).name} ({len(x)} inputs, {with_labels})")


def predict(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch: int = PREDICT_BATCH) -> np.ndarray:
    """Top-1 classes of ``x`` through ``run`` (a batch of at most ``batch`` inputs -> the logits)."""
    preds = []
    for i in range(0, len(x), batch):
        logits = np.asarray(run(x[i:i + batch]))
        if logits.ndim != 2 or logits.shape[1] < 2:
            raise BadInputError(f"the model's first output has shape {tuple(logits.shape)}, not [N, classes]: a sweep "
                                "judges classifiers by their top-1 class")
        preds.append(np.argmax(logits, axis=1))
    return np.concatenate(preds)


def scores(preds: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> dict:
    """Top-1 agreement with the untruncated model's ``reference`` predictions, and the accuracy with labels."""
    return {"agreement": float(np.mean(preds == reference)),
            "accuracy": float(np.mean(preds == labels)) if labels is not None else None}
