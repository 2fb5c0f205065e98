"""Calibration inputs for ``convert --int8``, and the held-out inputs that measure the result.

Two sources, both split into inputs the calibrator sees and inputs it never sees:

- an ``.npz`` file (``--calibration FILE``): one floating-point array of model inputs shaped
  (N, C, H, W) like the model's input, named like the input (``x``) or the file's only array
  besides ``labels``; optionally ``labels``, N non-negative integers (the true classes). It is
  split once by a seeded permutation: a fifth of the samples (at least one) are held out, the
  rest calibrate;
- the built-in digits, for checkpoints trained on them (their metadata says so): the first
  :data:`DIGITS_CALIBRATION` training images calibrate, the test split (with its labels) is
  held out, the split the checkpoint was trained against (its ``data_seed``/``test_fraction``).

The description returned with the arrays is what report.json records and what
:func:`held_out_inputs` rebuilds the held-out set from (``compactify verify`` judges the int8
model on it): the file's path and sha256 and the split rule, or the digits split.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from compactify.errors import BadInputError
from compactify.models.data import load_digits_data, trained_on_digits

HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0
DIGITS_CALIBRATION = 256  # digits training images that calibrate (of 1,437)
LABELS = "labels"


@dataclass
class CalibrationSet:
    calibration: np.ndarray  # float32 (N, C, H, W): what the calibrator sees
    held_out: np.ndarray  # float32 (M, C, H, W): what the quantized model is measured on
    held_out_labels: np.ndarray | None  # int64 (M,), when the source has labels
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def what(self) -> str:
        return self.description["calibration_what"]

    @property
    def held_out_what(self) -> str:
        return self.description["held_out_what"]


def calibration_set(path: str | Path | None, input_shape: Sequence[int], meta: Mapping[str, Any] | None,
                    input_name: str = "x") -> CalibrationSet:
    """The calibration and held-out inputs for a model taking ``input_shape`` (N, C, H, W)."""
    shape = tuple(int(d) for d in input_shape)
    if path is not None:
        x, labels, sha = read_npz(path, shape, input_name)
        return split(x, labels, {"source": "file", "path": str(Path(path).resolve()), "sha256": sha,
                                 "name": Path(path).name})
    if trained_on_digits(meta):
        return digits_set(shape, meta)
    raise BadInputError(
        f"--int8 needs calibration inputs: pass --calibration FILE.npz holding an array {input_name} of shape "
        f"(N, {', '.join(map(str, shape[1:]))}) like the inputs the model will see (and optionally {LABELS}); "
        "only checkpoints trained on the built-in digits calibrate without one"
    )


def digits_set(input_shape: Sequence[int], meta: Mapping[str, Any] | None) -> CalibrationSet:
    training = (meta or {}).get("training") or {}
    seed, fraction = int(training.get("data_seed", 0)), float(training.get("test_fraction", 0.2))
    data = load_digits_data(input_shape, seed=seed, test_fraction=fraction)
    cal = data.x_train[:DIGITS_CALIBRATION].numpy()
    held, labels = data.x_test.numpy(), data.y_test.numpy()
    return CalibrationSet(cal, held, labels, {
        "source": "digits", "data_seed": seed, "test_fraction": fraction,
        "calibration_samples": len(cal), "held_out_samples": len(held), "labels": True,
        "calibration_what": f"{len(cal)} digits training images",
        "held_out_what": f"the digits test split ({len(held)} images, with labels)",
    })


def read_npz(path: str | Path, input_shape: Sequence[int],
             input_name: str = "x") -> tuple[np.ndarray, np.ndarray | None, str]:
    """The inputs (float32), the labels (int64 or None) and the sha256 of an .npz calibration file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"calibration file {path} does not exist" if not path.exists()
                            else f"calibration file {path} is not a file")
    if not _is_npz(path):
        what = "an empty file, not" if path.stat().st_size == 0 else "not"
        raise BadInputError(f"calibration file {path} is {what} an .npz archive of arrays; save the "
                            f"inputs with np.savez(FILE, {input_name}=ARRAY, {LABELS}=CLASSES)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zip, pickle-refusal and format errors all mean "not our npz"
        raise BadInputError(f"cannot read calibration file {path} as an .npz of arrays "
                            f"({type(exc).__name__}: {exc})") from None
    inputs = [k for k in arrays if k != LABELS]
    if input_name in arrays:
        key = input_name
    elif len(inputs) == 1:
        key = inputs[0]
    else:
        raise BadInputError(f"calibration file {path.name} holds arrays {sorted(arrays) or 'none'}; it needs the "
                            f"model's input as an array named {input_name!r} (and optionally {LABELS!r})")
    x = arrays[key]
    want = f"(N, {', '.join(map(str, input_shape[1:]))})"
    if x.dtype.kind != "f":
        raise BadInputError(f"{path.name}: array {key!r} has dtype {x.dtype}; calibration inputs must be "
                            "floating-point, preprocessed exactly as the model's inputs")
    if x.ndim != len(input_shape) or tuple(x.shape[1:]) != tuple(input_shape[1:]):
        raise BadInputError(f"{path.name}: array {key!r} has shape {tuple(x.shape)}, but the model takes {want}")
    if len(x) == 0:
        raise BadInputError(f"{path.name}: array {key!r} holds no samples; calibration needs at least 2")
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:
        raise BadInputError(f"{path.name}: array {key!r} holds {bad} NaN or Inf value(s); calibration inputs must be "
                            "finite numbers")
    if len(x) < 2:
        raise BadInputError(f"{path.name}: array {key!r} holds 1 sample; calibration needs at least 2 (one is held "
                            "out to measure the int8 model)")
    labels = None
    if LABELS in arrays:
        labels = arrays[LABELS]
        if labels.dtype.kind not in "iu" or labels.shape != (len(x),):
            raise BadInputError(f"{path.name}: {LABELS!r} must be {len(x)} integer class indices (one per input), got "
                                f"dtype {labels.dtype} and shape {tuple(labels.shape)}")
        if len(labels) and labels.min() < 0:
            raise BadInputError(f"{path.name}: {LABELS!r} holds the negative class {int(labels.min())}")
        labels = labels.astype(np.int64)
    return x.astype(np.float32), labels, hashlib.sha256(path.read_bytes()).hexdigest()


def _is_npz(path: Path) -> bool:
    """Whether ``path`` is a zip archive of .npy arrays (what np.savez writes), by its content."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def split_indices(n: int, fraction: float = HELD_OUT_FRACTION, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(calibration, held-out) indices of n samples: a seeded permutation, a fraction (at least one) held out."""
    order = np.random.default_rng(seed).permutation(n)
    held = min(n - 1, max(1, int(round(n * fraction))))
    return np.sort(order[held:]), np.sort(order[:held])


def split(x: np.ndarray, labels: np.ndarray | None, description: dict[str, Any]) -> CalibrationSet:
    cal, held = split_indices(len(x))
    name = description.get("name", "the file")
    with_labels = ", with labels" if labels is not None else ""
    description = dict(description, split={"seed": SPLIT_SEED, "held_out_fraction": HELD_OUT_FRACTION},
                       calibration_samples=len(cal), held_out_samples=len(held), labels=labels is not None,
                       calibration_what=f"{len(cal)} inputs of {name}",
                       held_out_what=f"{len(held)} held-out inputs of {name}{with_labels}")
    return CalibrationSet(x[cal], x[held], None if labels is None else labels[held], description)


def held_out_inputs(description: Mapping[str, Any], input_shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The held-out inputs (and labels) a conversion measured its int8 model on, rebuilt from report.json's
    description; BadInputError when the calibration file is gone or changed."""
    if description.get("source") == "digits":
        data = digits_set(input_shape, {"training": {"data_seed": description.get("data_seed", 0),
                                                     "test_fraction": description.get("test_fraction", 0.2)}})
        return data.held_out, data.held_out_labels
    if description.get("source") != "file" or not description.get("path"):
        raise BadInputError("report.json does not say where the int8 model's held-out inputs came from; convert again")
    path = Path(description["path"])
    if not path.is_file():
        raise BadInputError(f"the calibration file {path} named in report.json no longer exists")
    x, labels, sha = read_npz(path, input_shape)
    if description.get("sha256") and sha != description["sha256"]:
        raise BadInputError(f"the calibration file {path} changed since the conversion (sha256 differs)")
    rule = description.get("split") or {}
    _, held = split_indices(len(x), float(rule.get("held_out_fraction", HELD_OUT_FRACTION)),
                            int(rule.get("seed", SPLIT_SEED)))
    return x[held], None if labels is None else labels[held]


def batches(x: np.ndarray, size: int, fixed: bool = False) -> Iterator[tuple[np.ndarray, int]]:
    """Chunks of ``size`` rows and how many of them are real: with ``fixed`` (a static-batch model) the last
    chunk is padded with zeros to ``size``."""
    for i in range(0, len(x), size):
        chunk = x[i:i + size]
        n = len(chunk)
        if fixed and n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
        yield np.ascontiguousarray(chunk), n


def data_reader(x: np.ndarray, input_name: str, batch: int, fixed: bool = False):
    """An onnxruntime.quantization CalibrationDataReader over ``x`` in batches of ``batch``. A static-batch
    model gets only full batches (padding would put zeros into the calibrated ranges)."""
    if fixed and len(x) < batch:
        raise BadInputError(f"the ONNX model has a fixed batch of {batch}, but only {len(x)} calibration inputs were "
                            f"given; give at least {batch}, or convert without --static")
    stop = len(x) - len(x) % batch if fixed else len(x)

    class ArrayReader(CalibrationDataReader):
        def __init__(self):
            self._chunks = iter(range(0, stop, batch))

        def get_next(self):
            i = next(self._chunks, None)
            return None if i is None else {input_name: np.ascontiguousarray(x[i:i + batch])}

        def __len__(self):
            return -(-stop // batch)

    return ArrayReader()
