"""At which input sizes a conversion holds, as the CLI user sees it (issue 11)."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.frontends.fx.check import reference_float64

import user_models


def _convert(tmp_path, *extra):
    torch.manual_seed(0)
    model = user_models.expanded(4).eval()
    ckpt = tmp_path / "m.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / ("out" + "".join(extra).replace("-", ""))
    result = CliRunner().invoke(main, ["convert", str(ckpt), "--arch", "user_models:expanded", "--arch-kwargs",
                                       '{"width": 4}', "--input-shape", "1,3,12,12", "-o", str(out), "--no-onnx",
                                       *extra])
    assert result.exit_code == 0, result.output
    return model, out, json.loads((out / "report.json").read_text())


def _program_error(model, out, size) -> float:
    program = torch.export.load(str(out / "compact.pt2"))
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        ref = reference_float64(model)(x.double())
        got = program.module()(x)
    return float((got.double() - ref).abs().max() / ref.abs().max())


def test_default_conversion_says_it_holds_at_the_traced_size(tmp_path):
    model, out, report = _convert(tmp_path)
    assert report["accepts_input_size"].startswith("12x12 only")
    # Exact where it runs, said so; that its merges would hold elsewhere too is said apart.
    assert report["exact_at"] == "the one input size it accepts (its merges hold at every size)"
    assert report["merges_exact_at_every_size"]
    md = (out / "report.md").read_text()
    assert "- exact at: the one input size it accepts" in md and "accepts input size: 12x12 only" in md
    assert _program_error(model, out, 12) <= 1e-6


def test_dynamic_hw_conversion_holds_at_every_size(tmp_path):
    model, out, report = _convert(tmp_path, "--dynamic-hw")
    assert report["dynamic_hw"] and report["accepts_input_size"] == "any"
    assert report["exact_at"] == "every input size it accepts"
    for size in (9, 12, 17):
        assert _program_error(model, out, size) <= 1e-6
