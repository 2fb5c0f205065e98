"""benchmarks/onnx_peer.py's core on its smallest configuration: structure and exactness, never timings."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import onnx
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = (("input_size", 8), ("width", 0.25), ("hidden", 8))


@pytest.fixture(scope="module")
def onnx_peer():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("onnx_peer")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_onnx_peer_builds_three_models_and_times_them(onnx_peer, tmp_path):
    m = onnx_peer
    built = m.build(m.Config("smallnet7", "ck+fc", TINY), tmp_path)
    # The contracted file is the hand-written graph: same nodes and parameters after onnxsim, and
    # fewer than the peer pipeline leaves (onnxsim and ORT merge no conv into a conv).
    assert built["nodes"]["contracted"] == built["nodes"]["hand-written"] < built["nodes"]["expanded"]
    assert built["params"]["contracted"] == built["params"]["hand-written"] < built["params"]["expanded"]
    assert built["max_rel_error"] < 1e-6 and built["contract_max_rel_error"] < 1e-6
    for role, path in built["paths"].items():
        assert path.name == f"{m.ROLES[role]}.onnx"
        onnx.checker.check_model(str(path))
    assert m.onnx_params(onnx.load(str(built["paths"]["hand-written"]))) == built["params"]["hand-written"]
    rows = m.run([m.Config("smallnet7", "cl", TINY)], (1,), seconds=0.01, threads=(1,), warmup=1, min_rounds=2,
                 log=lambda *_: None)
    assert len(rows) == 1
    row = rows[0]
    assert row["threads"] == 1 and row["rounds"] >= 2 and row["rounds2"] >= 2
    assert row["speedup"] > 0 and row["vs_hand"] > 0 and row["peer_ms"] > 0 and row["ours_ms"] > 0
    assert {s["label"] for s in row["stats"]} == {"peer", "ours", "hand-written"}
    assert "->" in row["nodes_text"] and row["params_text"].count("/") == 2
