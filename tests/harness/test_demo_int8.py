"""The demo shows INT8: compact.int8.onnx calibrated on digits, verified with its own tolerance and timed
against the fp32 compact model on ONNX Runtime."""

from __future__ import annotations

import json

from compactify.harness.demo import DemoConfig, run_demo


def test_tiny_demo_quantizes_verifies_and_times_int8(tmp_path):
    config = DemoConfig(width=0.25, hidden=8, epochs=1, batches=(1,), bench_seconds=0.05, bench_warmup=1)
    result = run_demo(tmp_path / "demo", config, progress=False)
    out = result.out_dir
    assert (out / "converted" / "compact.int8.onnx").is_file()
    int8 = result.report["int8"]
    assert int8["held_out"]["source"] == "digits" and int8["top1_agreement"] is not None
    judged = {c.label: c for c in result.verification.candidates}
    candidate = judged["compact.int8.onnx (ort)"]
    assert candidate.passed and candidate.tolerance.startswith("0.1 x max|ref|")
    assert candidate.inputs.startswith("the digits test split")
    ort = next(r for r in result.speedups() if r["runtime"] == "ort")
    assert ort["int8_ms"] > 0 and ort["int8_speedup"] > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["int8"]["top1_agreement"] == int8["top1_agreement"] and "layers" not in saved["int8"]


def test_demo_without_int8(tmp_path):
    config = DemoConfig(width=0.25, hidden=8, epochs=1, batches=(1,), bench_seconds=0.05, bench_warmup=1, int8=False)
    result = run_demo(tmp_path / "demo", config, progress=False)
    assert "int8" not in result.report and not (result.out_dir / "converted" / "compact.int8.onnx").exists()
    assert all("int8_ms" not in r for r in result.speedups())
