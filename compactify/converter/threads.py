"""How many threads a conversion gives torch: never more than the cores it may run on, and fewer
when other work already keeps some of them busy.

torch's default is one thread per core of the machine. On a shared machine that oversubscribes:
torch's threads wait for each other at every operator while the other work holds the cores, and a
float64 convolution then took 10x its time (a conversion measured 2 min 12 s at load 5 to 7 on 2
cores, against 17 s quiet). So a conversion counts the cores of its affinity mask, takes away those
the 1-minute load average says are busy with something else, and keeps at least one.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

from compactify.measure.latency import pinned_threads


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def conversion_threads(current: int | None = None) -> int:
    """Threads for torch: the usable cores less the busy ones, at least 1, never more than ``current``
    (torch's setting, which the user may have lowered with OMP_NUM_THREADS or torch.set_num_threads)."""
    cores = usable_cores()
    try:
        # This process is mostly idle while it loads, so the load average is the others' work.
        busy = int(os.getloadavg()[0])
    except OSError:
        busy = 0
    free = max(1, cores - busy)
    return max(1, min(free, current if current else cores))


@contextlib.contextmanager
def conversion_thread_limit() -> Iterator[int]:
    """Run the block with torch's intra-op threads set by ``conversion_threads``; yields the count."""
    threads = conversion_threads(torch.get_num_threads())
    with pinned_threads(threads):
        yield threads
