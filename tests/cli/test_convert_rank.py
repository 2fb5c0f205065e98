"""``compactify convert --rank``: truncation through the CLI, an expanded checkpoint contracted
and truncated in one go, bad rules, and the acceptance test on a nuclear-norm-trained net."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.load.checkpoint import save_checkpoint

import user_models

DIGITS_ARCH = {"num_classes": 10, "in_chans": 1, "input_size": 8}
DIGITS_SHAPE = [1, 1, 8, 8]
# Proximal nuclear-norm strength of the demo (SGD, lr 0.05): measured, 0.5 to 1.25 all keep
# accuracy within 0.3 points at half the FLOPs, while the unregularized net drops to ~57%.
NUCLEAR = 0.75


def _run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _read(out):
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    return save_checkpoint(path, user_models.expanded(4).state_dict(),
                           {"arch": "user_models:expanded", "arch_kwargs": {"width": 4}, "input_shape": [1, 3, 8, 8]})


@pytest.fixture(scope="module")
def nuclear_digits(tmp_path_factory):
    """The demo: SmallNet-7 on 8x8 digits trained with the nuclear-norm proximal step, saved
    with the metadata `compactify train` writes."""
    from compactify.models import create_model
    from compactify.models.data import load_digits_data
    from compactify.models.train import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # also makes the training run reproducible
    try:
        torch.manual_seed(0)
        model = create_model("smallnet7", **DIGITS_ARCH)
        result = train(model, 8, data=load_digits_data(DIGITS_SHAPE), nuclear=NUCLEAR, optimizer="sgd", lr=0.05,
                       batch_size=64, weight_decay=5e-4, progress=False)
    finally:
        torch.set_num_threads(before)
    meta = {"arch": "smallnet7", "arch_kwargs": DIGITS_ARCH, "expand": None, "rate": None, "layers": None,
            "aux": None, "input_shape": DIGITS_SHAPE,
            "training": {"dataset": "digits", "epochs": 8, "nuclear": NUCLEAR, "test_accuracy": result.test_accuracy}}
    path = tmp_path_factory.mktemp("digits") / "nuclear.pt"
    return save_checkpoint(path, model.state_dict(), meta)


def test_nuclear_trained_checkpoint_halves_its_flops_within_one_point(nuclear_digits, tmp_path):
    out = tmp_path / "out"
    r = _run("convert", nuclear_digits, "-o", out, "--no-onnx", "--rank", "flops:0.5")
    assert r.exit_code == 0, r.output
    report = _read(out)
    t = report["truncation"]
    assert t["flops_truncated"] <= 0.5 * t["flops_untruncated"]
    assert report["flops_after"] <= 0.5 * report["flops_before"]
    assert t["accuracy_before"] - t["accuracy_after"] <= 0.01, t
    assert t["accuracy_before"] >= 0.9
    assert t["output_error"]["inputs"].endswith("digits training images")
    assert any(r["decision"] == "factored" for r in report["regions"])
    # The shipped program is the truncated network: its accuracy is the one reported.
    from compactify.models.data import load_digits_data

    digits = load_digits_data(DIGITS_SHAPE)
    with torch.no_grad():
        predicted = torch.export.load(str(out / "compact.pt2")).module()(digits.x_test).argmax(1)
    assert float((predicted == digits.y_test).float().mean()) == pytest.approx(t["accuracy_after"], abs=1e-9)
    md = (out / "report.md").read_text()
    assert "## Rank truncation: `flops:0.5`" in md and "accuracy on the digits test split" in md
    assert "accuracy" in r.output and "flops:0.5" in r.output


def test_rank_reasons_take_two_lines_at_most_at_80_columns(tiny, tmp_path):
    """A factored layer's reason wrapped to 8 lines at 80 columns; the table says its rank and energy in
    two lines at most, and report.md keeps how it was chosen."""
    out = tmp_path / "out"
    r = _run("convert", tiny, "-o", out, "--no-onnx", "--rank", "energy:0.9", env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    report = _read(out)
    names = [g["name"] for g in report["regions"]]
    lines = r.stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.split()[:1] and line.split()[0] in names]
    end = next(i for i, line in enumerate(lines) if line.startswith("parameters"))
    heights = [b - a for a, b in zip(starts, starts[1:] + [end])]
    assert len(starts) == len(names) and max(heights) <= 2, r.stdout
    factored = [g for g in report["regions"] if g["decision"] == "factored"]
    assert factored and all(len(line) <= 80 for line in lines)
    row = next(t for t in report["truncation"]["layers"] if t["region"] == factored[0]["name"])
    assert f"rank {row['rank_after']} of {row['full_rank']}" in " ".join(r.stdout.split())
    assert factored[0]["reason"] in (out / "report.md").read_text()  # whole there


def test_rank_multiple_and_the_report_rows(nuclear_digits, tmp_path):
    out = tmp_path / "out"
    r = _run("convert", nuclear_digits, "-o", out, "--no-onnx", "--rank", "energy:0.99", "--rank-multiple", "4")
    assert r.exit_code == 0, r.output
    t = _read(out)["truncation"]
    assert t["multiple"] == 4
    factored = [row for row in t["layers"] if row["form"] != "dense"]
    assert factored
    for row in t["layers"]:
        for key in ("rank_before", "rank_after", "full_rank", "energy_kept", "params_before", "params_after",
                    "flops_before", "flops_after", "form", "reason"):
            assert key in row
    for row in factored:
        assert row["rank_after"] % 4 == 0 or row["rank_after"] == row["full_rank"]
        assert row["energy_kept"] >= 0.99
        assert row["flops_after"] < row["flops_before"]


def test_expanded_checkpoint_contracted_and_truncated_in_one_convert(tmp_path):
    from compactify.models import create_model, expand

    torch.manual_seed(0)
    model = expand(create_model("smallnet7", **DIGITS_ARCH), "cl", rate=2)
    ckpt = save_checkpoint(tmp_path / "expanded.pt", model.state_dict(),
                           {"arch": "smallnet7", "arch_kwargs": DIGITS_ARCH, "expand": "cl", "rate": 2,
                            "layers": None, "aux": None, "input_shape": DIGITS_SHAPE})
    plain, out = tmp_path / "plain", tmp_path / "out"
    assert _run("convert", ckpt, "-o", plain, "--no-onnx").exit_code == 0
    r = _run("convert", ckpt, "-o", out, "--no-onnx", "--rank", "flops:0.6")
    assert r.exit_code == 0, r.output
    report, contracted = _read(out), _read(plain)
    merged_then_factored = [g for g in report["regions"] if g["decision"] == "factored" and len(g["ops"]) > 1]
    assert merged_then_factored, [(g["name"], g["decision"]) for g in report["regions"]]
    t = report["truncation"]
    assert t["flops_untruncated"] == contracted["flops_after"] < contracted["flops_before"]
    assert t["flops_truncated"] == report["flops_after"] <= 0.6 * contracted["flops_after"]
    assert "accuracy_before" not in t  # not trained on digits: no accuracy to report
    assert t["output_error"]["inputs"].endswith("N(0,1) inputs")
    # The error against the expanded source is the truncation's (contraction adds ~1e-7): one figure,
    # measured once on the inputs the report names, and the same in report.json, report.md and the summary.
    measured = t["output_error"]
    assert report["max_rel_error"] == measured["max_rel_error"] > 1e-4
    assert report["max_abs_error"] == measured["max_abs"] and measured["inputs"] in report["error_definition"]
    figure = f"{measured['max_rel_error']:.3g}"
    md = (out / "report.md").read_text()
    assert md.count(f"max rel error {figure}") == 1 and measured["inputs"] in md
    said = " ".join(r.output.split())
    assert said.count("max rel error") == 1
    assert f"max rel error {measured['max_rel_error']:.2e} against that plan" in said and measured["inputs"] in said


def test_without_a_rule_nothing_changes(tiny, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run("convert", tiny, "-o", a, "--no-onnx").exit_code == 0
    r = _run("convert", tiny, "-o", b, "--no-onnx", "--rank", "threshold:1e-9")
    assert r.exit_code == 0, r.output
    ra, rb = _read(a), _read(b)
    assert "truncation" not in ra and "truncation" in rb
    assert [g["decision"] for g in ra["regions"]] == [g["decision"] for g in rb["regions"]]
    assert ra["flops_after"] == rb["flops_after"] and rb["truncation"]["output_error"]["max_abs"] == 0.0


@pytest.mark.parametrize("args,needle", [
    (["--rank", "energy"], "cannot parse --rank rule"),
    (["--rank", "foo:1"], "unknown --rank rule"),
    (["--rank", "energy:1.5"], "must be in (0, 1]"),
    (["--rank", "energy:0"], "must be in (0, 1]"),
    (["--rank", "flops:-1"], "must be in (0, 1]"),
    (["--rank", "rank:0"], "the rank must be a whole number >= 1"),
    (["--rank", "rank:x"], "the rank must be a whole number >= 1"),
    (["--rank", "error:0"], "the error bound must be > 0"),
    (["--rank", "threshold:nan"], "must be finite"),
    (["--rank", "flops:0.01"], "is out of reach"),
    (["--rank", "energy:0.9", "--rank-multiple", "0"], "--rank-multiple must be a whole number >= 1"),
    (["--rank", "energy:0.9", "--rank-multiple", "x"], "--rank-multiple must be a whole number >= 1"),
    (["--rank", "energy:0.9", "--cost", "fast"], "--cost must be flops or latency"),
    (["--cost", "latency"], "add --rank RULE"),
])
def test_bad_rank_options_are_one_line_and_exit_2(tiny, tmp_path, args, needle):
    out = tmp_path / "out"
    r = _run("convert", tiny, "-o", out, "--no-onnx", *args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.output
    assert not out.exists()
