"""``run_sweep``: every (checkpoint, rank budget, precision) point converted, judged and timed, and
the frontier written into OUT.

1. Check everything the user gave (checkpoints, budgets, data, OUT) before any work.
2. Run the jobs not finished in OUT on Ray, in parallel; save each as it finishes.
3. Time all finished points of the target in one task, interleaved (unless OUT already holds a
   timing of exactly these points with these settings).
4. Write sweep.json, sweep.md, frontier.png and report.html from everything finished.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from compactify import __version__
from compactify.arguments import existing_file, parse_batches
from compactify.converter.load.checkpoint import load_checkpoint
from compactify.converter.load.ingest import build_source
from compactify.converter.lowrank.rule_syntax import parse_budgets
from compactify.errors import BadInputError
from compactify.harness.machine import machine_summary
from compactify.harness.report import write_json
from compactify.harness.sweep import frontier as F
from compactify.harness.sweep.conversion_job import JobSpec
from compactify.harness.sweep.evaluation import DIGITS, load_eval_data
from compactify.harness.sweep.grid import (
    Checkpoint,
    check_precisions,
    make_jobs,
    settings_key,
    unique_labels,
)
from compactify.harness.sweep.html_report import sweep_html
from compactify.harness.sweep.layout import SweepFolder
from compactify.harness.sweep.plot import frontier_png
from compactify.harness.sweep.ray_backend import (
    ray_session,
    run_conversions,
    time_target,
)
from compactify.harness.sweep.tables import sweep_markdown
from compactify.models.data import trained_on_digits
from compactify.targets import target_for
from compactify.targets.calibration import read_npz

DEFAULT_BUDGETS = "flops:0.3,flops:0.5,energy:0.99"
DEFAULT_SECONDS = 2.0  # of interleaved rounds per batch size


@dataclasses.dataclass
class SweepOptions:
    budgets: str | Sequence[str] = DEFAULT_BUDGETS
    fp16: bool = False
    int8: bool = False
    data: str | None = None  # "digits" or FILE.npz; None: digits for checkpoints trained on it
    calibration: str | None = None  # --int8 calibration FILE.npz (default: digits training images)
    runtime: str = "ort"
    batches: Sequence[int] | str = (1,)
    threads: int = 1
    seconds: float | None = DEFAULT_SECONDS
    iters: int | None = None
    warmup: int = 10
    max_accuracy_drop: float = 1.0
    ray_address: str | None = None
    bench_resource: str | None = None
    num_cpus: int | None = None  # of a local Ray instance (default: all)
    arch: str | None = None
    arch_kwargs: dict | None = None
    input_shape: tuple[int, ...] | None = None
    retry_failed: bool = False


def run_sweep(checkpoints: Sequence[str | Path], out: str | Path, options: SweepOptions | None = None,
              echo: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Run the sweep into ``out``; returns the summary written to sweep.json."""
    options = options or SweepOptions()
    budgets = parse_budgets(options.budgets)
    precisions = check_precisions([p for p, on in (("fp16", options.fp16), ("int8", options.int8)) if on],
                                  options.runtime)
    batches = [str(b) for b in parse_batches(options.batches)]
    _check_numbers(options)
    folder = SweepFolder(out)
    folder.check()
    ckpts, payloads = _read_checkpoints(checkpoints, options)
    data_name, data_arrays, data_sha = _read_data(options, ckpts)
    calibration = _read_calibration(options, ckpts)
    key = settings_key({"data": data_sha or data_name, "arch": options.arch, "arch_kwargs": options.arch_kwargs,
                        "input_shape": options.input_shape, "runtime": options.runtime,
                        "calibration": hashlib.sha256(calibration).hexdigest() if calibration else None})
    jobs = make_jobs(ckpts, budgets, precisions, key)
    state = {"checkpoints": [str(c.path) for c in ckpts], "budgets": budgets, "precisions": list(precisions),
             "runtime": options.runtime, "data": data_name, "settings_key": key}
    with folder.locked():
        results = {j.id: folder.finished(j.id, options.retry_failed) for j in jobs}
        todo = [j for j in jobs if results[j.id] is None]
        if len(todo) < len(jobs):
            echo(f"resuming: {len(jobs) - len(todo)} of {len(jobs)} conversions already in {folder.out}")
        latency = folder.latency(options.runtime)
        timing = _timing_settings(options, batches)
        with _ray_if_needed(options, todo, latency, timing, jobs, results) as session:
            folder.begin(state)  # once Ray is up: a cluster that cannot be reached leaves no folder behind
            if todo:
                _run_jobs(todo, options, payloads, data_arrays, calibration, folder, results, echo)
            points = _points(jobs, results, folder)
            timing["points"] = sorted(p["key"] for p in points if p["status"] == "ok")
            if timing["points"] and (latency is None or latency.get("settings") != timing):
                latency = _time_points(points, options, batches, folder, session, echo)
                latency["settings"] = timing
                folder.save_latency(options.runtime, latency)
        summary = _summary(ckpts, budgets, precisions, batches, points, latency if timing["points"] else None,
                           options, data_name, session)
        _write_outputs(folder, summary, points)
    return summary


