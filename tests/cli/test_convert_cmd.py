"""``compactify convert``: formats in, files out, and one clear line for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.load.checkpoint import save_checkpoint

import user_models
from families import public
from clihelp import error_line, tiny_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model = user_models.expanded(8)
    sd = model.state_dict()
    paths = {}
    paths["bare"] = d / "bare.pt"
    torch.save(sd, paths["bare"])
    paths["meta"] = save_checkpoint(d / "meta.pt", sd, {"arch": "user_models:expanded", "arch_kwargs": {"width": 8},
                                                          "input_shape": [1, 3, 12, 12]})
    paths["safetensors"] = save_checkpoint(d / "m.safetensors", sd, {"arch": "user_models:expanded",
                                                                       "input_shape": [1, 3, 12, 12]})
    paths["wrapped"] = d / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, paths["wrapped"])
    paths["pickle"] = d / "pickle.pt"
    torch.save(model, paths["pickle"])
    paths["pt2"] = d / "prog.pt2"
    torch.export.save(torch.export.export(model.eval(), (torch.randn(2, 3, 12, 12),)), paths["pt2"])
    paths["truncated"] = d / "trunc.pt"
    paths["truncated"].write_bytes(paths["bare"].read_bytes()[:200])
    nan = {k: v.clone() for k, v in sd.items()}
    nan["head.weight"][0, 0] = float("inf")
    paths["nan"] = d / "nan.pt"
    torch.save(nan, paths["nan"])
    paths["dd"] = d / "dd.pt"
    torch.save(user_models.data_dependent().state_dict(), paths["dd"])
    return paths


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _read(out):
    return json.loads((out / "report.json").read_text())


@pytest.mark.parametrize("kind,extra", [
    ("bare", ["--arch", "user_models:expanded", "--arch-kwargs", '{"width": 8}', "--input-shape", "1,3,12,12"]),
    ("meta", []),
    ("safetensors", []),
    ("wrapped", ["--arch", "user_models:expanded", "--input-shape", "1,3,12,12"]),
    ("pickle", ["--trust-pickle", "--input-shape", "1,3,12,12"]),
    ("pt2", []),
])
def test_convert_reads_every_checkpoint_format(ckpts, tmp_path, kind, extra):
    out = tmp_path / "out"
    r = _run("convert", ckpts[kind], "-o", out, "--no-onnx", *extra)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["compact.pt2", "report.json", "report.md"]
    report = _read(out)
    for key in ("regions", "params_before", "params_after", "flops_before", "flops_after",
                "max_abs_error", "max_rel_error", "input_shape", "source"):
        assert key in report
    assert report["source"]["sha256"] and len(report["source"]["sha256"]) == 64
    assert report["max_rel_error"] <= 1e-6
    assert report["params_after"] < report["params_before"]
    assert any(r["decision"] == "dense" for r in report["regions"])
    program = torch.export.load(str(out / "compact.pt2"))
    x = torch.randn(3, 3, 12, 12)  # a batch the conversion never saw: the batch stays dynamic
    assert program.module()(x).shape == (3, 5)
    assert "| dense |" in (out / "report.md").read_text()


def test_onnx_artifacts_static_batch_and_fp16(ckpts, tmp_path):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "out"
    r = _run("convert", ckpts["meta"], "-o", out, "--static", "--fp16")
    assert r.exit_code == 0, r.output
    report = _read(out)
    assert report["artifacts"] == {"pt2": "compact.pt2", "onnx": "compact.onnx", "onnx_fp16": "compact.fp16.onnx"}
    assert report["onnx"]["opset"] >= 18 and report["onnx"]["dynamic_batch"] is False
    model = onnx.load(str(out / "compact.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["compactify.source_sha256"] == report["source"]["sha256"]
    assert json.loads(props["compactify.contraction"])["params_after"] == report["params_after"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2  # fixed batch
    session = ort.InferenceSession(str(out / "compact.fp16.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"


def test_trt_without_tensorrt_is_one_line_and_writes_nothing(ckpts, tmp_path):
    from compactify.runtimes.devices import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT and CUDA are present: the refusal path does not apply")
    out = tmp_path / "out"
    r = _run("convert", ckpts["meta"], "-o", out, "--trt")
    assert r.exit_code == 2 and r.output.startswith("error: --trt needs") and len(r.output.splitlines()) == 1
    assert not out.exists()


def test_existing_output_needs_force(ckpts, tmp_path):
    out = tmp_path / "out"
    assert _run("convert", ckpts["meta"], "-o", out).exit_code == 0
    r = _run("convert", ckpts["meta"], "-o", out)
    assert r.exit_code == 2 and "--force" in r.output
    assert _run("convert", ckpts["meta"], "-o", out, "--force").exit_code == 0


@pytest.mark.parametrize("kind,extra,needle", [
    ("missing", [], "does not exist"),
    ("truncated", ["--arch", "user_models:expanded"], "truncated or damaged"),
    ("pickle", [], "--trust-pickle"),
    ("bare", [], "--arch"),
    ("bare", ["--arch", "nosuchnet"], "unknown model"),
    ("bare", ["--arch", "smallnet7"], "does not fit arch smallnet7"),
    ("bare", ["--arch", "user_models:expanded", "--arch-kwargs", "{width"], "not valid JSON"),
    ("bare", ["--arch", "user_models:expanded", "--arch-kwargs", '{"width": 4}', "--input-shape", "1,3,12,12"],
     "shape mismatch"),
    ("nan", ["--arch", "user_models:expanded", "--input-shape", "1,3,12,12"], "NaN or Inf"),
    ("dd", ["--arch", "user_models:data_dependent", "--input-shape", "1,3,12,12"], "torch.export could not capture"),
    ("bare", ["--arch", "user_models:expanded", "--input-shape", "1,5,12,12"], "takes 3 channels, got 5"),
    ("bare", ["--arch", "user_models:expanded", "--input-shape", "1,x,2"], "--input-shape"),
    ("bare", ["--arch", "no_such_module:f"], "cannot import"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(ckpts, tmp_path, kind, extra, needle):
    path = ckpts.get(kind, tmp_path / "missing.pt")
    out = tmp_path / "out"
    r = _run("convert", path, "-o", out, *extra)
    assert r.exit_code == 2, r.output
    lines = [l for l in r.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output
    assert "Traceback" not in r.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


@pytest.mark.parametrize("kind,shape,needle", [
    ("meta", "1,3,12", "--input-shape 1,3,12: expected 4 dims (batch, channels, height, width), got 3"),
    ("meta", "3,12,12", ("has no batch dim: the first layer (chain.0, a Conv2d) takes 4 dims (batch, channels, "
                         "height, width); did you mean 1,3,12,12?")),
    ("meta", "1,1,12,12", "the first layer (chain.0, a Conv2d) takes 3 channels, got 1"),
    ("pickle", "1,1,12,12", "takes 3 channels, got 1"),
    ("pt2", "1,3,16,16", "the exported program prog.pt2 takes 2x3x12x12 (? is any size); did you mean 1,3,12,12?"),
    ("pt2", "1,3,16", "the exported program prog.pt2 takes 4 dims"),
    ("registry", "1,3,16,16", ("the model was built for 8x8 inputs (1,3,8,8); at 16x16 its layer fc1.0 (Linear) "
                               "gets 32 features where it takes 8")),
    ("flat", "1,3,6,6", "does not fit the model: at 6x6 its layer 2 (Linear) gets 144 features where it takes 256"),
])
def test_an_input_shape_that_does_not_fit_names_what_the_model_takes(ckpts, tmp_path, kind, shape, needle):
    """--input-shape against the model's own sizes, before anything runs on data (issue 22)."""
    extra = {"pickle": ["--trust-pickle"], "flat": ["--arch", "user_models:flat"]}.get(kind, [])
    if kind == "registry":
        path = tiny_checkpoint(tmp_path / "tiny.pt")
    elif kind == "flat":
        path = tmp_path / "flat.pt"
        torch.save(user_models.flat().state_dict(), path)
    else:
        path = ckpts[kind]
    r = _run("convert", path, "-o", tmp_path / "out", "--input-shape", shape, *extra)
    error_line(r, needle)
    assert not (tmp_path / "out").exists()


def test_data_dependent_error_names_the_failing_call(ckpts, tmp_path):
    r = _run("convert", ckpts["dd"], "--arch", "user_models:data_dependent", "--input-shape", "1,3,12,12",
             "-o", tmp_path / "o")
    assert "user_models.py" in r.output and "forward" in r.output


def test_a_timm_model_converts_through_a_factory_module(tmp_path):
    """A user's ``--arch mypkg:factory`` around ``timm.create_model`` converts in the environment the
    README builds, whose torchvision (a CUDA build) cannot load its C++ ops: in a fresh process, so
    nothing the tests imported before helps it."""
    torch.manual_seed(0)
    path = tmp_path / "repvgg_a0.pt"
    torch.save(public.timm().create_model("repvgg_a0", pretrained=False, num_classes=10).state_dict(), path)
    here = Path(__file__).parent
    r = subprocess.run([sys.executable, "-m", "compactify", "convert", str(path), "--arch", "timm_models:repvgg_a0",
                        "--input-shape", "1,3,64,64", "-o", str(tmp_path / "out"), "--no-onnx"],
                       cwd=here, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent.parent)])},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stderr == "", r.stdout + r.stderr
    assert (tmp_path / "out" / "report.json").exists()
