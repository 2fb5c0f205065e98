"""A wrong argument, option or file is answered before torch is imported (torch and ONNX cost seconds,
tens of seconds on a loaded machine): for every command, one line on stderr, a non-zero exit, and torch
never in ``sys.modules``. Each case runs in a fresh interpreter, where nothing imported torch before."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import click
import onnx
import pytest
from clihelp import ROOT
from onnx import TensorProto, helper

from compactify.cli import COMMANDS, main
from compactify.cli.api_defaults import ApiDefault

# The command run in the fresh interpreter: its exit code, its stderr, and whether torch got imported.
PROBE = """
import contextlib, io, json, sys
from compactify.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err):
    code = main(sys.argv[1:], standalone_mode=False)
print(json.dumps({"code": code, "stderr": err.getvalue(), "torch": "torch" in sys.modules}))
"""

CASES = {
    "convert": [
        (["convert", "{dir}/missing.pt", "-o", "{dir}/out"], "checkpoint {dir}/missing.pt does not exist"),
        (["convert", "{dir}/missing.onnx", "-o", "{dir}/out"], "ONNX model {dir}/missing.onnx does not exist"),
        (["convert", "{file}", "-o", "{dir}/out", "--arch-kwargs", "{{width"], "not valid JSON"),
        (["convert", "{file}", "-o", "{dir}/out", "--input-shape", "1,x"], "--input-shape"),
        (["convert", "{file}", "-o", "{dir}/out", "--rank", "energy:3"], "the fraction must be in (0, 1]"),
        (["convert", "{file}", "-o", "{dir}/out", "--int8-keep", "conv1"], "only with --int8"),
        (["convert", "{file}", "-o", "{dir}/out", "--max-memory", "lots"], "--max-memory"),
        (["convert", "{file}", "-o", "{dir}/out", "--int8", "--calibration", "{dir}/no.npz"],
         "calibration file {dir}/no.npz does not exist"),
        (["convert", "{onnx}", "-o", "{dir}/out", "--arch", "smallnet7"], "does not apply to an ONNX source"),
    ],
    "verify": [
        (["verify", "{dir}/missing"], "does not exist; give the output folder"),
        (["verify", "--reference", "{file}"], "give both"),
        (["verify", "--reference", "{file}", "--candidate", "{dir}/no.onnx"], "model file {dir}/no.onnx does not exist"),
        (["verify", "{dir}", "--inputs", "{dir}/no.npz"], "inputs file {dir}/no.npz does not exist"),
    ],
    "bench": [
        (["bench", "{dir}/missing.onnx"], "model file {dir}/missing.onnx does not exist"),
        (["bench", "{onnx}", "--batch", "0"], "--batch"),
        (["bench", "{onnx}", "--input-shape", ""], "--input-shape is empty"),
    ],
    "sweep": [
        (["sweep", "{dir}/missing.pt", "-o", "{dir}/sw"], "checkpoint {dir}/missing.pt does not exist"),
        (["sweep", "{file}", "-o", "{dir}/sw", "--rank", "flops:7"], "the fraction must be in (0, 1]"),
        (["sweep", "{file}", "-o", "{dir}/sw", "--batch", "1,1"], "twice"),
        (["sweep", "{file}", "-o", "{dir}/sw", "--arch-kwargs", "[1]"], "must be a JSON object"),
    ],
    "engine": [(["engine", "{dir}/missing.onnx"], "ONNX file {dir}/missing.onnx does not exist")],
    "demo": [(["demo", "--threads", "0"], "--threads")],
    "expand": [
        (["expand", "smallnet7", "--mode", "cl", "-o", "{file}"], "already exists; pass --force"),
        (["expand", "smallnet7", "--mode", "cl", "--rate", "0", "-o", "{dir}/x.pt"], "--rate must be >= 1"),
    ],
    "train": [
        (["train", "smallnet7", "--epochs", "0", "-o", "{dir}/x.pt"], "--epochs"),
        (["train", "smallnet7", "--arch-kwargs", "{{", "-o", "{dir}/x.pt"], "not valid JSON"),
    ],
    "models": [(["models", "--wide"], "no such option")],
}


def _tiny_onnx(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _answer(args: list[str]) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, check=False,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_command_has_cases():
    assert set(CASES) == set(COMMANDS)


@pytest.mark.parametrize("args, needle", [case for cases in CASES.values() for case in cases],
                         ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_a_mistake_is_one_line_before_torch_is_imported(tmp_path, args, needle):
    file = tmp_path / "existing.pt"
    file.write_bytes(b"whatever is in it: these mistakes are found before it is read")
    names = {"dir": tmp_path, "file": file, "onnx": _tiny_onnx(tmp_path / "m.onnx")}
    answer = _answer([a.format(**names) for a in args])
    lines = answer["stderr"].splitlines()
    assert answer["code"] not in (0, None) and len(lines) == 1, answer
    assert lines[0].startswith("error: ") and needle.format(**names) in lines[0], lines[0]
    assert not answer["torch"], f"{args[0]} imported torch before answering: {lines[0]}"


def test_the_defaults_shown_in_help_are_the_apis():
    """An option whose default lives in the API shows it as text (the API is not imported to print the
    help); that text must be the API's value."""
    ctx = click.Context(main)
    for name in COMMANDS:
        for param in main.get_command(ctx, name).params:
            if isinstance(param, ApiDefault):
                assert param.show_default == str(param.api_value()), (name, param.name)
    bench = importlib.import_module("compactify.cli.bench_cmd")
    from compactify.measure.latency import DEFAULT_ITERS

    assert bench.ITERS_SHOWN == DEFAULT_ITERS