def _check_numbers(options: SweepOptions) -> None:
    if not (isinstance(options.max_accuracy_drop, (int, float)) and math.isfinite(options.max_accuracy_drop)
            and options.max_accuracy_drop >= 0):
        raise BadInputError(f"--max-accuracy-drop must be a number of points >= 0, got {options.max_accuracy_drop}")
    if options.threads < 1:
        raise BadInputError(f"--threads must be >= 1, got {options.threads}")
    if options.num_cpus is not None and options.num_cpus < 1:
        raise BadInputError(f"--num-cpus must be >= 1, got {options.num_cpus}")
    if options.num_cpus is not None and options.ray_address:
        raise BadInputError("--num-cpus sizes a local Ray instance; a cluster given by --ray-address has its own")
    if options.seconds is not None and options.iters is not None:
        raise BadInputError("give either --seconds or --iters, not both")
    if options.seconds is not None and not options.seconds > 0:
        raise BadInputError(f"--seconds must be > 0, got {options.seconds}")
    if options.iters is not None and options.iters < 1:
        raise BadInputError(f"--iters must be >= 1, got {options.iters}")


def _read_checkpoints(paths: Sequence[str | Path], options: SweepOptions) -> tuple[list[Checkpoint], dict[str, bytes]]:
    """Each checkpoint loaded once here, so that a bad one is refused before any work."""
    if not paths:
        raise BadInputError("give at least one checkpoint to sweep")
    paths = [Path(p) for p in paths]
    for p in paths:
        existing_file(p, "checkpoint")
    ckpts, payloads = [], {}
    for path, label in zip(paths, unique_labels(paths)):
        loaded = load_checkpoint(path)
        source = build_source(loaded, options.arch, options.arch_kwargs, options.input_shape)
        if not source.input_shape:
            raise BadInputError(f"the input shape of {path.name} is unknown: pass --input-shape N,C,H,W")
        ckpts.append(Checkpoint(path, label, loaded.sha256, tuple(int(d) for d in source.input_shape),
                                trained_on_digits(source.meta)))
        payloads[label] = path.read_bytes()
    return ckpts, payloads


def _read_data(options: SweepOptions, ckpts: Sequence[Checkpoint]):
    """(what the points are judged on, the arrays of a --data file or None, the file's sha256 or None)."""
    data = options.data
    if data is None:
        strangers = [c.label for c in ckpts if not c.on_digits]
        if strangers:
            raise BadInputError(f"{', '.join(strangers)} was not trained on the built-in digits: give --data FILE.npz "
                                "(held-out inputs x, and labels if you have them) to judge its points on")
        return DIGITS, None, None
    if data == DIGITS:
        return DIGITS, None, None
    shapes = {c.input_shape[1:] for c in ckpts}
    if len(shapes) != 1:
        raise BadInputError("--data FILE.npz judges every checkpoint on the same inputs, but the checkpoints take "
                            f"different input shapes {sorted(shapes)}")
    arrays = load_eval_data(data, ckpts[0].input_shape)
    return arrays.what, arrays, hashlib.sha256(Path(data).read_bytes()).hexdigest()


