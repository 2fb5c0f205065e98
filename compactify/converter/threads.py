"""How many threads a conversion gives torch: never more than the cores it may run on, and fewer
when other work already keeps some of them busy.

torch's default is one thread per core of the machine. On a shared machine that oversubscribes:
torch's threads wait for each other at every operator while the other work holds the cores, and a
float64 convolution then took 10x its time (a conversion measured 2 min 12 s at load 5 to 7 on 2
cores, against 17 s quiet). So a conversion counts the cores of its affinity mask, takes away those
busy with something else right now, and keeps at least one.

"Right now" is the count of runnable threads the kernel reports (/proc/loadavg), less this one,
sampled three times over 20 ms: the 1-minute load average still counts work that has
ended (a conversion right after another one got one thread of two on a quiet machine). Where that
count is not available, the 1-minute average stands in.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
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
    busy = busy_cores()
    free = max(1, cores - busy)
    return max(1, min(free, current if current else cores))


def busy_cores(samples: int = 3, every_s: float = 0.01) -> int:
    """Cores other work keeps busy now: the median of ``samples`` counts of runnable threads but this
    one, or the 1-minute load average where the kernel does not give that count."""
    counts = []
    for i in range(samples):
        running = runnable_threads()
        if running is None:
            break
        counts.append(max(0, running - 1))
        if i < samples - 1:
            time.sleep(every_s)
    if counts:
        return int(statistics.median(counts))
    try:
        return int(os.getloadavg()[0])
    except OSError:
        return 0


def runnable_threads() -> int | None:
    """Threads runnable on the whole machine at this moment (this one among them), or None."""
    try:
        with open("/proc/loadavg", encoding="ascii") as fh:
            return int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def conversion_thread_limit() -> Iterator[int]:
    """Run the block with torch's intra-op threads set by ``conversion_threads``; yields the count."""
    threads = conversion_threads(torch.get_num_threads())
    with pinned_threads(threads):
        yield threads
