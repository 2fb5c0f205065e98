"""`compactify convert MODEL.onnx -o OUT` end to end: what it writes (compact.onnx, report.json in
the PyTorch path's schema, report.md), that `compactify verify OUT` judges it against the source
ONNX in float64, and the bad inputs an ONNX file can be: one line, exit 2, nothing written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from compactify.measure.onnx_float64 import Float64Reference

from clihelp import ROOT, error_line, run, snapshot

sys.path.insert(0, str(ROOT / "tests"))
from converter.frontends.onnx import graphs as G  # noqa: E402
from converter.frontends.onnx.test_onnx_constructs import ort_run  # noqa: E402

REGION_KEYS = {"name", "ops", "layers", "decision", "reason", "exact", "params_before", "params_after",
               "flops_before", "flops_after", "after", "read_by"}
REPORT_KEYS = {"regions", "params_before", "params_after", "flops_before", "flops_after", "max_abs_error",
               "max_rel_error", "source_float32_rel_error", "exact", "artifacts", "source", "warnings",
               "input_shape", "compactify_version"}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def _check_against_source(src: onnx.ModelProto, compact_path: Path, batch: int = 3, sizes=None):
    compact = onnx.load(str(compact_path))
    feeds = G.feeds(src, batch=batch, seed=5, sizes=sizes)
    refs = Float64Reference(src).run(feeds)
    got = ort_run(compact, feeds)
    names = [o.name for o in compact.graph.output]
    for g, r in zip(got, refs[: len(got)]):
        assert np.abs(g.astype(np.float64) - r).max() <= 1e-6 * np.abs(r).max(), names
    return compact


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    src = G.conv_chain(G.CK_CHAIN)
    path = _save(src, d / "model.onnx")
    r = run("convert", path, "-o", d / "out")
    assert r.exit_code == 0, r.output
    return src, path, d / "out"


def test_convert_writes_compact_onnx_and_the_report(converted):
    src, path, out = converted
    assert sorted(p.name for p in out.iterdir()) == ["compact.onnx", "report.json", "report.md"]
    rep = _report(out)
    assert REPORT_KEYS <= set(rep)
    assert rep["source"]["format"] == "onnx"
    assert rep["artifacts"] == {"onnx": "compact.onnx"}
    assert rep["exact"] is True
    assert rep["max_rel_error"] <= 1e-6 and rep["max_abs_error"] > 0
    assert rep["source_float32_rel_error"] > 0
    assert rep["params_before"] == sum(int(np.prod(t.dims)) for t in src.graph.initializer)
    assert rep["params_after"] == 6 * 4 * 49 + 6
    assert rep["flops_after"] < rep["flops_before"]
    (region,) = rep["regions"]
    assert REGION_KEYS <= set(region) and region["decision"] == "dense"
    md = (out / "report.md").read_text()
    assert region["name"] in md
    compact = _check_against_source(src, out / "compact.onnx")
    assert G.ops_of(compact) == ["Conv"]
    assert [i.name for i in compact.graph.input] == ["x"] and [o.name for o in compact.graph.output] == ["y"]


def test_verify_of_an_onnx_conversion_passes(converted):
    _, _, out = converted
    r = run("verify", out, "--json", "-")
    assert r.exit_code == 0, r.output
    assert "onnx.reference" in r.output or "float64" in r.output


def test_verify_fails_when_the_compact_model_is_wrong(converted, tmp_path):
    """verify really compares: a compact.onnx with a changed weight fails with exit 1."""
    import shutil

    _, _, out = converted
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    m = onnx.load(str(bad / "compact.onnx"))
    w = next(t for t in m.graph.initializer if len(t.dims) == 4)
    arr = onnx.numpy_helper.to_array(w).copy()
    arr.flat[0] += 0.05 * np.abs(arr).max()
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(m, str(bad / "compact.onnx"))
    r = run("verify", bad)
    assert r.exit_code == 1, r.output


def test_onnx_file_out_is_the_compact_model_with_its_report_beside(converted, tmp_path):
    src, path, folder = converted  # the folder form, as before: compact.onnx and the report inside
    assert (folder / "compact.onnx").is_file() and (folder / "report.json").is_file()
    small = tmp_path / "small.onnx"
    r = run("convert", path, "-o", small)
    assert r.exit_code == 0, r.output
    # The model and its report side by side, and nothing else: no temporary file, no lock left.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.onnx", "small.report.json", "small.report.md"]
    assert small.read_bytes() == (folder / "compact.onnx").read_bytes()
    report = json.loads((tmp_path / "small.report.json").read_text())
    assert report["artifacts"] == {"onnx": "small.onnx"}
    assert report["regions"] == _report(folder)["regions"]
    assert report["regions"][0]["name"] in (tmp_path / "small.report.md").read_text()
    _check_against_source(src, small)
    # `verify FILE` says how to verify it, and that advice passes.
    line = error_line(run("verify", small), "--reference", "--candidate")
    r = run("verify", "--reference", path, "--candidate", small)
    assert r.exit_code == 0, (line, r.output)


def test_onnx_file_out_refuses_an_existing_file_without_force_and_never_the_source(converted, tmp_path):
    src, path, _ = converted
    small = tmp_path / "Small.ONNX"  # the suffix in any case
    small.write_bytes(b"mine")
    error_line(run("convert", path, "-o", small), "already exists", "--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Small.ONNX"] and small.read_bytes() == b"mine"
    r = run("convert", path, "-o", small, "--force")
    assert r.exit_code == 0, r.output
    _check_against_source(src, small)
    assert (tmp_path / "Small.report.json").is_file() and (tmp_path / "Small.report.md").is_file()
    source = path.read_bytes()
    before = snapshot(path.parent)
    error_line(run("convert", path, "-o", path, "--force"), "input")
    assert path.read_bytes() == source and snapshot(path.parent) == before


def test_onnx_file_out_with_other_artifacts_asks_for_a_folder(converted, tmp_path):
    before = snapshot(tmp_path)
    error_line(run("convert", converted[1], "-o", tmp_path / "small.onnx", "--fp16"), "--fp16", "folder")
    error_line(run("convert", converted[1], "-o", tmp_path / "small.onnx", "--no-onnx"), "--no-onnx")
    assert snapshot(tmp_path) == before


def test_not_exact_region_is_left_and_allow_approximate_merges_it(tmp_path):
    src = G.conv_chain([G.ConvSpec(12, 1), G.ConvSpec(6, 3, pads=1)])
    path = _save(src, tmp_path / "m.onnx")
    r = run("convert", path, "-o", tmp_path / "exact")
    assert r.exit_code == 0, r.output
    rep = _report(tmp_path / "exact")
    assert any(g.get("stopped_by") == "not exact" for g in rep["regions"])
    assert rep["exact"] is True
    _check_against_source(src, tmp_path / "exact" / "compact.onnx")
    r = run("convert", path, "-o", tmp_path / "approx", "--allow-approximate")
    assert r.exit_code == 0, r.output
    rep = _report(tmp_path / "approx")
    assert rep["allow_approximate"] is True and rep["exact"] is False
    assert rep["max_rel_error"] > 1e-3
    assert G.count(onnx.load(str(tmp_path / "approx" / "compact.onnx")), "Conv") == 1


def test_several_inputs_and_outputs_symbolic_width_and_metadata(tmp_path):
    src = G.multi_io()
    path = _save(src, tmp_path / "multi.onnx")
    r = run("convert", path, "-o", tmp_path / "nosize")
    error_line(r, "--input-shape")
    assert not (tmp_path / "nosize").exists()
    r = run("convert", path, "-o", tmp_path / "out", "--input-shape", "1,3,8,9")
    assert r.exit_code == 0, r.output
    compact = _check_against_source(src, tmp_path / "out" / "compact.onnx", sizes={"W": 12})
    assert [(o.name, o.type.tensor_type.elem_type) for o in compact.graph.output] == [
        ("logits", 1), ("features", 1), ("features16", onnx.TensorProto.FLOAT16)]
    assert compact.graph.input[0].type.tensor_type.shape.dim[3].dim_param == "W"
    assert {p.key: p.value for p in compact.metadata_props}.items() >= G.METADATA.items()
    assert _report(tmp_path / "out")["source"]["meta"]["metadata_props"] == G.METADATA


def test_verify_with_a_float16_output(tmp_path):
    """A graph output the source itself casts to float16: the compact model agrees with the source to
    float16 rounding, which is all that output can hold, and verify must judge it at that level."""
    path = _save(G.multi_io(), tmp_path / "multi.onnx")
    assert run("convert", path, "-o", tmp_path / "out", "--input-shape", "1,3,8,9").exit_code == 0
    r = run("verify", tmp_path / "out")
    assert r.exit_code == 0, r.output


def test_outputs_then_verify(tmp_path):
    path = _save(G.multi_io(), tmp_path / "multi.onnx")
    r = run("convert", path, "-o", tmp_path / "out", "--input-shape", "1,3,8,9", "--outputs", "logits,features")
    assert r.exit_code == 0, r.output
    compact = onnx.load(str(tmp_path / "out" / "compact.onnx"))
    assert [o.name for o in compact.graph.output] == ["logits", "features"]
    r = run("verify", tmp_path / "out")
    assert r.exit_code == 0, r.output


def test_fp16_no_simplify_and_force(tmp_path):
    src = G.repvgg_block()
    path = _save(src, tmp_path / "m.onnx")
    out = tmp_path / "out"
    r = run("convert", path, "-o", out, "--fp16", "--no-simplify")
    assert r.exit_code == 0, r.output
    rep = _report(out)
    assert rep["artifacts"] == {"onnx": "compact.onnx", "onnx_fp16": "compact.fp16.onnx"}
    assert rep["onnx"]["simplified"] is False
    assert (out / "compact.fp16.onnx").stat().st_size > 0
    assert run("verify", out).exit_code == 0
    error_line(run("convert", path, "-o", out), "--force")
    r = run("convert", path, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert _report(out)["onnx"]["simplified"] is True and not (out / "compact.fp16.onnx").exists()


def test_external_data(tmp_path):
    src = G.conv_chain(G.CL_CHAIN)
    (tmp_path / "m").mkdir()
    path = G.with_external_data(src, tmp_path / "m")
    r = run("convert", path, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    _check_against_source(src, tmp_path / "out" / "compact.onnx")
    assert run("verify", tmp_path / "out").exit_code == 0


def _bad_files(d: Path) -> dict[str, Path]:
    good = G.conv_chain(G.CL_CHAIN).SerializeToString()
    files = {}
    (d / "trunc.onnx").write_bytes(good[: len(good) // 2])
    files["truncated"] = d / "trunc.onnx"
    corrupt = bytearray(good)
    for i in range(40, 200, 7):
        corrupt[i] ^= 0xFF
    (d / "corrupt.onnx").write_bytes(bytes(corrupt))
    files["corrupt"] = d / "corrupt.onnx"
    unchecked = G.conv_chain(G.CL_CHAIN)
    unchecked.graph.node[1].input[0] = "nonexistent"
    files["checker"] = _save(unchecked, d / "checker.onnx")
    files["nan"] = _save(G.nan_weights(), d / "nan.onnx")
    (d / "ext").mkdir()
    ext = G.with_external_data(G.conv_chain(G.CL_CHAIN), d / "ext")
    Path(str(ext) + ".data").unlink()
    files["missing external data"] = ext
    return files


@pytest.mark.parametrize("kind,needles", [
    ("truncated", ["trunc.onnx"]),
    ("corrupt", ["corrupt.onnx", "not a readable ONNX model"]),
    ("checker", ["onnx.checker"]),
    ("nan", ["NaN"]),
    ("missing external data", ["model.onnx.data"]),
])
def test_bad_onnx_is_one_line_exit_2_and_writes_nothing(tmp_path, kind, needles):
    path = _bad_files(tmp_path)[kind]
    before = snapshot(tmp_path)
    r = run("convert", path, "-o", tmp_path / "out")
    error_line(r, *needles)
    assert not (tmp_path / "out").exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,needles", [
    (["--arch", "smallnet7"], ["--arch"]),
    (["--trust-pickle"], ["--trust-pickle"]),
    (["--outputs", "nope"], ["nope"]),
    (["--input-shape", "1,3,2,2"], []),
])
def test_options_that_do_not_apply_are_one_line(converted, tmp_path, args, needles):
    _, path, _ = converted
    r = run("convert", path, "-o", tmp_path / "out", *args)
    error_line(r, *needles)
    assert not (tmp_path / "out").exists()


def test_int8_from_an_onnx_source_is_written_measured_and_verified(tmp_path):
    """An ONNX source has what int8 needs: compact.onnx and its own float64 outputs (the reference)."""
    src = G.gemm_chain(opset=18)
    path = _save(src, tmp_path / "mlp.onnx")
    x = np.random.default_rng(3).standard_normal((200, 12)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    out = tmp_path / "out"
    r = run("convert", path, "-o", out, "--int8", "--calibration", tmp_path / "calib.npz")
    assert r.exit_code == 0, r.output
    report = _report(out)
    assert report["artifacts"]["onnx_int8"] == "compact.int8.onnx" and (out / "compact.int8.onnx").is_file()
    assert report["int8"]["reference"] == "source float64" and report["int8"]["max_rel_error"] < 0.1
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(out / "compact.int8.onnx")).graph.node)
    r = run("verify", out)
    assert r.exit_code == 0, r.output
    assert "compact.int8.onnx" in r.stdout


def test_int8_from_an_onnx_source_without_calibration_data_is_one_line(tmp_path):
    path = _save(G.gemm_chain(), tmp_path / "mlp.onnx")
    before = snapshot(tmp_path)
    r = run("convert", path, "-o", tmp_path / "out", "--int8")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "--calibration" in r.stderr and snapshot(tmp_path) == before


def test_int8_of_a_source_newer_than_onnx_runtimes_quantized_kernels_is_one_line(tmp_path):
    path = _save(G.gemm_chain(opset=28), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(3).standard_normal((64, 12)).astype(np.float32))
    before = snapshot(tmp_path)
    r = run("convert", path, "-o", tmp_path / "out", "--int8", "--calibration", tmp_path / "calib.npz")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "opset 28" in r.stderr and "older opset" in r.stderr and snapshot(tmp_path) == before