def _read_calibration(options: SweepOptions, ckpts: Sequence[Checkpoint]) -> bytes | None:
    if not options.int8:
        if options.calibration:
            raise BadInputError("--calibration is for --int8; add --int8 or drop it")
        return None
    if options.calibration:
        for c in ckpts:
            read_npz(options.calibration, c.input_shape)
        return Path(options.calibration).read_bytes()
    strangers = [c.label for c in ckpts if not c.on_digits]
    if strangers:
        raise BadInputError(f"--int8 needs calibration inputs for {', '.join(strangers)}: give --calibration FILE.npz")
    return None


def _timing_settings(options: SweepOptions, batches: Sequence[str]) -> dict[str, Any]:
    return {"runtime": options.runtime, "batches": list(batches), "threads": options.threads,
            "seconds": options.seconds, "iters": options.iters, "warmup": options.warmup,
            "bench_resource": options.bench_resource, "ray_address": options.ray_address}


class _NoRay:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _ray_if_needed(options, todo, latency, timing, jobs, results):
    """Ray is started only when there is work: a finished sweep re-run just rewrites its reports."""
    ok = sorted(f"{j.id}:{p['precision']}" for j in jobs if (results[j.id] or {}).get("status") == "ok"
                for p in results[j.id]["points"])
    if not todo and latency is not None and latency.get("settings") == {**timing, "points": ok}:
        return _NoRay()
    return ray_session(options.ray_address, options.num_cpus, options.bench_resource)


def _run_jobs(todo, options, payloads, data_arrays, calibration, folder, results, echo) -> None:
    by_id = {j.id: j for j in todo}
    calls = []
    for j in todo:
        spec = JobSpec(j.id, j.checkpoint.path.name, j.budget, j.precisions, options.runtime,
                       "file" if data_arrays is not None else DIGITS, options.arch, options.arch_kwargs,
                       tuple(options.input_shape) if options.input_shape else None, calibration is not None)
        calls.append((j.id, (spec, payloads[j.checkpoint.label], data_arrays, calibration)))
    echo(f"converting {len(todo)} job(s) on Ray")
    count = [0]

    def done(result: dict) -> None:
        job = by_id[result["id"]]
        results[job.id] = folder.save_job(result, job.checkpoint.path)
        count[0] += 1
        what = f"{job.checkpoint.label} --rank {job.budget}"
        if result["status"] == "ok":
            scores = ", ".join(f"{p['precision']} {_score_text(p)}" for p in result["points"])
            echo(f"[{count[0]}/{len(todo)}] {what}: {scores} ({result['seconds']:.1f} s)")
        else:
            echo(f"[{count[0]}/{len(todo)}] {what}: failed: {result['error']}")

    run_conversions(calls, done, echo)


def _score_text(point: dict) -> str:
    if point.get("accuracy") is not None:
        return f"accuracy {100 * point['accuracy']:.2f}%"
    return f"agreement {100 * point['agreement']:.2f}%"


def _points(jobs, results, folder: SweepFolder) -> list[dict[str, Any]]:
    """One row per (checkpoint, budget, precision); a failed job gives a failed row per precision."""
    points = []
    for j in jobs:
        r = results[j.id]
        base = {"job": j.id, "checkpoint": j.checkpoint.label, "checkpoint_path": str(j.checkpoint.path),
                "budget": j.budget, "status": r["status"]}
        if r["status"] != "ok":
            points += [{**base, "key": f"{j.id}:{p}", "precision": p, "error": r["error"]} for p in j.precisions]
            continue
        for p in r["points"]:
            points.append({**base, **p, "key": f"{j.id}:{p['precision']}",
                           "artifact_path": str(Path("points") / j.id / p["artifact"]),
                           "input_shape": r["input_shape"], "params": r["params"], "flops": r["flops"],
                           "flops_ratio": r["flops_ratio"], "truncation_error": r["truncation_error"],
                           "conversion_seconds": r["seconds"]})
    return points


