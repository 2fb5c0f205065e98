"""Issue 3's bar end to end: nets trained by `compactify train` on digits reach 90%, and their
contracted forms (auxiliary heads dropped) make the same top-1 predictions."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.load.checkpoint import load_checkpoint
from compactify.models import build_model, create_model
from compactify.models.data import load_digits_data


@pytest.mark.slow
@pytest.mark.parametrize("arch,extra", [("smallnet7", ["--aux"]), ("smallnet7-cl", []), ("smallnet7-ck+fc", [])])
def test_trained_net_reaches_90_percent_and_its_contraction_predicts_the_same(tmp_path, arch, extra):
    ckpt_path, out = tmp_path / "net.pt", tmp_path / "out"
    trained = CliRunner().invoke(main, ["train", arch, *extra, "-q", "-o", str(ckpt_path)])
    assert trained.exit_code == 0, trained.output
    ckpt = load_checkpoint(ckpt_path)
    meta = ckpt.meta
    assert meta["training"]["test_accuracy"] >= 0.9

    converted = CliRunner().invoke(main, ["convert", str(ckpt_path), "-o", str(out), "--no-onnx"])
    assert converted.exit_code == 0, converted.output
    report = json.loads((out / "report.json").read_text())
    size = meta["input_shape"][-1]
    compact_size = sum(p.numel() for p in create_model("smallnet7", input_size=size).parameters())
    assert report["params_after"] <= compact_size  # BatchNorm folded, auxiliary parts gone
    assert report["max_rel_error"] <= 1e-6

    model = build_model(meta)
    model.load_state_dict(ckpt.state_dict)
    model.eval()
    compact = torch.export.load(str(out / "compact.pt2")).module()
    digits = load_digits_data(meta["input_shape"])
    with torch.no_grad():
        expected = model(digits.x_test).argmax(1)
        got = compact(digits.x_test).argmax(1)
    assert torch.equal(got, expected)
    assert (got == digits.y_test).float().mean().item() >= 0.9
