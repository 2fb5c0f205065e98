"""`compactify models`, `compactify expand`, `compactify train` through click's CliRunner."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.load.checkpoint import load_checkpoint
from compactify.models import build_model


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_models_table():
    result = run("models", "smallnet*")
    assert result.exit_code == 0, result.output
    assert "66,186" in result.output and "15,050" in result.output and "1x3x32x32" in result.output
    assert "8.90M" in result.output  # FLOPs of SmallNet-7 (conv and linear, multiply-add = 2)
    result = run("models", "smallnet7*", "--expanded")
    assert "smallnet7-ck+fc" in result.output and "1,775,290" in result.output
    one_line_error(run("models", "nosuch*"), "no model matches")


def test_models_says_how_expanded_names_are_formed_and_a_pattern_with_a_dash_finds_them():
    plain = run("models", "smallnet7")
    assert plain.exit_code == 0, plain.output
    said = " ".join(plain.output.split())
    assert "expanded variants: NAME-MODE with MODE fc, cl, ck, cl+fc, ck+fc" in said and "--expanded" in said
    found = run("models", "repvgg-cl")  # found nothing before: only --expanded listed BASE-MODE names
    assert found.exit_code == 0, found.output
    assert "repvgg-cl" in found.output and "expanded variants:" not in found.output
    every = run("models", "smallnet7-*")
    assert "smallnet7-ck+fc" in every.output and "smallnet7-fc" in every.output


def test_expand_writes_a_checkpoint_that_rebuilds(tmp_path):
    out = tmp_path / "s7.safetensors"
    result = run("expand", "smallnet7", "--mode", "ck+fc", "--rate", "2", "--arch-kwargs", '{"input_size": 16}',
                 "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "5 layers expanded" in result.output
    ckpt = load_checkpoint(out)
    meta = ckpt.meta
    assert meta["arch"] == "smallnet7" and meta["expand"] == "ck+fc" and meta["rate"] == 2
    assert meta["arch_kwargs"] == {"input_size": 16} and meta["input_shape"] == [1, 3, 16, 16]
    assert meta["layers"] is None and meta["aux"] is None
    model = build_model(meta)
    model.load_state_dict(ckpt.state_dict, strict=True)
    assert model.fc1[0].out_features == 2 * 128

    # same seed, same weights; BASE-MODE names work too
    again = tmp_path / "again.pt"
    assert run("expand", "smallnet7-fc+ck", "--rate", "2", "--arch-kwargs", '{"input_size": 16}',
               "-o", str(again)).exit_code == 0
    other = load_checkpoint(again)
    assert all(torch.equal(other.state_dict[k], v) for k, v in ckpt.state_dict.items())

    part = tmp_path / "part.pt"
    assert run("expand", "smallnet7", "--mode", "cl", "--layers", "conv2,conv3", "-o", str(part)).exit_code == 0
    assert load_checkpoint(part).meta["expanded_layers"] == ["conv2", "conv3"]


@pytest.mark.parametrize("args,fragments", [
    (["expand", "smalnet7", "--mode", "cl"], ["unknown model 'smalnet7'", "smallnet7"]),
    (["expand", "smallnet3", "--mode", "ck"], ["'ck' does not apply"]),
    (["expand", "smallnet3", "--mode", "ck+fc"], ["'ck' does not apply"]),
    (["expand", "mobilenetv2", "--mode", "ck"], ["'ck' does not apply"]),
    (["expand", "smallnet7", "--mode", "cl", "--rate", "0"], ["--rate must be >= 1"]),
    (["expand", "smallnet7", "--mode", "zz"], ["unknown expansion mode"]),
    (["expand", "smallnet7"], ["give --mode"]),
    (["expand", "smallnet7-cl", "--mode", "fc"], ["conflicts"]),
    (["expand", "smallnet7", "--mode", "cl", "--arch-kwargs", "{bad"], ["not valid JSON"]),
    (["expand", "smallnet7", "--mode", "cl", "--arch-kwargs", '{"depth": 2}'], ["does not take 'depth'"]),
    (["expand", "smallnet7", "--mode", "cl", "--layers", "conv9"], ["match no layer"]),
    (["train", "nosuch", "--epochs", "1"], ["unknown model"]),
    (["train", "smallnet7", "--epochs", "0"], ["--epochs must be a positive integer"]),
    (["train", "smallnet7", "--epochs", "-3"], ["--epochs must be a positive integer"]),
    (["train", "smallnet7", "--expand", "cl", "--rate", "0"], ["--rate must be >= 1"]),
    (["train", "smallnet3", "--expand", "ck"], ["'ck' does not apply"]),
    # --nuclear's value is optional (alone: the documented default); a negative one is still its value.
    (["train", "smallnet7", "--nuclear", "-1"], ["--nuclear must be >= 0, got -1"]),
    (["train", "smallnet7", "--nuclear", "-0.5e-3"], ["--nuclear must be >= 0, got -0.0005"]),
    (["train", "smallnet7", "--group-lasso", "-2"], ["--group-lasso must be >= 0, got -2"]),
    (["train", "smallnet7", "--weight-decay", "-0.1"], ["--weight-decay must be >= 0, got -0.1"]),
    (["train", "smallnet7", "--arch-kwargs", '{"num_classes": 5}'], ["digits has 10 classes"]),
    (["train", "smallnet3", "--input-size", "8"], ["too small"]),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, fragments):
    out = tmp_path / "x.pt"
    one_line_error(run(*args, "-o", str(out)), *fragments)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "x.pt"
    out.write_bytes(b"keep")
    one_line_error(run("expand", "smallnet7", "--mode", "fc", "-o", str(out)), "already exists", "--force")
    assert out.read_bytes() == b"keep"
    assert run("expand", "smallnet7", "--mode", "fc", "-o", str(out), "--force").exit_code == 0


def test_train_saves_metadata_and_weights(tmp_path):
    out = tmp_path / "t.pt"
    result = run("train", "smallnet7", "--expand", "fc", "--rate", "2", "--aux", "--nuclear", "1",
                 "--reg-layers", "fc1.*", "--arch-kwargs", '{"width": 0.5, "hidden": 16}', "--input-size", "12",
                 "--epochs", "1", "--weight-decay", "0.05", "-q", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    ckpt = load_checkpoint(out)
    meta = ckpt.meta
    training = meta["training"]
    assert training["dataset"] == "digits" and training["epochs"] == 1
    assert training["input_shape"] == meta["input_shape"] == [1, 3, 12, 12]
    assert 0.0 <= training["test_accuracy"] <= 1.0 and training["nuclear"] == 1.0 and training["weight_decay"] == 0.05
    assert meta["expand"] == "fc" and meta["rate"] == 2 and meta["aux"]["heads"] == ["conv2_bn"]
    model = build_model(meta)
    model.load_state_dict(ckpt.state_dict, strict=True)
    from compactify.models.train import evaluate

    assert evaluate(model, input_shape=meta["input_shape"]) == pytest.approx(training["test_accuracy"])
