"""The demo end to end on a tiny configuration: it trains, converts, verifies and times."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from compactify.cli import main
from compactify.errors import BadInputError
from compactify.harness.demo import MARKER, DemoConfig, prepare_folder, run_demo


def test_tiny_demo_end_to_end(tmp_path):
    config = DemoConfig(width=0.25, hidden=8, epochs=1, batches=(1,), bench_seconds=0.05, bench_warmup=1)
    result = run_demo(tmp_path / "demo", config, progress=False)
    out = result.out_dir
    for name in ("expanded.safetensors", "expanded.onnx", "converted/compact.pt2", "converted/compact.onnx",
                 "converted/report.json", "results.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / MARKER).read_text())["status"] == "done"
    assert result.report["params_after"] < result.report["params_before"]
    assert result.verification.passed
    # Every exact candidate classifies the digits test split as the float64 reference does.
    assert result.verification.reference_accuracy == pytest.approx(result.training["test_accuracy"], abs=1e-6)
    speed = result.speedups()
    assert {(r["runtime"], r["batch"]) for r in speed} == {("ort", 1), ("torch", 1)}
    assert all(r["expanded_ms"] > 0 and r["contracted_ms"] > 0 for r in speed)
    saved = json.loads((out / "results.json").read_text())
    assert saved["verification"]["passed"] is True and len(saved["speedups"]) == 2


def test_demo_folder_rules(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BadInputError, match="not a compactify demo folder"):
        prepare_folder(other)
    r = CliRunner().invoke(main, ["demo", "-o", str(other)])
    assert r.exit_code == 2 and "not a compactify demo folder" in r.stderr
    assert (other / "notes.txt").read_text() == "keep me"
    old = tmp_path / "old"
    old.mkdir()
    (old / MARKER).write_text("{}")
    (old / "stale.onnx").write_text("x")
    assert list(prepare_folder(old).iterdir()) == [old / MARKER]  # a previous demo's folder is replaced
    assert prepare_folder(other, force=True) == other and not (other / "notes.txt").exists()
