"""The sweep's tasks on a real local Ray instance when Ray's memory monitor kills them (issue 22: the
first sweep under load died with exit 2 and a message cut mid-word). A task raising Ray's
OutOfMemoryError stands for one the monitor killed: the driver sees the same exception type."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from compactify.harness.sweep import ray_backend

# What Ray says when its memory monitor kills a task (abridged; the real one is longer still).
OOM_MESSAGE = ("Task was killed due to the node running low on memory.\nMemory on the node (IP: 10.0.0.1) where "
               "the task was running was 7.61GB / 7.77GB (0.979), which exceeds the memory usage threshold of "
               "0.95. Ray killed this worker because it was the most recently scheduled task.\nRefer to the "
               "documentation on how to address the out of memory issue: https://docs.ray.io/en/latest/ray-core/"
               "scheduling/ray-oom-prevention.html. Consider provisioning more memory on this node or reducing "
               "task parallelism by requesting more CPUs per task. Set max_retries to enable retry when the task "
               "crashes due to OOM.")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield ray
    finally:
        ray.shutdown()


def _killed_first(killed_times: int):
    """A task body that the memory monitor "kills" on its first ``killed_times`` attempts; each attempt
    leaves a line in its log file. Defined here, inside a function, so that Ray ships it by value."""

    def body(job_id: str, log: str, message: str = OOM_MESSAGE):
        import ray

        path = Path(log)
        attempt = len(path.read_text().splitlines()) + 1 if path.exists() else 1
        with path.open("a") as fh:
            fh.write(f"{attempt}\n")
        if attempt <= killed_times:
            raise ray.exceptions.OutOfMemoryError(message)
        return {"id": job_id, "status": "ok", "attempts": attempt}

    return body


def test_a_conversion_killed_for_memory_runs_again_with_fewer_at_once(local_ray, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_backend, "run_job", _killed_first(1))
    logs = {job: tmp_path / f"{job}.log" for job in ("a", "b", "c")}
    results, lines = [], []
    ray_backend.run_conversions([(job, (job, str(log))) for job, log in logs.items()], results.append, lines.append)
    assert sorted((r["id"], r["status"], r["attempts"]) for r in results) == [("a", "ok", 2), ("b", "ok", 2),
                                                                              ("c", "ok", 2)]
    assert len(lines) == 3 and all("killed by Ray's memory monitor" in line for line in lines)
    assert lines[-1].endswith("1 conversion(s) at once")  # halved from the two CPUs' worth


def test_a_conversion_killed_every_time_fails_with_the_whole_message(local_ray, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_backend, "run_job", _killed_first(99))
    results: list[dict] = []
    ray_backend.run_conversions([("a", ("a", str(tmp_path / "a.log")))], results.append)
    (result,) = results
    assert result["status"] == "failed"
    assert result["error"].startswith("the Ray task failed: OutOfMemoryError: Task was killed due to the node")
    assert result["error"].endswith("Set max_retries to enable retry when the task crashes due to OOM.")
    assert "\n" not in result["error"]
    assert len((tmp_path / "a.log").read_text().splitlines()) == ray_backend.OOM_ATTEMPTS


def test_the_timing_killed_for_memory_runs_again(local_ray, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_backend, "time_points", _killed_first(1))
    monkeypatch.setattr(ray_backend, "OOM_PAUSE_S", 0.0)
    lines: list[str] = []
    result = ray_backend.time_target(("t", str(tmp_path / "t.log")), {}, None, lines.append)
    assert result["attempts"] == 2 and result["node"]["hostname"]
    assert len(lines) == 1 and "the timing was killed by Ray's memory monitor" in lines[0]


def test_the_timing_killed_every_time_is_an_internal_failure_with_the_whole_message(local_ray, tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(ray_backend, "time_points", _killed_first(99))
    monkeypatch.setattr(ray_backend, "OOM_PAUSE_S", 0.0)
    with pytest.raises(ray_backend.TimingFailed) as caught:
        ray_backend.time_target(("t", str(tmp_path / "t.log")), {}, None)
    assert caught.value.exit_code == 1  # exit 2 is for the user's mistakes
    text = str(caught.value)
    assert "Set max_retries to enable retry when the task crashes due to OOM." in text and "\n" not in text
    assert "run the same command again" in text
    assert len((tmp_path / "t.log").read_text().splitlines()) == ray_backend.OOM_ATTEMPTS
