"""The grid of a sweep: which conversions to run and which points they give.

A *job* is one conversion: (checkpoint, rank budget) with every requested precision exported
from it (``convert --fp16 --int8`` writes all of them from one contraction). Each precision of a
job is a *point* of the frontier. Every checkpoint also gets the budget ``none`` (no ``--rank``):
the untruncated network is the reference for top-1 agreement and for the speedups.

A job's id names the checkpoint's content (sha256), the budget and everything else that changes
its result, so a resumed sweep finds exactly the jobs it already finished, and a checkpoint that
changed on disk gets new ids instead of stale results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Sequence

from compactify.errors import BadInputError, MissingRuntimeError
from compactify.runtimes import RUNNERS
from compactify.targets import TARGETS, Target

FULL_PRECISION = "fp32"  # what convert writes by default; every other precision is a convert flag (--fp16, --int8)
PRECISIONS = (FULL_PRECISION, "fp16", "int8")
# The sweep times its points on whichever node holds --bench-resource, on the cpu: every runtime of a
# registered target that runs there (not TensorRT).
RUNTIMES = tuple(dict.fromkeys(t.runtime for t in TARGETS.values() if RUNNERS[t.runtime].default_device == "cpu"))


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One checkpoint of the sweep as the driver read it: what the workers need to rebuild it."""

    path: Path
    label: str  # unique among the sweep's checkpoints (the file name, or more of the path)
    sha256: str
    input_shape: tuple[int, ...]
    on_digits: bool  # trained on the built-in digits (its metadata says so)


@dataclasses.dataclass(frozen=True)
class Job:
    """One conversion of the grid."""

    checkpoint: Checkpoint
    budget: str
    precisions: tuple[str, ...]
    settings_key: str  # a digest of the settings that change every result (data, arch options)

    @property
    def id(self) -> str:
        key = json.dumps([self.checkpoint.sha256, self.budget, list(self.precisions), self.settings_key])
        digest = hashlib.sha256(key.encode()).hexdigest()[:10]
        return f"{_slug(Path(self.checkpoint.label).stem)}-{_slug(self.budget)}-{digest}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")[:40] or "x"


def settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def make_jobs(checkpoints: Sequence[Checkpoint], budgets: Sequence[str], precisions: Sequence[str],
              key: str) -> list[Job]:
    return [Job(c, b, tuple(precisions), key) for c in checkpoints for b in budgets]


def precision_target(precision: str, runtime: str) -> Target | None:
    """The target a precision is judged and timed on with ``runtime``: the registered target that runs
    there with numbers of that precision (fp32 on ONNX Runtime: compact.onnx; on OpenVINO: compact.xml;
    on ExecuTorch: compact.pte); None when none does."""
    return next((t for t in TARGETS.values() if t.runtime == runtime and t.precision == precision), None)


def convert_flags(precisions: Sequence[str], runtime: str) -> dict[str, bool]:
    """The ConvertOptions that write every precision's target for ``runtime``: each target's flag as the
    option of that name (--fp16: fp16, --executorch: executorch), and compact.onnx only where a target
    is it or is built from it."""
    targets = [precision_target(p, runtime) for p in precisions]
    flags = {option: True for t in targets for option in t.asked_by()}
    return {"onnx": any(t.name == "onnx" or "onnx" in t.builds_from for t in targets), **flags}


def check_precisions(precisions: Sequence[str], runtime: str) -> tuple[str, ...]:
    if runtime not in RUNTIMES:
        raise BadInputError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    for p in precisions:
        if precision_target(p, runtime) is None:
            elsewhere = next((t for r in RUNTIMES if (t := precision_target(p, r)) is not None), None)
            where = f": use --runtime {elsewhere.runtime}" if elsewhere else ""
            what = f"writes the {elsewhere.description}, which runs on {elsewhere.runtime}" if elsewhere \
                else "writes no artifact the sweep can time"
            raise BadInputError(f"--{p} {what}{where}")
    timed = precision_target(FULL_PRECISION, runtime)
    missing = timed.missing()
    if missing:  # refused before any job starts, not once per job
        raise MissingRuntimeError(f"--runtime {runtime}: {timed.file} {missing}"
                                  + (f"; {timed.install_hint}" if timed.install_hint else ""))
    return (FULL_PRECISION, *[p for p in PRECISIONS[1:] if p in precisions])


def unique_labels(paths: Sequence[Path]) -> list[str]:
    """File names when distinct, else the paths as given."""
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    full = [str(p) for p in paths]
    if len(set(full)) != len(full):
        raise BadInputError("a checkpoint is listed twice")
    return full
