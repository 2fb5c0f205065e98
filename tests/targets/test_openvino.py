"""The OpenVINO target on the real runtime: `convert --openvino` writes compact.xml + compact.bin with fp32
weights, the IR runs on OpenVINO's CPU plugin at fp32 (bf16 only when asked, as a run of its own) and
matches the source run in float64 (a contracted net, a truncated one, an ONNX source and timm's RepVGG-A0),
verify and bench take it from the registry, and what cannot be built is one line with nothing written."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("openvino", reason="the OpenVINO target needs openvino (pip install compactify[edge])")

from compactify.cli import main
from compactify.converter.load.checkpoint import save_checkpoint
from compactify.errors import BadInputError, MissingRuntimeError
from compactify.harness.bench import bench
from compactify.models import build_model
from compactify.runtimes import thread_options
from compactify.targets import TARGETS
from compactify.targets.openvino import BF16_ATOL, BF16_RTOL

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from converter.frontends.onnx import graphs as G

# A tiny registry net with its metadata (as the CLI tests use): it converts in about a second.
TINY_META = {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.25, "hidden": 8}, "expand": "ck+fc",
             "rate": 2, "input_shape": [1, 3, 8, 8]}
FP32_REL = 1e-5  # of the largest output: what float32 arithmetic leaves, with room


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_error_line(result, *needles: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _rel(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out.astype(np.float64) - ref).max() / np.abs(ref).max())


def _ir(folder: Path):
    """The IR as OpenVINO itself reads it, and its runner at fp32."""
    return TARGETS["openvino"].open(folder / "compact.xml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny checkpoint, and the expanded network it holds, built without the converter."""
    torch.manual_seed(0)
    source = build_model(TINY_META).eval()
    path = save_checkpoint(tmp_path_factory.mktemp("ov-ckpt") / "tiny.pt", source.state_dict(), TINY_META)
    return path, source


@pytest.fixture(scope="module")
def contracted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("ov") / "out"
    result = _run("convert", tiny[0], "-o", out, "--openvino")
    assert result.exit_code == 0, result.output
    return out


