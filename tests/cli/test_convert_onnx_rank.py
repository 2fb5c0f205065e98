"""`convert MODEL.onnx --rank RULE`: the ONNX path factors the plan's layers at the chosen ranks,
reports the truncation's error against the untruncated compact model, and `verify` judges the
artifacts against the truncated network itself, with the truncation's effect reported apart."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clihelp import error_line, run
from compactify.converter.pipeline.contraction import contract_onnx
from compactify.targets.onnx_io import run_ort
from compactify.measure.onnx_float64 import run_float64

RANK = 3


def _low_rank_mlp(path, rank: int = RANK):
    """Gemm(32 -> 64) -> Gemm(64 -> 48) -> Relu -> Gemm(48 -> 40): the merged first two are rank ``rank``
    exactly, the last is full rank."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, rank)) @ rng.standard_normal((rank, 32)) / np.sqrt(32 * rank)  # rank `rank`
    inits = {"w1": a.astype(np.float32), "b1": rng.standard_normal(64).astype(np.float32),
             "w2": (rng.standard_normal((48, 64)) / 8).astype(np.float32), "b2": rng.standard_normal(48).astype(np.float32),
             "w3": (rng.standard_normal((40, 48)) / 7).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1, name="fc1"),
             helper.make_node("Gemm", ["h1", "w2", "b2"], ["h2"], transB=1, name="fc2"),
             helper.make_node("Relu", ["h2"], ["h3"], name="act"),
             helper.make_node("Gemm", ["h3", "w3"], ["y"], transB=1, name="fc3")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 40])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_a_layer_of_exact_low_rank_is_factored_exactly_and_verify_passes(tmp_path):
    src = _low_rank_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    result = run("convert", src, "-o", out, "--rank", "threshold:0.0001")  # the rank-3 layer keeps 3
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    rows = {r["region"]: r for r in report["truncation"]["layers"]}
    merged = rows["fc2"]  # fc1 -> fc2 merged, then factored at its own rank: nothing lost
    # (its numerical rank is full: float32 weights put every other singular value at rounding level)
    assert (merged["form"], merged["rank_after"]) == ("channel", RANK)
    assert report["truncation"]["output_error"]["max_rel_error"] < 1e-5
    compact = onnx.load(str(out / "compact.onnx"))
    assert [n.op_type for n in compact.graph.node].count("Gemm") >= 3  # the merged layer is two Gemms now
    x = {"x": np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)}
    ref = run_float64(onnx.load(str(src)), x)[0]
    assert np.abs(run_ort(compact, x)[0] - ref).max() / np.abs(ref).max() < 1e-5
    verified = run("verify", out)
    assert verified.exit_code == 0, verified.output
    assert "truncated compact.onnx float64" in verified.output
    said = " ".join(verified.output.split())  # the conversion's one truncation figure, repeated, not remeasured
    err = report["truncation"]["output_error"]
    assert "--rank threshold:0.0001: FLOPs" in said and "as convert measured it" in said
    assert f"max rel error {err['max_rel_error']:.2e} against that plan" in said and err["inputs"] in said


def test_a_lossy_rank_is_reported_as_truncation_not_as_a_failed_export(tmp_path):
    src = _low_rank_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    assert run("convert", src, "-o", out, "--rank", "rank:2").exit_code == 0
    report = json.loads((out / "report.json").read_text())
    truncated = onnx.load(str(out / "compact.onnx"))
    untruncated = contract_onnx(onnx.load(str(src))).compact
    x = {"x": np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)}  # the report's own check inputs
    lost = report["truncation"]["output_error"]["max_rel_error"]
    assert lost > 1e-3  # rank 3 cut to 2
    ref = run_float64(untruncated, x)[0]
    measured = np.abs(run_ort(truncated, x)[0] - ref).max() / np.abs(ref).max()
    assert measured == pytest.approx(lost, rel=0.5)  # same order: other inputs, same cut
    verified = run("verify", out)
    assert verified.exit_code == 0, verified.output


@pytest.mark.parametrize("flags, needle", [
    (["--rank", "error:0.01"], "PyTorch sources only"),
    (["--rank", "energy:0.9", "--cost", "latency"], "--cost latency"),
    (["--int8"], "--int8"),
    (["--arch", "smallnet7"], "--arch"),
    (["--no-onnx"], "--no-onnx"),
])
def test_options_that_do_not_apply_to_an_onnx_source_are_refused(tmp_path, flags, needle):
    src = _low_rank_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    error_line(run("convert", src, "-o", out, *flags), needle)
    assert not out.exists()


def test_verify_with_an_onnx_reference_runs_it_in_float64(tmp_path):
    src = _low_rank_mlp(tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    assert run("convert", src, "-o", out).exit_code == 0
    verified = run("verify", "--reference", src, "--candidate", out / "compact.onnx")
    assert verified.exit_code == 0, verified.output
    assert "onnx.reference float64" in verified.output
