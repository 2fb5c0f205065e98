"""``compactify convert --int8`` end to end: the artifact, its measured cost, ``verify`` and ``bench`` on it,
and one line with exit 2 (nothing written) for every bad calibration input.

Stated threshold: a SmallNet-7 CL trained on digits keeps at least 97% top-1 agreement with its fp32
compact model on the 360 held-out digits test images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clihelp import error_line, run, snapshot
from compactify.converter.load.checkpoint import save_checkpoint

import int8_models

MIN_AGREEMENT = 0.97
DIGITS_META = {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.5, "hidden": 32}, "expand": "cl",
               "rate": 2, "input_shape": [1, 3, 8, 8]}
TIED_META = {"arch": "int8_models:tied", "input_shape": [1, 3, 8, 8]}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from compactify.models import build_model
    from compactify.models.train import train

    d = tmp_path_factory.mktemp("int8")
    torch.manual_seed(0)
    model = build_model(DIGITS_META)
    result = train(model, 3, input_shape=DIGITS_META["input_shape"], progress=False)
    meta = dict(DIGITS_META, training={"dataset": "digits", "epochs": 3, "test_accuracy": result.test_accuracy})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(d / "calib.npz", x=x, labels=rng.integers(0, 2, 40))
    return {"digits": save_checkpoint(d / "digits.pt", model.state_dict(), meta),
            "tied": save_checkpoint(d / "tied.pt", int8_models.tied().state_dict(), TIED_META),
            "calib": d / "calib.npz", "dir": d}


@pytest.fixture(scope="module")
def converted(ckpts, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv") / "out"
    result = run("convert", ckpts["digits"], "-o", out, "--int8")
    assert result.exit_code == 0, result.output
    return out, result


def test_convert_int8_writes_the_artifact_and_prints_its_cost(converted):
    out, result = converted
    assert sorted(p.name for p in out.iterdir()) == ["compact.int8.onnx", "compact.onnx", "compact.pt2",
                                                      "report.json", "report.md"]
    r = json.loads((out / "report.json").read_text())["int8"]
    assert r["top1_agreement"] >= MIN_AGREEMENT
    assert r["accuracy_int8"] is not None and r["held_out"]["source"] == "digits"
    assert r["calibration_method"] == "minmax" and r["weights"].startswith("int8, symmetric, per output channel")
    text = " ".join(result.stdout.split())  # the terminal wraps the summary
    assert "int8 (compact.int8.onnx, minmax calibration on 256 digits training images" in text
    assert "top-1 agreement with fp32" in text and "accuracy" in text and "max abs" in text
    assert "int8 layers adding the most error" in text and r["layers"][0]["layer"] in text


def test_verify_judges_int8_on_its_held_out_inputs_with_its_own_tolerance(converted):
    out, _ = converted
    result = run("verify", out, "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    int8 = next(c for c in data["candidates"] if c["path"].endswith("compact.int8.onnx"))
    assert int8["passed"] and int8["inputs"] == "the digits test split (360 images, with labels)"
    assert int8["tolerance"].startswith("0.1 x max|ref|") and int8["rtol"] == 0 and int8["atol"] > 1e-3
    assert int8["accuracy"] is not None and int8["outputs"]["output0"]["top1"] >= MIN_AGREEMENT - 0.02
    floats = [c for c in data["candidates"] if not c["baseline"] and c is not int8]
    assert all(c["atol"] == 1e-5 and c["tolerance"] is None for c in floats)  # the others keep theirs
    shown = run("verify", out)
    assert shown.exit_code == 0 and "compact.int8.onnx (ort) is int8: judged on the digits test split" in shown.stderr
    tight = run("verify", out, "--int8-tol", "1e-4")
    assert tight.exit_code == 1  # the table and the int8 note are printed before the verdict
    line = tight.stderr.splitlines()[-1]
    assert line.startswith("error: verification failed for 1 of 3") and "--int8-keep" in line
    assert "--per-region" not in line


def test_bench_times_the_int8_artifact_against_fp32(converted):
    out, _ = converted
    result = run("bench", out / "compact.onnx", out / "compact.int8.onnx", "--batch", "1,32", "--iters", "3",
                 "--threads", "1", "--json", "-")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert sorted(int(b) for b in data["runs"]) == [1, 32]
    for run_ in data["runs"].values():
        assert len(run_["ratios_paired"]) == 2 and all(v > 0 for v in run_["ratios_paired"].values())


def test_calibration_file_with_labels_and_a_failed_agreement_bar(ckpts, tmp_path):
    out = tmp_path / "out"
    ok = run("convert", ckpts["tied"], "-o", out, "--int8", "--calibration", ckpts["calib"],
             "--calibration-method", "percentile")
    assert ok.exit_code == 0, ok.output
    r = json.loads((out / "report.json").read_text())["int8"]
    assert r["held_out"]["held_out_samples"] == 8 and r["calibration"]["calibration_samples"] == 32
    assert r["accuracy_int8"] is not None and r["calibration_method"] == "percentile"
    assert r["top1_agreement"] < 0.5  # the tie: float picks class 1, int8 rounds both logits to one value
    again = run("convert", ckpts["tied"], "-o", out, "--int8", "--calibration", ckpts["calib"], "--force")
    assert again.exit_code == 0, again.output  # a previous output holding compact.int8.onnx is compactify's own
    # With a bar, the sensitivity pass keeps layers in float until the tie is decided as in float.
    strict = run("convert", ckpts["tied"], "-o", tmp_path / "strict", "--int8", "--calibration", ckpts["calib"],
                 "--int8-min-agreement", "0.99")
    assert strict.exit_code == 0, strict.output
    r = json.loads((tmp_path / "strict" / "report.json").read_text())["int8"]
    assert r["top1_agreement"] >= 0.99 and r["kept_in_float"]
    assert [k["layer"] for k in r["sensitivity_fallback"]["kept"]] == r["kept_in_float"]
    assert "to meet --int8-min-agreement 0.99, kept in float" in " ".join(strict.stdout.split())


def test_a_checkpoint_not_trained_on_digits_needs_a_calibration_file(ckpts, tmp_path):
    before = snapshot(tmp_path)
    error_line(run("convert", ckpts["tied"], "-o", tmp_path / "out", "--int8"),
               "--int8 needs calibration inputs: pass --calibration FILE.npz", "(N, 3, 8, 8)")
    assert snapshot(tmp_path) == before


def _bad(folder, case):
    x = np.random.default_rng(0).standard_normal((10, 3, 8, 8)).astype(np.float32)
    path = folder / f"{case}.npz"
    if case == "shape":
        np.savez(path, x=np.zeros((10, 3, 16, 16), np.float32))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "no_samples":
        np.savez(path, x=x[:0])
    elif case == "nan":
        x[3, 0, 0, 0] = np.nan
        np.savez(path, x=x)
    return path


@pytest.mark.parametrize("case,needle", [
    ("shape", "has shape (10, 3, 16, 16), but the model takes (N, 3, 8, 8)"),
    ("empty", "is an empty file"),
    ("no_samples", "holds no samples"),
    ("nan", "holds 1 NaN or Inf value"),
])
def test_bad_calibration_inputs_are_one_line_and_write_nothing(ckpts, tmp_path, case, needle):
    calib = _bad(tmp_path, case)
    before = snapshot(tmp_path)
    error_line(run("convert", ckpts["digits"], "-o", tmp_path / "out", "--int8", "--calibration", calib), needle)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("args,needle", [
    (["--calibration-method", "entropy"], "--calibration-method applies only with --int8"),
    (["--int8-min-agreement", "0.9"], "--int8-min-agreement applies only with --int8"),
    (["--int8-equalize"], "--int8-equalize applies only with --int8"),
    (["--int8-bias-correction"], "--int8-bias-correction applies only with --int8"),
    (["--int8-max-accuracy-drop", "1"], "--int8-max-accuracy-drop applies only with --int8"),
    (["--int8", "--no-onnx"], "drop --no-onnx"),
    (["--int8", "--calibration-method", "kl"], "minmax, entropy, percentile"),
    (["--int8", "--int8-min-agreement", "2"], "fraction in [0, 1]"),
    (["--int8", "--int8-keep", "nope"], "--int8-keep nope: no such layer"),
])
def test_bad_int8_options_are_one_line(ckpts, tmp_path, args, needle):
    before = snapshot(tmp_path)
    error_line(run("convert", ckpts["digits"], "-o", tmp_path / "out", *args), needle)
    assert snapshot(tmp_path) == before


def test_int8_equalize_rescales_the_relu_pairs_and_keeps_agreement(ckpts, tmp_path):
    out = tmp_path / "eq"
    result = run("convert", ckpts["digits"], "-o", out, "--int8", "--int8-equalize")
    assert result.exit_code == 0, result.output
    r = json.loads((out / "report.json").read_text())["int8"]
    # SmallNet-7's convs and its hidden Linear: the Conv -> ReLU -> Conv pairs of the compact graph.
    assert r["equalization"]["pairs"] >= 2 and r["equalization"]["largest_scale_ratio"] > 1
    assert r["top1_agreement"] >= MIN_AGREEMENT
    assert "cross-layer equalization of" in " ".join(result.stdout.split())


def test_int8_bias_correction_is_reported(ckpts, tmp_path):
    out = tmp_path / "bc"
    result = run("convert", ckpts["digits"], "-o", out, "--int8", "--int8-bias-correction")
    assert result.exit_code == 0, result.output
    r = json.loads((out / "report.json").read_text())["int8"]
    assert r["bias_correction"]["layers"] >= 4 and r["top1_agreement"] >= MIN_AGREEMENT
    assert "bias correction of" in " ".join(result.stdout.split())
