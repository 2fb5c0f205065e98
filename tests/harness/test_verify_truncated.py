"""A truncated conversion judged as what it is: convert --rank warns (and with --max-accuracy-drop
fails, writing nothing) when accuracy falls; verify checks the artifacts against the truncated
network and reports the truncation's effect apart, never as a failed export."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from compactify.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_max_accuracy_drop_fails_and_writes_nothing(tiny_digits, tmp_path):
    out = tmp_path / "out"
    result = _run("convert", tiny_digits, "-o", out, "--rank", "flops:0.5", "--no-onnx", "--max-accuracy-drop", "1")
    assert result.exit_code == 1, result.output
    assert "more than --max-accuracy-drop 1" in result.output and "nothing written" in result.output
    assert not out.exists()


def test_a_truncated_conversion_warns_and_verifies_as_an_export(tiny_digits, tmp_path):
    out = tmp_path / "out"
    result = _run("convert", tiny_digits, "-o", out, "--rank", "flops:0.5")
    assert result.exit_code == 0, result.output
    assert "warning: --rank flops:0.5 lowered the accuracy" in result.output
    report = json.loads((out / "report.json").read_text())
    assert any("lowered the accuracy" in w for w in report["warnings"])
    checked = _run("verify", out, "--json", "-")
    assert checked.exit_code == 0, checked.output  # the export is exact; the truncation is not its failure
    payload = json.loads(checked.output[:checked.output.rindex("}") + 1])
    assert payload["passed"] and payload["reference"].startswith("truncated compact.pt2 float64")
    effect = payload["truncation"]  # the conversion's own figures, not measured again on verify's inputs
    assert effect["accuracy_after"] == report["truncation"]["accuracy_after"]
    assert effect["accuracy_after"] < effect["accuracy_before"] - 0.05
    assert effect["max_rel_error"] == report["truncation"]["output_error"]["max_rel_error"] > 0.01
    assert effect["inputs"] == report["truncation"]["output_error"]["inputs"] == "128 digits training images"


def test_data_file_labels_judge_the_truncation(tiny_digits, tmp_path):
    from compactify.models.data import load_digits_data

    d = load_digits_data([1, 1, 8, 8])
    data = tmp_path / "held.npz"
    np.savez(data, x=d.x_test.numpy()[:100], labels=d.y_test.numpy()[:100])
    out = tmp_path / "out"
    result = _run("convert", tiny_digits, "-o", out, "--rank", "energy:0.99", "--no-onnx", "--data", data)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["truncation"]["accuracy_on"].startswith("held.npz (100")
    np.savez(tmp_path / "nolabels.npz", x=d.x_test.numpy()[:10])
    result = _run("convert", tiny_digits, "-o", tmp_path / "o2", "--rank", "energy:0.99", "--data",
                  tmp_path / "nolabels.npz")
    assert result.exit_code == 2 and "no 'labels' array" in result.output
