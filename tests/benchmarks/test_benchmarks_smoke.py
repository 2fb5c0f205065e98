"""Each benchmark's core on its smallest configuration: structure and exactness, never timings."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield {name: importlib.import_module(name) for name in ("contraction", "conversion_cost", "fidelity")}
    finally:
        sys.path.remove(str(BENCHMARKS))


TINY = (("input_size", 8), ("width", 0.25), ("hidden", 8))


def test_contraction_builds_three_models_and_times_them(bench_modules, tmp_path):
    m = bench_modules["contraction"]
    built = m.build(m.Config("smallnet7", "ck+fc", TINY), tmp_path, exporter="torchscript")
    # The contracted graph is the hand-written one: same node count after onnxsim, fewer than expanded.
    assert built["nodes"]["contracted"] == built["nodes"]["hand-written"] < built["nodes"]["expanded"]
    assert built["params"]["contracted"] < built["params"]["expanded"]
    assert built["max_rel_error"] < 1e-5
    rows = m.time_models(built["paths"], built["input_shape"], (1,), seconds=0.01, threads=1, warmup=1,
                         min_rounds=2)
    assert len(rows) == 1 and rows[0]["rounds"] >= 2 and rows[0]["rounds2"] >= 2
    assert rows[0]["speedup"] > 0 and rows[0]["vs_hand"] > 0
    assert m.plot([{"model": "tiny", **rows[0]}], tmp_path / "c.png").stat().st_size > 0


def test_conversion_cost_child_measures_one_conversion(bench_modules):
    m = bench_modules["conversion_cost"]
    spec = {"base": "smallnet7", "mode": "cl", "kwargs": dict(TINY), "onnx": False, "threads": 1}
    row = m.child(spec)
    assert row["params_after"] < row["params"] and row["merged"] == 3
    assert 0 < row["contract_s"] <= row["total_s"]
    assert row["peak_mb"] > 0 and row["extra_mb"] >= 0
    from compactify.converter import convert

    assert convert.contract.__name__ == "contract"  # the timing wrapper is taken off again


def test_fidelity_measures_both_errors(bench_modules):
    m = bench_modules["fidelity"]
    row = m.measure("smallnet7", "ck+fc", dict(TINY), batches=1, batch_size=2)
    assert 0 < row["expanded_max_abs"] < 1e-5 and 0 <= row["contracted_max_abs"] < 1e-5
    assert row["max_ratio"] == pytest.approx(row["contracted_max_abs"] / row["expanded_max_abs"])
    configs = m.configurations(["smallnet7", "repvgg"], quick=True)
    assert ("repvgg", None, {"input_size": 32}) in configs
    assert [c[1] for c in configs if c[0] == "smallnet7"] == ["fc", "cl", "ck", "cl+fc", "ck+fc"]
