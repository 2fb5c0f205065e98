"""Latency measurement: warm-up, timed runs, statistics, interleaved comparisons.

What is timed is a zero-argument callable (``Runner.bind(feeds)`` returns one) followed by the
runner's ``synchronize()``, so device work is inside the measurement.

- CPU: ``time.perf_counter_ns`` around ``fn(); sync()``.
- CUDA: ``sync(); start.record(); fn(); sync(); end.record(); end.synchronize()`` with
  ``torch.cuda.Event(enable_timing=True)``. The second ``sync`` is there because ONNX Runtime
  and TensorRT may run on their own streams, which an event on torch's current stream would
  not wait for; the runner's ``synchronize`` waits for whatever it launched.

Several models are compared by interleaving (A B C, C B A, B C A, ... with ``rotate``) so that drift
in the machine's speed (thermal, other processes) hits every model alike, and the comparison
is quoted as ratios to a baseline. Python's garbage collector is off while timing, as in
``timeit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import sys
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from compactify.errors import BadInputError, MissingRuntimeError

# Coefficient of variation (std / mean) above which a measurement gets a warning. At 10 % the
# p50 of a few hundred runs is still stable, but single-run noise is as large as the effects
# people usually look for (a 1.05x speedup), so the numbers deserve a second run.
HIGH_CV = 0.10

# The automatic progress bar appears only when the measured part is expected to take longer.
LONG_RUN_S = 2.0

DEFAULT_WARMUP = 10
DEFAULT_ITERS = 100


@dataclasses.dataclass
class LatencyStats:
    """Statistics of one model's timed runs, in milliseconds.

    Percentiles use numpy's default linear interpolation; ``std`` is the sample standard
    deviation (ddof=1; 0 for a single run); ``cv = std / mean``; ``throughput`` is items per
    second at the mean latency: ``batch * 1000 / mean_ms``.
    """

    label: str
    batch: int
    n: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    min_ms: float
    max_ms: float
    throughput: float
    samples_ms: list[float] = dataclasses.field(default_factory=list, repr=False)

    @property
    def high_cv(self) -> bool:
        return self.cv > HIGH_CV

    def to_dict(self, samples: bool = False) -> dict:
        d = dataclasses.asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def summarize(samples_ms: Sequence[float], batch: int = 1, label: str = "") -> LatencyStats:
    """Statistics of a list of per-run latencies in milliseconds."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise BadInputError("latency statistics need at least one timed run")
    if batch < 1:
        raise BadInputError(f"batch must be >= 1, got {batch}")
    p50, p90, p99 = (float(v) for v in np.percentile(x, [50, 90, 99]))
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return LatencyStats(
        label=label,
        batch=int(batch),
        n=int(x.size),
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p99,
        mean_ms=mean,
        std_ms=std,
        cv=std / mean if mean > 0 else 0.0,
        min_ms=float(x.min()),
        max_ms=float(x.max()),
        throughput=batch * 1000.0 / mean if mean > 0 else math.inf,
        samples_ms=[float(v) for v in x],
    )