def _time_points(points, options, batches, folder: SweepFolder, session, echo) -> dict[str, Any]:
    ok = [p for p in points if p["status"] == "ok"]
    where = f"on a node with {options.bench_resource}" if options.bench_resource else "in one Ray task"
    echo(f"timing {len(ok)} point(s) on {options.runtime} at batch {', '.join(batches)}, interleaved, {where}")
    artifacts = [(p["key"], f"{p['checkpoint']} {p['budget']} {p['precision']}", p["artifact"],
                  _artifact_files(folder.artifact(p["job"], p["artifact"])), p["input_shape"]) for p in ok]
    return time_target((artifacts, options.runtime, [int(b) for b in batches]),
                       {"threads": options.threads, "seconds": options.seconds, "iters": options.iters,
                        "warmup": options.warmup}, options.bench_resource, echo)


def _artifact_files(path: Path) -> dict[str, bytes]:
    """An artifact's bytes and those of the files it needs beside it (an OpenVINO IR's weights), by name."""
    return {p.name: p.read_bytes() for p in [path, *target_for(path).companions(path)]}


def _summary(ckpts, budgets, precisions, batches, points, latency, options, data_name, session) -> dict[str, Any]:
    for p in points:
        p["latency"] = {b: latency["latency"][b][p["key"]] for b in batches
                        if latency and p["key"] in latency["latency"].get(b, {})}
    labels = any(p.get("accuracy") is not None for p in points)
    quality_name = "accuracy" if labels else "top-1 agreement with the untruncated model"
    recommended = {}
    for b in batches:
        front = F.pareto(points, b)
        speed = F.speedups(points, b)
        rec = F.recommend(points, b, options.max_accuracy_drop)
        for p in points:
            p.setdefault("frontier", [])
            p.setdefault("recommended", [])
            p.setdefault("speedup", {})
            if p["key"] in front:
                p["frontier"].append(b)
            if p["key"] in speed:
                p["speedup"][b] = speed[p["key"]]
        if rec is not None:
            rec["recommended"].append(b)
            recommended[b] = {"key": rec["key"], "checkpoint": rec["checkpoint"], "budget": rec["budget"],
                              "precision": rec["precision"], "quality": F.quality(rec), "drop": F.drop_points(rec),
                              "p50_ms": rec["latency"][b]["p50_ms"], "speedup": speed.get(rec["key"]),
                              "flops": rec["flops"], "artifact": rec["artifact_path"]}
        else:
            recommended[b] = None
    failed = [p for p in points if p["status"] != "ok"]
    warnings = list((latency or {}).get("warnings") or [])
    if failed:
        warnings.insert(0, f"{len(failed)} of {len(points)} point(s) failed; their errors are in the table")
    return {
        "compactify_version": __version__,
        "kind": "compactify-sweep",
        "checkpoints": [c.label for c in ckpts],
        "budgets": budgets,
        "precisions": list(precisions),
        "runtime": options.runtime,
        "batches": list(batches),
        "threads": options.threads,
        "data": data_name,
        "labels": labels,
        "quality_name": quality_name,
        "max_accuracy_drop": options.max_accuracy_drop,
        "recommended": recommended,
        "latency_settings": (latency or {}).get("settings"),
        "latency_node": (latency or {}).get("node"),
        "machine": (latency or {}).get("machine"),
        "machine_summary": machine_summary(latency["machine"]) if latency else None,
        "ray": session,
        "warnings": warnings,
        "points": points,
    }


def _write_outputs(folder: SweepFolder, summary: dict, points: list[dict]) -> None:
    png = frontier_png(points, summary["batches"], summary["runtime"], summary["quality_name"])

    write_json(folder.out / "sweep.json", summary)
    folder.write("sweep.md", sweep_markdown(summary, points))
    folder.write("frontier.png", png)
    folder.write("report.html", sweep_html(summary, points, png))
