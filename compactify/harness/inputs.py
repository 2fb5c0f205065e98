"""The inputs a verification runs: seeded N(0, 1) batches, or arrays from an ``.npz`` file checked
against the model's input names and shapes."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from compactify.arguments import existing_file
from compactify.converter.load.sniff import detect
from compactify.errors import BadInputError

DEFAULT_BATCHES = 2
DEFAULT_BATCH_SIZE = 8
DEFAULT_SEED = 1234  # away from the converter's own error seeds (0, 1, 2): fresh inputs


@dataclasses.dataclass
class Inputs:
    """Batches of feeds (float32 arrays keyed by the reference's input names) and their origin."""

    names: list[str]
    batches: list[dict[str, np.ndarray]]
    description: dict[str, Any]


def seeded_inputs(names: Sequence[str], shapes: Sequence[Sequence[int]], batches: int, batch_size: int,
                  seed: int = DEFAULT_SEED) -> Inputs:
    """``batches`` batches of N(0, 1) inputs; ``shapes`` are the dims after the batch, per input."""
    if batches < 1 or batch_size < 1:
        raise BadInputError(f"--batches and --batch-size must be >= 1, got {batches} and {batch_size}")
    out = []
    for b in range(batches):
        feeds = {}
        for i, (name, shape) in enumerate(zip(names, shapes)):
            gen = torch.Generator().manual_seed(seed + 1000 * b + i)
            feeds[name] = torch.randn((batch_size, *shape), generator=gen).numpy()
        out.append(feeds)
    return Inputs(list(names), out, {"source": "seeded N(0,1)", "seed": seed, "batches": batches,
                                     "batch_size": batch_size})


def load_inputs(path: str | Path, names: Sequence[str], shapes: Sequence[Sequence[int] | None],
                batch_size: int | None = None, batches: int | None = None) -> Inputs:
    """Arrays from an .npz file, one per model input, keyed by input name.

    An array with the input's rank is one batch (split into ``batch_size`` chunks if given);
    an array with one more axis holds several batches along its first axis.
    """
    path = existing_file(path, "inputs file")

    content = detect(path)
    if content.kind != "npz":
        raise BadInputError(f"inputs file {path} is {content.what}, not an .npz archive of arrays; save the inputs "
                            "with np.savez(FILE, x=ARRAY)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zip, pickle-refusal and format errors all mean "not our npz"
        raise BadInputError(f"cannot read {path} as an .npz file of arrays ({type(exc).__name__}: {exc})") from None
    if sorted(arrays) != sorted(names):
        raise BadInputError(
            f"{path.name} holds arrays {sorted(arrays)}, but the model takes input(s) {list(names)}; "
            f"save them with np.savez(FILE, {', '.join(f'{n}=...' for n in names)})"
        )
    per_input: dict[str, list[np.ndarray]] = {}
    for name, shape in zip(names, shapes):
        arr = arrays[name]
        if arr.dtype.kind != "f":
            raise BadInputError(f"{path.name}: array {name!r} has dtype {arr.dtype}; the model takes floating-point input")
        arr = arr.astype(np.float32)
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            raise BadInputError(f"{path.name}: array {name!r} holds {bad} NaN or Inf value(s); inputs must be finite "
                                "numbers")
        if shape is None:
            raise BadInputError(f"the rank of input {name!r} is unknown; pass --input-shape")
        rank = len(shape) + 1
        want = "x".join(str(d) for d in shape)
        if arr.ndim == rank + 1:
            chunks = list(arr)
        elif arr.ndim == rank:
            chunks = [arr] if not batch_size else [arr[i:i + batch_size] for i in range(0, len(arr), batch_size)]
        else:
            raise BadInputError(
                f"{path.name}: array {name!r} has shape {tuple(arr.shape)}; expected (N, {want.replace('x', ', ')}) "
                f"for one batch or (B, N, {want.replace('x', ', ')}) for B batches"
            )
        for chunk in chunks:
            if tuple(chunk.shape[1:]) != tuple(shape) or len(chunk) == 0:
                raise BadInputError(
                    f"{path.name}: array {name!r} has batches of shape {tuple(chunk.shape)}; the model takes "
                    f"(N, {want.replace('x', ', ')})"
                )
        per_input[name] = chunks
    counts = {n: len(v) for n, v in per_input.items()}
    if len(set(counts.values())) > 1:
        raise BadInputError(f"{path.name}: the inputs hold different numbers of batches: {counts}")
    n = next(iter(counts.values()))
    if batches is not None:
        n = min(n, batches)
    out = [{name: per_input[name][b] for name in names} for b in range(n)]
    sizes = sorted({len(next(iter(f.values()))) for f in out})
    return Inputs(list(names), out, {"source": str(path), "batches": n, "batch_sizes": sizes})


def inputs_for(names, shapes, *, inputs_file, batches, batch_size, seed, fixed_batch) -> Inputs:
    for option, value in (("--batches", batches), ("--batch-size", batch_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise BadInputError(f"{option} must be a whole number >= 1, got {value!r}")
    if fixed_batch is not None and batch_size is not None and batch_size != fixed_batch:
        raise BadInputError(f"{fixed_batch[1]} has a fixed batch of {fixed_batch[0]}; use --batch-size {fixed_batch[0]}")
    size = batch_size or (fixed_batch[0] if fixed_batch else None)
    if inputs_file is not None:
        result = load_inputs(inputs_file, names, shapes, size, batches)
        if fixed_batch is not None:
            bad = [s for s in result.description["batch_sizes"] if s != fixed_batch[0]]
            if bad:
                raise BadInputError(
                    f"{fixed_batch[1]} has a fixed batch of {fixed_batch[0]}, but {Path(inputs_file).name} "
                    f"has batches of {bad[0]}; pass --batch-size {fixed_batch[0]} or re-export with a dynamic batch"
                )
        return result
    if batches is None and batch_size is None and fixed_batch is not None:
        # As many inputs as by default, at the batch a model fixes (a .pte's is the planned one, often 1).
        batches = max(DEFAULT_BATCHES, -(-DEFAULT_BATCHES * DEFAULT_BATCH_SIZE // size))
    return seeded_inputs(names, shapes, DEFAULT_BATCHES if batches is None else batches,
                         DEFAULT_BATCH_SIZE if size is None else size, seed)
