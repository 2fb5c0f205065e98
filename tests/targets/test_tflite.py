"""compact.tflite (--litert): converted by litert-torch, run on LiteRT's own interpreter and checked
against the source in float64, from a contracted network, a truncated one (--rank) and timm's RepVGG-A0;
bad input and a missing LiteRT are one line; LiteRT's log lines never reach the terminal."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from families.factories import timm_model

from compactify.cli import main
from compactify.converter.load.checkpoint import save_checkpoint
from compactify.converter.pipeline.convert import convert_checkpoint
from compactify.converter.pipeline.settings import ConvertOptions
from compactify.errors import BadInputError, MissingRuntimeError
from compactify.harness.bench import bench
from compactify.harness.verify.conversion import verify_conversion
from compactify.models import create_model, expand
from compactify.targets import TARGETS, check_requests, target_for

ARCH = {"num_classes": 10, "in_chans": 1, "input_size": 8}
SHAPE = (1, 1, 8, 8)


def _litert():
    pytest.importorskip("litert_torch", reason="needs litert-torch (pip install compactify[edge])")
    return pytest.importorskip("ai_edge_litert.interpreter", reason="needs ai-edge-litert (pip install compactify[edge])")


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    _litert()
    torch.manual_seed(0)
    model = expand(create_model("smallnet7", **ARCH), "cl", rate=4)
    meta = {"arch": "smallnet7", "arch_kwargs": ARCH, "expand": "cl", "rate": 4, "layers": None, "aux": None,
            "input_shape": list(SHAPE)}
    return save_checkpoint(tmp_path_factory.mktemp("tflite") / "expanded.pt", model.state_dict(), meta), model.eval()


@pytest.fixture(scope="module")
def contracted(expanded, tmp_path_factory):
    out = tmp_path_factory.mktemp("tflite") / "out"
    return out, convert_checkpoint(expanded[0], out, ConvertOptions(onnx=False, litert=True))


def _run_tflite(path, x: np.ndarray) -> np.ndarray:
    """LiteRT's own interpreter, none of compactify's runner."""
    interpreter = _litert().Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _float64(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.double()(torch.from_numpy(x).double()).numpy()


def test_the_contracted_tflite_computes_the_expanded_network(expanded, contracted):
    out, report = contracted
    assert report["artifacts"]["tflite"] == "compact.tflite" and target_for(out / "compact.tflite").name == "tflite"
    assert report["tflite"]["input_shape"] == list(SHAPE) and report["tflite"]["batch"] == "static"
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    want = _float64(expanded[1], x)
    assert np.abs(_run_tflite(out / "compact.tflite", x) - want).max() <= 1e-5 * np.abs(want).max()


def test_verify_runs_the_tflite_on_litert(contracted):
    result = verify_conversion(contracted[0])
    tflite = next(c for c in result.candidates if c.label.startswith("compact.tflite"))
    assert tflite.runtime == "litert" and tflite.passed and result.passed


def test_a_truncated_tflite_is_judged_against_the_truncated_network(expanded, tmp_path):
    report = convert_checkpoint(expanded[0], tmp_path / "out",
                                ConvertOptions(onnx=False, litert=True, rank="energy:0.9"))
    assert report["truncation"]["flops_ratio"] < 1
    result = verify_conversion(tmp_path / "out")
    assert result.passed and "truncated" in result.reference
    assert next(c for c in result.candidates if c.label.startswith("compact.tflite")).passed


def test_timm_repvgg_a0_converts_and_runs_within_its_own_float32_error(tmp_path):
    _litert()
    model = timm_model("repvgg_a0")
    ckpt = save_checkpoint(tmp_path / "repvgg.pt", model.state_dict(),
                           {"arch": "families.factories:timm_model", "arch_kwargs": {"name": "repvgg_a0"},
                            "input_shape": [1, 3, 32, 32]})
    convert_checkpoint(ckpt, tmp_path / "out", ConvertOptions(onnx=False, litert=True))
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = _float64(model, x)
    with torch.no_grad():
        float32_error = np.abs(model.float()(torch.from_numpy(x)).numpy() - want).max()
    error = np.abs(_run_tflite(tmp_path / "out" / "compact.tflite", x) - want).max()
    assert error <= max(10 * float32_error, 1e-6 * np.abs(want).max())


def test_bench_times_the_tflite_beside_the_others_on_the_threads_asked(contracted, expanded, tmp_path, capfd):
    out = contracted[0]
    result = bench([out / "compact.pt2", out / "compact.tflite"], iters=3, warmup=1, threads=2, progress=False)
    assert [r["runtime"] for r in result.rows] == ["torch", "litert"] and all(r["p50_ms"] > 0 for r in result.rows)
    with TARGETS["tflite"].open(out / "compact.tflite", threads=2) as runner:
        assert runner.threads == 2  # bench passes --threads as the interpreter's num_threads
    cli = CliRunner().invoke(main, ["convert", str(expanded[0]), "-o", str(tmp_path / "cli"), "--no-onnx", "--litert"])
    assert cli.exit_code == 0, cli.output
    captured = capfd.readouterr()
    said = captured.out + captured.err
    assert "XNNPACK delegate" not in said and "LiteRT-Torch Convert" not in said and "flatbuffer_export" not in said


def test_the_runner_refuses_what_it_cannot_run(contracted, tmp_path):
    not_tflite = tmp_path / "notes.tflite"
    not_tflite.write_text("hello")
    with pytest.raises(BadInputError, match="is not a LiteRT model"):
        TARGETS["tflite"].open(not_tflite)
    with TARGETS["tflite"].open(contracted[0] / "compact.tflite") as runner:
        assert [s.shape for s in runner.inputs] == [SHAPE] and [s.name for s in runner.outputs] == ["output0"]
        with pytest.raises(BadInputError, match=r"has shape \(2, 1, 8, 8\), expected input0: float32\[1,1,8,8\]"):
            runner.infer({"input0": np.zeros((2, 1, 8, 8), np.float32)})


def test_without_litert_the_answer_names_the_extra(monkeypatch, tmp_path):
    for module in ("litert_torch", "ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, module, None)
    assert "litert-torch" in TARGETS["tflite"].missing()
    with pytest.raises(MissingRuntimeError, match=r"^--litert needs the Python package litert-torch, which is not "
                                                  r"installed here; pip install compactify\[edge\]$"):
        check_requests({"pt2": None, "tflite": None})
    artifact = tmp_path / "m.tflite"
    artifact.write_bytes(b"\0\0\0\0TFL3" + bytes(64))
    with pytest.raises(MissingRuntimeError, match=r"compactify\[edge\]"):
        TARGETS["tflite"].open(artifact)