def _float64(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.double()(torch.from_numpy(x).double()).numpy()


def test_convert_writes_the_ir_and_its_weights_in_fp32(contracted):
    import openvino

    report = json.loads((contracted / "report.json").read_text())
    assert report["artifacts"]["openvino"] == "compact.xml"
    entry = report["openvino"]
    assert entry["built_from"] == "compact.onnx" and entry["weights"] == "compact.bin"
    assert (contracted / "compact.bin").stat().st_size > 0
    model = openvino.Core().read_model(str(contracted / "compact.xml"))
    counted = {}
    for op in model.get_ordered_ops():
        counted[op.get_type_name()] = counted.get(op.get_type_name(), 0) + 1
    assert entry["ops"] == {k: v for k, v in counted.items() if k not in ("Parameter", "Result", "Constant")}
    weights = {str(op.get_output_element_type(0)) for op in model.get_ordered_ops() if op.get_type_name() == "Constant"
               and op.get_output_element_type(0).is_real()}
    assert weights == {"<Type: 'float32'>"}  # save_model's default would have stored them in fp16
    assert entry["check"]["precision"] == "fp32" and entry["check"]["max_rel_error"] < FP32_REL


def test_the_ir_runs_at_fp32_with_the_compact_models_names_and_a_dynamic_batch(contracted, tiny):
    report = json.loads((contracted / "report.json").read_text())
    compact_onnx = onnx.load(str(contracted / "compact.onnx"))
    with _ir(contracted) as runner:
        assert runner.precision == "fp32"
        assert [s.name for s in runner.inputs] == [i.name for i in compact_onnx.graph.input]
        assert [s.name for s in runner.outputs] == report["output_names"]
        assert runner.inputs[0].shape == (None, 3, 8, 8)  # the batch is free, the proved size is kept
        for batch in (1, 5):
            x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
            (out,) = runner.infer({runner.inputs[0].name: x}).values()
            assert _rel(out, _float64(tiny[1], x)) < FP32_REL


def test_bf16_is_a_run_of_its_own_and_threads_are_pinned(contracted, tiny):
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = _float64(tiny[1], x)
    assert thread_options("openvino", 2) == {"threads": 2} and thread_options("openvino", None) == {}
    with TARGETS["openvino"].open(contracted / "compact.xml", threads=1) as runner:
        assert runner._compiled.get_property("INFERENCE_NUM_THREADS") == 1  # the plugin's own setting
        (fp32,) = runner.infer({runner.inputs[0].name: x}).values()
    try:
        runner = TARGETS["openvino"].open(contracted / "compact.xml", precision="bf16")
    except MissingRuntimeError as exc:
        pytest.skip(f"this CPU has no bf16: {exc}")
    with runner:
        assert runner.precision == "bf16"
        (bf16,) = runner.infer({runner.inputs[0].name: x}).values()
    assert _rel(bf16, ref) > 10 * max(_rel(fp32, ref), 1e-7)  # it really computed in bf16
    assert np.all(np.abs(bf16 - ref) <= BF16_ATOL + BF16_RTOL * np.abs(ref))


def test_verify_judges_the_ir_and_with_bf16_adds_a_row_at_bf16(contracted):
    result = _run("verify", contracted, "--bf16", "--json", "-")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = {c["label"]: c for c in payload["candidates"]}
    fp32 = rows["compact.xml (openvino fp32)"]
    assert fp32["passed"] and fp32["precision"] == "fp32" and (fp32["atol"], fp32["rtol"]) == (1e-5, 1e-4)
    bf16 = rows["compact.xml (openvino bf16)"]
    assert bf16["precision"] == "bf16" and (bf16["atol"], bf16["rtol"]) == (BF16_ATOL, BF16_RTOL)
    assert bf16["passed"] or bf16["skipped"]
    plain = json.loads(_run("verify", contracted, "--json", "-").stdout)
    assert [c["precision"] for c in plain["candidates"] if c["runtime"] == "openvino"] == ["fp32"]


def test_bench_times_the_ir_beside_the_onnx_model(contracted):
    result = bench([contracted / "compact.onnx", contracted / "compact.xml"], iters=2, warmup=0, progress=False,
                   precisions=("bf16",))
    rows = [(r["model"], r["runtime"], r["precision"]) for r in result.rows]
    assert rows[:2] == [("compact.onnx", "ort", None), ("compact.xml (fp32)", "openvino", "fp32")]
    assert rows[2:] in ([("compact.xml (bf16)", "openvino", "bf16")], [])
    assert result.settings["threads"] == 1


def test_a_truncated_conversion_runs_as_the_truncated_network(tiny, tmp_path):
    out = tmp_path / "out"
    result = _run("convert", tiny[0], "-o", out, "--rank", "rank:2", "--openvino")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["truncation"]
    truncated = torch.export.load(str(out / "compact.pt2")).module()
    x = np.random.default_rng(7).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with _ir(out) as runner:
        (got,) = runner.infer({runner.inputs[0].name: x}).values()
    ref = _float64(truncated, x)
    assert _rel(got, ref) < FP32_REL
    assert _rel(got, _float64(tiny[1], x)) > 100 * FP32_REL  # it is the truncated network, not the source
    checked = _run("verify", out, "--json", "-")
    assert checked.exit_code == 0, checked.output
    assert any(c["label"] == "compact.xml (openvino fp32)" and c["passed"] for c in json.loads(checked.stdout)["candidates"])


def test_an_onnx_source_converts_from_its_graph(tmp_path):
    from onnx.reference import ReferenceEvaluator

    src = G.conv_chain(G.CK_CHAIN)
    path = tmp_path / "model.onnx"
    onnx.save(src, str(path))
    out = tmp_path / "out"
    result = _run("convert", path, "-o", out, "--openvino")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["compact.bin", "compact.onnx", "compact.xml", "report.json",
                                                     "report.md"]
    x = G.feeds(src, batch=3, seed=4)["x"]
    ref = ReferenceEvaluator(_as_double(src)).run(None, {"x": x.astype(np.float64)})[0]
    with _ir(out) as runner:
        assert TARGETS["openvino"].precision == runner.precision == "fp32"
        (got,) = runner.infer({"x": x}).values()
        # The three convs merged into one; OpenVINO writes a conv's bias as an Add after it.
        assert json.loads((out / "report.json").read_text())["openvino"]["ops"] == {"Convolution": 1, "Add": 1}
    assert _rel(got, ref) < FP32_REL
    assert _run("verify", out).exit_code == 0


def _as_double(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph with its weights and input in float64: an independent float64 reference."""
    double = onnx.ModelProto()
    double.CopyFrom(model)
    for init in double.graph.initializer:
        array = onnx.numpy_helper.to_array(init).astype(np.float64)
        init.CopyFrom(onnx.numpy_helper.from_array(array, init.name))
    for value in [*double.graph.input, *double.graph.output]:
        value.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return double


def test_timm_repvgg_runs_with_as_many_convolutions_as_timms_own_deploy(tmp_path):
    factories = importlib.import_module("tests.families.factories")
    kwargs = {"name": "repvgg_a0", "size": 16}
    model = factories.timm_model(**kwargs)
    ckpt = tmp_path / "repvgg.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    result = _run("convert", ckpt, "--arch", "tests.families.factories:timm_model", "--arch-kwargs", json.dumps(kwargs),
                  "--input-shape", "1,3,16,16", "-o", out, "--openvino")
    assert result.exit_code == 0, result.output
    deploy_convs = sum(isinstance(m, torch.nn.Conv2d) for m in factories.timm_deploy(model).modules())
    assert json.loads((out / "report.json").read_text())["openvino"]["ops"]["Convolution"] == deploy_convs
    x = np.random.default_rng(2).standard_normal((2, 3, 16, 16)).astype(np.float32)
    with _ir(out) as runner:
        (got,) = runner.infer({runner.inputs[0].name: x}).values()
    assert _rel(got, _float64(model, x)) < FP32_REL


def test_a_model_openvino_cannot_lower_is_one_line_and_writes_nothing(tmp_path):
    b = G.Builder(0, 17)
    y = b.conv("x", 3, 4, 1)
    y = b.conv(y, 4, 4, 1)
    b.op("Det", [y])  # ONNX Runtime runs it; OpenVINO has no conversion rule for it
    b.nodes[-1].output[0] = "y"
    path = tmp_path / "det.onnx"
    onnx.save(b.model([("x", ["N", 3, 6, 6])], ["y"]), str(path))
    out = tmp_path / "out"
    assert _run("convert", path, "-o", tmp_path / "plain").exit_code == 0  # the model itself converts
    _one_error_line(_run("convert", path, "-o", out, "--openvino"), "OpenVINO cannot convert compact.onnx",
                    "No conversion rule found for operations: Det")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.onnx", "plain"]


def test_what_openvino_cannot_be_built_from_is_one_line(tiny, tmp_path):
    _one_error_line(_run("convert", tiny[0], "-o", tmp_path / "a", "--openvino", "--no-onnx"),
                    "--openvino writes compact.xml from compact.onnx; drop --no-onnx")
    onnx.save(G.conv_chain(G.CK_CHAIN), str(tmp_path / "m.onnx"))
    _one_error_line(_run("convert", tmp_path / "m.onnx", "-o", tmp_path / "small.onnx", "--openvino"),
                    "--openvino write more files: give a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_without_openvino_convert_names_the_extra_and_verify_skips_the_ir(contracted, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now fails as if it were not installed
    _one_error_line(_run("convert", tiny[0], "-o", tmp_path / "out", "--openvino"),
                    "--openvino needs the Python package openvino", "pip install compactify[edge]")
    assert not (tmp_path / "out").exists()
    result = _run("verify", contracted, "--json", "-")
    assert result.exit_code == 0, result.output
    (row,) = [c for c in json.loads(result.stdout)["candidates"] if c["runtime"] == "openvino"]
    assert "needs the Python package openvino" in row["skipped"]


def test_an_ir_without_its_weights_its_weights_alone_or_a_file_that_is_no_ir_is_one_line(contracted, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("report.json", "compact.pt2", "compact.onnx", "compact.xml"):
        (folder / name).write_bytes((contracted / name).read_bytes())
    _one_error_line(_run("verify", folder), "report.json lists compact.xml", "no compact.bin")
    with pytest.raises(BadInputError, match="without its weights: compact.bin is missing"):
        TARGETS["openvino"].open(folder / "compact.xml")
    notes = tmp_path / "notes.xml"
    notes.write_text("<?xml version='1.0'?><notes/>")
    _one_error_line(_run("bench", notes, "--iters", "1"), "notes.xml is not an OpenVINO IR")
    _one_error_line(_run("bench", contracted / "compact.onnx", "--runtime", "openvino"),
                    "runs on --runtime ort, not --runtime openvino; convert with --openvino")
    # .bin is a checkpoint suffix too: the weights of an IR are named as such, not read as a checkpoint
    _one_error_line(_run("bench", contracted / "compact.bin", "--iters", "1"),
                    "compact.bin is a file that compact.xml beside it needs (an OpenVINO IR): give compact.xml")


def test_openvino_with_int8_writes_the_ir_of_the_int8_model_and_verify_judges_it_as_int8(tiny, tmp_path):
    calibration = tmp_path / "calibration.npz"
    np.savez(calibration, x=np.random.default_rng(0).standard_normal((40, 3, 8, 8)).astype(np.float32))
    out = tmp_path / "out"
    result = _run("convert", tiny[0], "-o", out, "--openvino", "--int8", "--calibration", calibration)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"]["openvino_int8"] == "compact.int8.xml" and (out / "compact.int8.bin").is_file()
    assert report["openvino_int8"]["built_from"] == "compact.int8.onnx"
    x = np.random.default_rng(1).standard_normal((4, 3, 8, 8)).astype(np.float32)
    with TARGETS["openvino_int8"].open(out / "compact.int8.xml") as ir, \
            TARGETS["onnx_int8"].open(out / "compact.int8.onnx") as qdq:
        got = next(iter(ir.infer({ir.inputs[0].name: x}).values()))
        theirs = next(iter(qdq.infer({qdq.inputs[0].name: x}).values()))
    ref = _float64(tiny[1], x)
    # The same scales, run by two runtimes' int8 kernels: both near the source, near each other.
    assert _rel(got, ref) < 0.1 and _rel(theirs, ref) < 0.1 and _rel(got, theirs.astype(np.float64)) < 0.05
    payload = json.loads(_run("verify", out, "--json", "-").stdout)
    row = next(c for c in payload["candidates"] if c["path"].endswith("compact.int8.xml"))
    assert row["passed"] and row["tolerance"].startswith("0.1 x max|ref|") and row["rtol"] == 0
