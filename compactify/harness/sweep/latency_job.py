"""The latency of every point of one target, timed in one process on one node.

Latencies measured in different processes, at different times or on different nodes are not
comparable (another job's load, another CPU); so the sweep times all its points of a target
together, after the conversions are done: per batch size one interleaved round-robin over all
artifacts (``measure.latency.compare_latency``), every runtime's threads pinned.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from compactify.errors import BadInputError
from compactify.harness.bench import make_feeds
from compactify.harness.machine import machine_info
from compactify.measure.latency import HIGH_CV, Candidate, compare_latency, pinned_threads
from compactify.runtimes import thread_options
from compactify.targets import target_for

DEFAULT_WARMUP = 10


def time_points(artifacts: Sequence[tuple[str, str, str, Mapping[str, bytes], Sequence[int]]], runtime: str,
                batches: Sequence[int], threads: int = 1, seconds: float | None = None, iters: int | None = None,
                warmup: int = DEFAULT_WARMUP) -> dict[str, Any]:
    """``artifacts``: (point key, its label, file name, its files' bytes by name (the file and those it needs
    beside it), input shape N,C,H,W) per point. Returns per batch size each point's latency statistics (ms)
    by key, and the machine they were measured on."""
    opts = thread_options(runtime, threads)  # torch threads: pinned_threads
    by_batch: dict[str, dict[str, dict]] = {}
    noisy: list[str] = []
    with tempfile.TemporaryDirectory(prefix="compactify-sweep-bench-") as tmp, contextlib.ExitStack() as stack, \
            pinned_threads(threads):
        runners = []
        for i, (key, label, name, files, shape) in enumerate(artifacts):
            folder = Path(tmp) / str(i)  # one folder per point: its files keep their names (an IR finds its .bin)
            folder.mkdir()
            for file, data in files.items():
                (folder / file).write_bytes(data)
            path = folder / name
            target = target_for(path)  # the file keeps its name's suffix: compact.int8.onnx is the int8 artifact
            if target.runtime != runtime:
                raise BadInputError(f"{name} runs on {target.runtime}, not on the sweep's --runtime {runtime}")
            runner = stack.enter_context(target.open(path, **opts))
            runners.append((key, label, runner, tuple(int(d) for d in shape[1:])))
        machine = machine_info()
        for batch in batches:
            candidates = [Candidate(label, runner.bind(make_feeds(runner.inputs, batch, shape, label)),
                                    runner.synchronize, "cpu", batch) for _, label, runner, shape in runners]
            result = compare_latency(candidates, warmup=warmup, seconds=seconds, iters=iters, progress=False,
                                     description=f"batch {batch}")
            by_batch[str(batch)] = {key: s.to_dict() for (key, *_), s in zip(runners, result.stats)}
            noisy.extend(f"{s.label} b{batch} ({s.cv:.0%})" for s in result.stats if s.high_cv)
    return {"runtime": runtime, "threads": threads, "batches": list(batches), "seconds": seconds, "iters": iters,
            "warmup": warmup, "latency": by_batch, "machine": machine, "warnings": _noise_warning(noisy)}


def _noise_warning(noisy: Sequence[str]) -> list[str]:
    if not noisy:
        return []
    shown = ", ".join(noisy[:4]) + (f" and {len(noisy) - 4} more" if len(noisy) > 4 else "")
    return [f"{len(noisy)} timing(s) have a coefficient of variation above {HIGH_CV:.0%} ({shown}): the machine was "
            "noisy; compare ratios only, or time longer (--seconds) on a quiet node"]
