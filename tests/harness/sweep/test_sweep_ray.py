"""A real sweep on a real local Ray instance (2 CPUs): four jobs of a tiny digits net, one of them a
budget that cannot be met, then a resume that redoes only what is missing."""

from __future__ import annotations

import json
import os

import pytest

from compactify.harness.sweep import SweepOptions, run_sweep


@pytest.fixture(scope="module")
def swept(tiny_digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    lines: list[str] = []
    # flops:0.01 is out of reach for this net (its first conv alone costs more): a point that fails.
    options = SweepOptions(budgets="flops:0.5,energy:0.99,flops:0.01", batches="1,4", seconds=0.2, num_cpus=2)
    summary = run_sweep([tiny_digits], out, options, echo=lines.append)
    return out, summary, lines, options


def test_every_point_is_converted_judged_and_timed(swept):
    import ray

    out, summary, lines, _ = swept
    assert not ray.is_initialized()  # the local instance was stopped by the sweep
    assert {f.name for f in out.iterdir()} >= {"sweep.json", "sweep.md", "frontier.png", "report.html", "points"}
    on_disk = json.loads((out / "sweep.json").read_text())
    points = {p["budget"]: p for p in on_disk["points"]}
    assert set(points) == {"none", "flops:0.5", "energy:0.99", "flops:0.01"}
    failed = points["flops:0.01"]
    assert failed["status"] == "failed" and "out of reach" in failed["error"] and "\n" not in failed["error"]
    for budget in ("none", "flops:0.5", "energy:0.99"):
        p = points[budget]
        assert p["status"] == "ok"
        assert set(p["latency"]) == {"1", "4"} and all(p["latency"][b]["p50_ms"] > 0 for b in ("1", "4"))
        assert 0 <= p["accuracy"] <= 1 and 0 <= p["agreement"] <= 1
        assert (out / p["artifact_path"]).is_file()
    assert points["none"]["agreement"] == 1.0  # the contracted net is the untruncated one
    assert points["flops:0.5"]["flops"] < 0.6 * points["none"]["flops"]
    assert points["flops:0.5"]["accuracy"] < points["none"]["accuracy"] - 0.05  # an untrained-for truncation
    # report.json's one truncation figure (truncation.output_error.max_rel_error), as the sweep reads it
    assert points["none"]["truncation_error"] is None and points["flops:0.5"]["truncation_error"] > 0.01
    for b in ("1", "4"):
        rec = on_disk["recommended"][b]
        assert rec is not None and rec["budget"] in ("none", "energy:0.99")  # within 1 point of the source
        assert any(b in p["frontier"] for p in on_disk["points"])
    assert any("failed" in w for w in on_disk["warnings"])
    md = (out / "sweep.md").read_text()
    assert "out of reach" in md and "recommended" in md
    assert any("[4/4]" in line for line in lines)


def test_report_html_is_self_contained(swept):
    out = swept[0]
    text = (out / "report.html").read_text()
    assert "data:image/png;base64," in text
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_resumes_without_redoing_finished_points(swept, tiny_digits):
    out, _, _, options = swept
    points = out / "points"
    done = sorted(p for p in points.iterdir() if p.is_dir())
    stamps = {p.name: os.stat(p / "job.json").st_mtime_ns for p in done}
    # As if the sweep had been interrupted before the energy:0.99 job was saved.
    missing = next(p for p in done if "energy" in p.name)
    import shutil

    shutil.rmtree(missing)
    lines: list[str] = []
    summary = run_sweep([tiny_digits], out, options, echo=lines.append)
    assert any(line.startswith("resuming: 3 of 4") for line in lines)
    converted = [line for line in lines if line.startswith("[")]
    assert len(converted) == 1 and "energy:0.99" in converted[0]
    for p in done:
        if p != missing:
            assert os.stat(p / "job.json").st_mtime_ns == stamps[p.name]
    assert {p["budget"] for p in summary["points"] if p["status"] == "ok"} == {"none", "flops:0.5", "energy:0.99"}
