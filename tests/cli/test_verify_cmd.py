"""``compactify verify``: exit 0 when every artifact matches, 1 when one does not, 2 for bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from compactify.cli import main
from compactify.converter.load.checkpoint import save_checkpoint
from compactify.models import build_model

META = {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.25, "hidden": 8}, "expand": "ck+fc",
        "rate": 2, "input_shape": [1, 3, 8, 8]}


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("verify_cmd")
    ckpt = save_checkpoint(root / "net.safetensors", build_model(META).state_dict(), META)
    out = root / "out"
    r = _run("convert", ckpt, "-o", out)
    assert r.exit_code == 0, r.output
    return ckpt, out


def test_verify_passes_and_writes_json(converted, tmp_path):
    _, out = converted
    r = _run("verify", out, "--batches", "1", "--json", tmp_path / "v.json")
    assert r.exit_code == 0, r.output
    for text in ("compact.pt2 (torch)", "compact.onnx (ort)", "expanded float32", "PASS", "verification passed"):
        assert text in r.output
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["passed"] is True
    assert [c["label"] for c in data["candidates"]][1:] == ["compact.pt2 (torch)", "compact.onnx (ort)"]
    assert data["candidates"][2]["outputs"]["output0"]["max_abs"] < 1e-5


def test_tampered_onnx_exits_1_and_per_region_prints_regions(converted, tmp_path):
    _, src = converted
    out = tmp_path / "out"
    shutil.copytree(src, out)
    proto = onnx.load(str(out / "compact.onnx"))
    for init in proto.graph.initializer:  # every weight scaled by 2%
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim > 1:
            init.CopyFrom(numpy_helper.from_array(arr * np.float32(1.02), init.name))
    onnx.save(proto, str(out / "compact.onnx"))
    r = _run("verify", out, "--batches", "1", "--per-region")
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: verification failed for 1 of 2 model(s): compact.onnx")
    assert "merged regions" in r.output and "conv1_bn" in r.output
    # A looser tolerance lets it pass: the verdict follows --atol/--rtol.
    assert _run("verify", out, "--batches", "1", "--atol", "1", "--rtol", "1").exit_code == 0


def test_reference_and_candidate(converted):
    ckpt, out = converted
    r = _run("verify", "--reference", ckpt, "--candidate", out / "compact.onnx", "--batches", "1")
    assert r.exit_code == 0, r.output
    assert "net.safetensors (torch float64)" in r.output


@pytest.mark.parametrize("args,message", [
    (["{tmp}"], "has no report.json"),
    (["{tmp}/missing"], "does not exist"),
    (["{out}", "--inputs", "{tmp}/wrong.npz"], "holds arrays ['image']"),
    (["{out}", "--inputs", "{tmp}/shape.npz"], "has shape (4, 3, 8)"),
    (["{out}", "--arch", "smallnet7"], "apply to --reference/--candidate"),
    (["--reference", "{out}/compact.pt2"], "go together"),
    ([], "give the output folder"),
    (["--reference", "{out}/compact.pt2", "--candidate", "{out}/compact.onnx", "--runtime-b", "trt"],
     "runs on --runtime ort"),
    # --input-shape against the reference's own sizes (issue 22): a checkpoint's network, a program's dims.
    (["--reference", "{ckpt}", "--candidate", "{out}/compact.onnx", "--input-shape", "3,8,8"],
     ("has no batch dim: the first layer (conv1.0, a Conv2d) takes 4 dims (batch, channels, height, width); "
      "did you mean 1,3,8,8?")),
    (["--reference", "{ckpt}", "--candidate", "{out}/compact.onnx", "--input-shape", "1,3,16,16"],
     "the model was built for 8x8 inputs (1,3,8,8); at 16x16 its layer fc1.0 (Linear) gets 32 features"),
])
def test_bad_input_is_one_line_and_exit_2(converted, tmp_path, args, message):
    ckpt, out = converted
    np.savez(tmp_path / "wrong.npz", image=np.zeros((2, 3, 8, 8), np.float32))
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 3, 8), np.float32))
    r = _run("verify", *(a.format(tmp=tmp_path, out=out, ckpt=ckpt) for a in args))
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: --device cuda would run")
def test_missing_runtime_is_exit_2(converted):
    _, out = converted
    r = _run("verify", out, "--device", "cuda", "--batches", "1")
    assert r.exit_code == 2, r.output
    assert "cuda" in r.stderr.lower() and len(r.stderr.strip().splitlines()) == 1