@contextlib.contextmanager
def pinned_threads(threads: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``threads`` (None: leave it).

    ONNX Runtime takes its thread count when a session is created, so ORT runners get theirs
    through ``open_runner(..., threads=N)`` instead.
    """
    if threads is None:
        yield
        return
    if threads < 1:
        raise BadInputError(f"--threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class Candidate:
    """One thing to time: ``fn`` runs one inference, ``sync`` waits for its device."""

    label: str
    fn: Callable[[], object]
    sync: Callable[[], None] | None = None
    device: str = "cpu"
    batch: int = 1


def _cpu_timer(sync: Callable[[], None]) -> Callable[[Callable[[], object]], float]:
    def time_once(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter_ns()
        fn()
        sync()
        return (time.perf_counter_ns() - t0) / 1e6

    return time_once


def _cuda_timer(sync: Callable[[], None]) -> Callable[[Callable[[], object]], float]:
    if not torch.cuda.is_available():
        raise MissingRuntimeError("CUDA timing needs a CUDA device, and torch sees none; use --device cpu")
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)

    def time_once(fn: Callable[[], object]) -> float:
        sync()
        start.record()
        fn()
        sync()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    return time_once


def _default_sync(device: str) -> Callable[[], None]:
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def make_timer(device: str = "cpu", sync: Callable[[], None] | None = None) -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn`` once and returns its latency in milliseconds."""
    if device not in ("cpu", "cuda"):
        raise BadInputError(f"unknown device {device!r}; use cpu or cuda")
    sync = sync or _default_sync(device)
    return _cuda_timer(sync) if device == "cuda" else _cpu_timer(sync)


@dataclasses.dataclass
class InterleavedResult:
    """Per-model statistics of an interleaved run and ratios against the baseline model.

    ``ratios_p50[m] = p50[m] / p50[baseline]``; ``ratios_paired[m]`` is the median over rounds
    of ``t_m / t_baseline`` within the same round, which cancels slow drift of the machine.
    A ratio below 1 means faster than the baseline.
    """

    stats: list[LatencyStats]
    baseline: str
    ratios_p50: dict[str, float]
    ratios_paired: dict[str, float]
    rounds: int
    warmup: int
    rotate: bool
    wall_s: float
    warnings: list[str]

    def by_label(self, label: str) -> LatencyStats:
        for s in self.stats:
            if s.label == label:
                return s
        raise KeyError(label)

    def to_dict(self, samples: bool = False) -> dict:
        return {
            "stats": [s.to_dict(samples) for s in self.stats],
            "baseline": self.baseline,
            "ratios_p50": dict(self.ratios_p50),
            "ratios_paired": dict(self.ratios_paired),
            "rounds": self.rounds,
            "warmup": self.warmup,
            "rotate": self.rotate,
            "wall_s": self.wall_s,
            "warnings": list(self.warnings),
        }


def _check_budget(iters: int | None, seconds: float | None, warmup: int) -> tuple[int | None, float | None]:
    if iters is not None and seconds is not None:
        raise BadInputError("give either --iters or --seconds, not both")
    if iters is None and seconds is None:
        iters = DEFAULT_ITERS
    if iters is not None and iters < 1:
        raise BadInputError(f"--iters must be >= 1, got {iters}")
    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        raise BadInputError(f"--seconds must be > 0, got {seconds}")
    if warmup < 0:
        raise BadInputError(f"--warmup must be >= 0, got {warmup}")
    return iters, seconds


def _progress_wanted(progress: bool | None, expected_s: float) -> bool:
    if progress is not None:
        return progress
    return sys.stderr.isatty() and expected_s > LONG_RUN_S


def cv_warning(stats: LatencyStats) -> str | None:
    """The warning text for a noisy measurement, or None."""
    if not stats.high_cv:
        return None
    return (
        f"{stats.label} (batch {stats.batch}): coefficient of variation {stats.cv:.0%} is above {HIGH_CV:.0%}; "
        "the numbers are noisy: close other programs, pin --threads, or measure longer"
    )


def compare_latency(
    candidates: Sequence[Candidate],
    *,
    warmup: int = DEFAULT_WARMUP,
    iters: int | None = None,
    seconds: float | None = None,
    rotate: bool = True,
    baseline: int = 0,
    progress: bool | None = None,
    description: str = "timing",
) -> InterleavedResult:
    """Time several models round-robin: every round runs each model once.

    ``iters`` is the number of measured rounds; ``seconds`` instead keeps going until that much
    wall time has passed (at least one round). ``rotate`` plays each rotation of the order forward
    then backward (A B C, C B A, B C A, A C B, ...) so that no model runs right after another
    more often than after a third. ``progress``: True/False
    forces the rich progress bar on stderr on/off; None shows it on a terminal for long runs.
    """
    if not candidates:
        raise BadInputError("nothing to time")
    labels = [c.label for c in candidates]
    if len(set(labels)) != len(labels):
        raise BadInputError(f"model labels must be distinct, got {labels}")
    if not 0 <= baseline < len(candidates):
        raise BadInputError(f"baseline index {baseline} out of range for {len(candidates)} models")
    iters, seconds = _check_budget(iters, seconds, warmup)
    timers = [make_timer(c.device, c.sync) for c in candidates]
    n = len(candidates)

    def order(round_index: int) -> list[int]:
        # Rotations alone let A precede B in more rounds than C when n >= 3 (a model that
        # evicts the cache then slows one neighbour more than the other); each rotation
        # played forward then backward gives every ordered pair the same share of rounds.
        if not rotate:
            return list(range(n))
        shift = (round_index // 2) % n
        rotated = [(k + shift) % n for k in range(n)]
        return rotated[::-1] if round_index % 2 else rotated

    start = time.perf_counter()
    warm_t0 = time.perf_counter()
    for r in range(warmup):
        for k in order(r):
            timers[k](candidates[k].fn)
    warm_round_s = (time.perf_counter() - warm_t0) / warmup if warmup else math.nan
    if seconds is not None:
        expected = seconds
    elif math.isnan(warm_round_s):
        expected = math.inf  # no estimate: a long run is possible, let a terminal show it
    else:
        expected = warm_round_s * iters

    samples: list[list[float]] = [[] for _ in candidates]
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns.append(MofNCompleteColumn() if iters is not None else TextColumn("{task.completed:.1f}/{task.total:.1f} s"))
    columns.append(TimeRemainingColumn())
    bar = Progress(*columns, console=Console(stderr=True), transient=True,
                   disable=not _progress_wanted(progress, expected))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with bar:
            task = bar.add_task(description, total=iters if iters is not None else seconds)
            t0 = time.perf_counter()
            r = 0
            while True:
                if iters is not None and r >= iters:
                    break
                if seconds is not None and r > 0 and time.perf_counter() - t0 >= seconds:
                    break
                for k in order(warmup + r):
                    samples[k].append(timers[k](candidates[k].fn))
                r += 1
                if iters is not None:
                    bar.update(task, completed=r)
                else:
                    bar.update(task, completed=min(time.perf_counter() - t0, seconds))
    finally:
        if gc_was_enabled:
            gc.enable()
    wall = time.perf_counter() - start

    stats = [summarize(s, c.batch, c.label) for s, c in zip(samples, candidates)]
    base = stats[baseline]
    base_samples = np.asarray(samples[baseline])
    ratios_p50 = {s.label: (s.p50_ms / base.p50_ms if base.p50_ms > 0 else math.nan) for s in stats}
    ratios_paired = {}
    for s, xs in zip(stats, samples):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios_paired[s.label] = float(np.median(np.asarray(xs) / base_samples))
    warnings = [w for w in (cv_warning(s) for s in stats) if w]
    return InterleavedResult(
        stats=stats,
        baseline=base.label,
        ratios_p50=ratios_p50,
        ratios_paired=ratios_paired,
        rounds=r,
        warmup=warmup,
        rotate=rotate,
        wall_s=wall,
        warnings=warnings,
    )


def measure(
    fn: Callable[[], object],
    *,
    label: str = "model",
    batch: int = 1,
    device: str = "cpu",
    sync: Callable[[], None] | None = None,
    warmup: int = DEFAULT_WARMUP,
    iters: int | None = None,
    seconds: float | None = None,
    progress: bool | None = None,
) -> LatencyStats:
    """Time one callable: ``warmup`` untimed runs, then ``iters`` runs or ``seconds`` of runs."""
    result = compare_latency(
        [Candidate(label, fn, sync, device, batch)],
        warmup=warmup,
        iters=iters,
        seconds=seconds,
        progress=progress,
        description=label,
    )
    return result.stats[0]
