"""The sweep's output folder, laid out so that an interrupted sweep resumes where it stopped.

    OUT/sweep-state.json        the sweep's settings; marks OUT as a sweep's folder (written first)
    OUT/points/ID/              one finished job: its conversion (compact.onnx, report.json, ...) and
                                job.json (its points' scores), written as a whole (``atomic_dir``)
    OUT/points/ID.failed.json   a job that failed, with its one-line error
    OUT/latency-RUNTIME.json    the last timing of the target's points (reused while they are the same)
    OUT/sweep.json, sweep.md, frontier.png, report.html   written at the end, each atomically

A job is finished when its folder (or failure file) exists; nothing is ever half there, since
each is renamed into place complete. The final files are rewritten by every run, from the
finished jobs. compactify never deletes what it did not write: OUT must be new, empty, or a
sweep's folder.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from compactify.errors import BadInputError
from compactify.harness.report import write_json, write_text
from compactify.outputs import _TargetLock, atomic_dir, atomic_file  # _TargetLock: the lock convert takes too

STATE_FILE = "sweep-state.json"
JOB_FILE = "job.json"
KIND = "compactify-sweep"
FINAL_FILES = ("sweep.json", "sweep.md", "frontier.png", "report.html")


class SweepFolder:
    def __init__(self, out: str | Path):
        self.out = Path(out).absolute()
        self.points = self.out / "points"

    def check(self) -> str:
        """"new", "empty" or "resume"; refuses a path that is not a folder a sweep may write."""
        out = self.out
        if out.is_symlink():
            raise BadInputError(f"-o {out} is a symbolic link; give the folder it points to, or another -o")
        if not out.exists():
            return "new"
        if not out.is_dir():
            raise BadInputError(f"output path {out} exists and is not a folder; choose another -o")
        if not any(out.iterdir()):
            return "empty"
        state = self.state()
        if state is None:
            raise BadInputError(f"output folder {out} already exists and is not a sweep's folder (no {STATE_FILE} "
                                "written by compactify sweep); choose another -o")
        return "resume"

    def state(self) -> dict | None:
        try:
            data = json.loads((self.out / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("kind") == KIND else None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Held for the whole run: a second sweep into the same OUT is refused at once."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        lock = _TargetLock(self.out).acquire()
        try:
            yield
        finally:
            lock.release()

    def begin(self, state: dict[str, Any]) -> None:
        self.points.mkdir(parents=True, exist_ok=True)
        write_json(self.out / STATE_FILE, {"kind": KIND, **state})

    # --- jobs

    def finished(self, job_id: str, retry_failed: bool = False) -> dict | None:
        """The result of a finished job, or None when it must run."""
        done = self.points / job_id / JOB_FILE
        if done.is_file():
            return json.loads(done.read_text())
        failed = self.points / f"{job_id}.failed.json"
        if failed.is_file() and not retry_failed:
            return json.loads(failed.read_text())
        return None

    def save_job(self, result: dict[str, Any], source_path: Path) -> dict:
        """Write one job's result (its artifacts come as bytes); returns it without the bytes."""
        result = dict(result)
        files = result.pop("files", None) or {}
        worker_path = result.pop("source_checkpoint", None)
        if result["status"] != "ok":
            write_json(self.points / f"{result['id']}.failed.json", result)
            return result
        with atomic_dir(self.points / result["id"]) as tmp:
            for name, data in files.items():
                if worker_path and name in ("report.json", "report.md"):
                    # The worker converted a copy: the report names the checkpoint verify must rebuild.
                    data = data.decode("utf-8").replace(worker_path, str(source_path.resolve())).encode("utf-8")
                (tmp / name).write_bytes(data)
            (tmp / JOB_FILE).write_text(json.dumps(result, indent=2) + "\n")
        (self.points / f"{result['id']}.failed.json").unlink(missing_ok=True)  # a retried job that now passed
        return result

    def artifact(self, job_id: str, name: str) -> Path:
        return self.points / job_id / name

    # --- latency and the final files

    def latency(self, runtime: str) -> dict | None:
        try:
            return json.loads((self.out / f"latency-{runtime}.json").read_text())
        except (OSError, ValueError):
            return None

    def save_latency(self, runtime: str, payload: dict) -> None:
        write_json(self.out / f"latency-{runtime}.json", payload)

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.out / name
        if isinstance(content, bytes):
            with atomic_file(path) as tmp:
                tmp.write_bytes(content)
            return path
        return write_text(path, content)
