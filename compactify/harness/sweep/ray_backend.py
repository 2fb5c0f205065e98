"""Running a sweep's jobs on Ray: a local instance started and stopped here, or an existing cluster.

Conversions are Ray tasks of one CPU each, as many at once as the cluster has CPUs; their results
come back one by one (``ray.wait``) so the driver saves each as soon as it is done, and a task
that dies (its worker crashed) is that job's failure, not the sweep's, reported whole in its row.
The latency of a target is one task, on a node that has the ``bench_resource`` label when one is
given (``ray start --resources='{"cpu-x86": 1}'``), holding that unit for itself.

Ray's memory monitor kills a task when its node runs short of memory (on a busy machine, a task that
would have fit). Such a task is run again, up to ``OOM_ATTEMPTS`` times in all: a conversion with
half as many conversions at once as were running when it was killed, the timing after a pause. A
task that is killed every time fails with Ray's whole message. The timing failing is not the
user's doing: it exits 1, and the finished conversions stay in OUT for the next run.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import platform
import socket
import time
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

from compactify.errors import BadInputError, CompactifyError, one_line
from compactify.harness.sweep.conversion_job import run_job
from compactify.harness.sweep.latency_job import time_points
from compactify.optional import optional_import

RAY_INSTALL = "pip install 'ray==2.60.0'"
OOM_ATTEMPTS = 3  # tries of a task that Ray's memory monitor killed, the first included
OOM_PAUSE_S = 5.0  # before the timing runs again: the memory a killed worker held comes back


class TimingFailed(CompactifyError):
    """The timing task failed for a reason of the machine's or Ray's, not the user's (exit 1)."""


def _ray() -> ModuleType:
    """Ray, imported when a sweep runs: compactify installs and runs its other commands without it."""
    return optional_import("ray", what="compactify sweep", hint=RAY_INSTALL)


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None, bench_resource: str | None) -> Iterator[dict[str, Any]]:
    """Ray connected (``address``) or started locally; yields what the sweep reports about it."""
    ray = _ray()
    common = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    if ray.is_initialized():
        raise BadInputError("Ray is already initialized in this process; call the sweep outside a Ray session")
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, **common)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False,
                     resources={bench_resource: 1} if bench_resource else None, **common)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        # A cluster the user named that does not answer is their input; a local instance that does not
        # start is this machine's failure (exit 1).
        error = BadInputError if address else CompactifyError
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise error(f"cannot start or reach {where}: {one_line(exc)}") from None
    try:
        resources = ray.cluster_resources()
        if bench_resource and resources.get(bench_resource, 0) < 1:
            raise BadInputError(f"no node of the Ray cluster has the resource {bench_resource!r} that --bench-resource "
                                f"asks for; start the benchmark node with ray start --resources='{{\"{bench_resource}\": 1}}'")
        yield {"address": address or "local", "started_here": not address, "cpus": resources.get("CPU"),
               "nodes": len([n for n in ray.nodes() if n.get("Alive")]), "bench_resource": bench_resource}
    finally:
        ray.shutdown()  # stops the local instance; from a cluster it only disconnects


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse at once an address nothing listens on: Ray itself retries for minutes before it gives up."""
    hostport = address.split("://", 1)[-1].rstrip("/")
    if hostport == "auto" or ":" not in hostport:
        return  # "auto" (and a bare host) are Ray's to resolve
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise BadInputError(f"cannot reach the Ray cluster at {address} ({why}); give --ray-address as head:6379 "
                            "or ray://head:10001, or leave it out for a local Ray instance") from None


def run_conversions(calls: Sequence[tuple[str, tuple]], on_done: Callable[[dict], None],
                    echo: Callable[[str], None] = lambda line: None) -> None:
    """Run ``conversion_job.run_job(*args)`` for each (job id, args) in parallel; ``on_done`` gets each
    result as it finishes. A job the memory monitor killed runs again, with fewer jobs at once."""
    ray = _ray()
    remote = ray.remote(num_cpus=1, max_retries=0)(run_job)
    stored: dict[int, Any] = {}  # each checkpoint's bytes (and data) go into the object store once

    def ref(arg):
        if isinstance(arg, (bytes, bytearray)) or hasattr(arg, "x"):
            if id(arg) not in stored:
                stored[id(arg)] = ray.put(arg)
            return stored[id(arg)]
        return arg

    queue = collections.deque(calls)
    attempts: collections.Counter = collections.Counter()
    at_once = len(calls)  # no limit of ours until a job is killed for memory: Ray runs one per CPU
    pending: dict[Any, tuple[str, tuple]] = {}
    try:
        while queue or pending:
            while queue and len(pending) < at_once:
                job_id, args = queue.popleft()
                attempts[job_id] += 1
                pending[remote.remote(*[ref(a) for a in args])] = (job_id, args)
            done, _ = ray.wait(list(pending), num_returns=1)
            job_id, args = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as exc:  # the task itself died: its worker crashed or was killed
                if _killed_for_memory(ray, exc) and attempts[job_id] < OOM_ATTEMPTS:
                    running = min(len(pending) + 1, int(ray.cluster_resources().get("CPU", 1)))
                    at_once = max(1, min(at_once, running) // 2)
                    echo(f"{job_id}: killed by Ray's memory monitor; running it again (attempt "
                         f"{attempts[job_id] + 1} of {OOM_ATTEMPTS}), {at_once} conversion(s) at once")
                    queue.appendleft((job_id, args))
                    continue
                result = {"id": job_id, "status": "failed", "error": f"the Ray task failed: {ray_error(exc)}"}
            on_done(result)
    finally:
        for ref in pending:  # interrupted: do not leave the cluster working for nobody
            ray.cancel(ref, force=True)


def time_target(args: tuple, kwargs: dict, bench_resource: str | None,
                echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """``latency_job.time_points(*args, **kwargs)`` as one task, on the labelled node if asked; run
    again after a pause when the memory monitor kills it."""
    ray = _ray()
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
    if bench_resource:
        options["resources"] = {bench_resource: 1}
    task = ray.remote(**options)(_timed_on_node)
    for attempt in range(1, OOM_ATTEMPTS + 1):
        try:
            return ray.get(task.remote(time_points, args, kwargs))
        except Exception as exc:
            if isinstance(exc, BadInputError):
                raise
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BadInputError):
                raise cause from None
            if not (_killed_for_memory(ray, exc) and attempt < OOM_ATTEMPTS):
                raise TimingFailed(f"timing the points failed: {ray_error(exc)} (the finished conversions are kept: "
                                   "run the same command again to time them)") from None
            echo(f"the timing was killed by Ray's memory monitor; running it again in {OOM_PAUSE_S * attempt:g} s "
                 f"(attempt {attempt + 1} of {OOM_ATTEMPTS})")
            time.sleep(OOM_PAUSE_S * attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def _timed_on_node(fn, args, kwargs):
    ray = _ray()
    result = fn(*args, **kwargs)
    result["node"] = {"hostname": platform.node(), "ray_node_id": ray.get_runtime_context().get_node_id()}
    return result


def _killed_for_memory(ray: ModuleType, exc: BaseException) -> bool:
    """Whether Ray's memory monitor killed the task (a RayTaskError wrapping it is an instance too)."""
    return isinstance(exc, ray.exceptions.OutOfMemoryError)


def ray_error(exc: BaseException) -> str:
    """What a failed task says, whole, in one line: the exception raised inside the task (not Ray's
    traceback around it), or Ray's own message for a task it killed or lost."""
    cause = getattr(exc, "cause", None)
    shown = cause if cause is not None else exc
    return f"{type(shown).__name__}: {one_line(shown)}"
