"""Running a sweep's jobs on Ray: a local instance started and stopped here, or an existing cluster.

Conversions are Ray tasks of one CPU each, as many at once as the cluster has CPUs; their results
come back one by one (``ray.wait``) so the driver saves each as soon as it is done, and a task
that dies (its worker crashed, ran out of memory) is that job's failure, not the sweep's. The
latency of a target is one task, on a node that has the ``bench_resource`` label when one is
given (``ray start --resources='{"cpu-x86": 1}'``), holding that unit for itself.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import socket
from types import ModuleType
from typing import Any, Callable, Iterator, Sequence

from compactify.errors import BadInputError
from compactify.harness.sweep.conversion_job import run_job
from compactify.harness.sweep.latency_job import time_points
from compactify.optional import optional_import

RAY_INSTALL = "pip install 'ray==2.60.0'"


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
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise BadInputError(f"cannot start or reach {where}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
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


def run_conversions(calls: Sequence[tuple[str, tuple]], on_done: Callable[[dict], None]) -> None:
    """Run ``conversion_job.run_job(*args)`` for each (job id, args) in parallel; ``on_done`` gets each
    result as it finishes."""
    ray = _ray()
    remote = ray.remote(num_cpus=1, max_retries=0)(run_job)
    stored: dict[int, Any] = {}  # each checkpoint's bytes (and data) go into the object store once

    def ref(arg):
        if isinstance(arg, (bytes, bytearray)) or hasattr(arg, "x"):
            if id(arg) not in stored:
                stored[id(arg)] = ray.put(arg)
            return stored[id(arg)]
        return arg

    pending = {remote.remote(*[ref(a) for a in args]): job_id for job_id, args in calls}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            job_id = pending.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # the task itself died: its worker crashed or was killed
                result = {"id": job_id, "status": "failed", "error": f"the Ray task failed: {_ray_error(exc)}"}
            on_done(result)
    finally:
        for ref in pending:  # interrupted: do not leave the cluster working for nobody
            ray.cancel(ref, force=True)


def time_target(args: tuple, kwargs: dict, bench_resource: str | None) -> dict[str, Any]:
    """``latency_job.time_points(*args, **kwargs)`` as one task, on the labelled node if asked."""
    ray = _ray()
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
    if bench_resource:
        options["resources"] = {bench_resource: 1}
    ref = ray.remote(**options)(_timed_on_node).remote(time_points, args, kwargs)
    try:
        return ray.get(ref)
    except Exception as exc:
        if isinstance(exc, BadInputError):
            raise
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BadInputError):
            raise cause from None
        raise BadInputError(f"timing the points failed: {_ray_error(exc)}") from None


def _timed_on_node(fn, args, kwargs):
    ray = _ray()
    result = fn(*args, **kwargs)
    result["node"] = {"hostname": platform.node(), "ray_node_id": ray.get_runtime_context().get_node_id()}
    return result


def _ray_error(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None)
    text = str(cause if cause is not None else exc)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith((" ", "\t"))]
    return f"{type(cause or exc).__name__}: {lines[-1] if lines else ''}"[:300]
