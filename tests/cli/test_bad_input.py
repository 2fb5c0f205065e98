"""One class of bad input per test: exit 2, exactly one ``error:`` line on stderr that says what the
file really is (or what is wrong) and the fix, no traceback, nothing written, and every file that
was there before byte-identical afterwards. Internal errors (exit 1) say how to report them."""

from __future__ import annotations

import json
import pickle
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from compactify.converter.load.checkpoint import save_checkpoint

from clihelp import TINY_META, error_line, process, run, snapshot, tiny_checkpoint

import user_models


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bytes of every kind of file a user might hand to convert by mistake (and of good checkpoints)."""
    d = tmp_path_factory.mktemp("kinds")
    torch.manual_seed(0)
    model = user_models.expanded(2)
    sd = model.state_dict()
    meta = {"arch": "user_models:expanded", "arch_kwargs": {"width": 2}, "input_shape": [1, 3, 6, 6]}
    out = {}
    save_checkpoint(d / "zip.pt", sd, meta)
    out["torch"] = (d / "zip.pt").read_bytes()
    torch.save({"state_dict": sd, "compactify": meta}, d / "legacy.pt", _use_new_zipfile_serialization=False)
    out["legacy"] = (d / "legacy.pt").read_bytes()
    save_checkpoint(d / "st.safetensors", sd, meta)
    out["safetensors"] = (d / "st.safetensors").read_bytes()
    torch.export.save(torch.export.export(model.eval(), (torch.randn(2, 3, 6, 6),)), d / "p.pt2")
    out["pt2"] = (d / "p.pt2").read_bytes()
    torch.onnx.export(nn.Linear(3, 2), (torch.randn(2, 3),), d / "m.onnx", dynamo=False)
    out["onnx"] = (d / "m.onnx").read_bytes()
    np.savez(d / "a.npz", x=np.zeros(3))
    out["npz"] = (d / "a.npz").read_bytes()
    torch.save(model, d / "module.pt")
    out["module"] = (d / "module.pt").read_bytes()
    out["pickle"] = pickle.dumps({"weight": [1.0, 2.0]}, protocol=4)
    out["lfs"] = (b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 + b"\nsize 44040192\n")
    out["html"] = b"<!DOCTYPE html>\n<html><head><title>model.pt</title></head><body>Sign in</body></html>\n"
    out["text"] = b"these are my notes about the model\n"
    out["json"] = json.dumps({"architectures": ["Net"], "hidden_size": 8}).encode()
    out["random"] = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    out["empty"] = b""
    return out


CONVERT = ["--no-onnx"]


def _convert(tmp_path, name: str, data: bytes, *extra):
    path = tmp_path / name
    path.write_bytes(data)
    before = snapshot(tmp_path)
    r = run("convert", path, "-o", tmp_path / "out", *CONVERT, *extra)
    return r, before


@pytest.mark.parametrize("kind,name,needles", [
    ("random", "model.pt", ["unrecognised binary data", "expected a torch.save file"]),
    ("text", "model.pth", ["a text file", "these are my notes"]),
    ("json", "config.bin", ["a JSON text file"]),
    ("html", "model.safetensors", ["an HTML web page", "/resolve/"]),
    ("lfs", "model.pt", ["git-lfs pointer to a 44,040,192-byte file", "git lfs pull"]),
    ("npz", "weights.pt", ["NumPy .npz archive"]),
    ("pickle", "model.pt", ["plain Python pickle", "--trust-pickle"]),
    ("module", "model.pt", ["pickled Python objects", "user_models.Expanded", "--trust-pickle"]),
    ("empty", "model.pt", ["is empty"]),
])
def test_a_file_that_is_not_a_checkpoint_says_what_it_really_is(files, tmp_path, kind, name, needles):
    r, before = _convert(tmp_path, name, files[kind])
    error_line(r, name, *needles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("name", ["model.pt", "model.pt2"])
def test_an_onnx_model_under_a_checkpoint_name_is_converted_as_onnx(files, tmp_path, name):
    """The format is read from the content: an ONNX file is an ONNX source whatever its suffix."""
    path = tmp_path / name
    path.write_bytes(files["onnx"])
    r = run("convert", path, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["source"]["format"] == "onnx"
    error_line(run("convert", path, "-o", tmp_path / "out2", *CONVERT), "--no-onnx", "ONNX source")


@pytest.mark.parametrize("kind,name,cut,needles", [
    ("torch", "model.pt", 0.5, ["torch.save zip archive", "truncated or damaged"]),
    ("pt2", "model.pt2", 0.5, ["torch.export program", "truncated or damaged"]),
    ("safetensors", "model.safetensors", 0.8, ["safetensors file", "truncated"]),
    ("legacy", "model.pt", 0.5, ["legacy", "cannot be read"]),
])
def test_a_truncated_checkpoint_is_named_as_such(files, tmp_path, kind, name, cut, needles):
    data = files[kind]
    r, before = _convert(tmp_path, name, data[:int(len(data) * cut)])
    error_line(r, name, *needles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["torch", "pt2"])
def test_a_flipped_bit_in_a_zip_checkpoint_fails_its_crc(files, tmp_path, kind):
    import zipfile

    data = bytearray(files[kind])
    (tmp_path / "probe").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "probe") as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)  # the largest member: tensor data
    (tmp_path / "probe").unlink()
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + info.file_size // 2] ^= 0x04
    r, before = _convert(tmp_path, f"model.{'pt' if kind == 'torch' else 'pt2'}", bytes(data))
    error_line(r, "fails its CRC check", info.filename)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind,name", [("safetensors", "model.pt"), ("torch", "model.safetensors"),
                                       ("pt2", "model.bin")])
def test_a_checkpoint_under_another_suffix_is_read_by_its_content(files, tmp_path, kind, name):
    r, _ = _convert(tmp_path, name, files[kind])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "out" / "report.json").read_text())["source"]["format"] == (
        "state_dict" if kind == "torch" else kind)


def test_a_folder_where_a_checkpoint_is_expected(tmp_path):
    (tmp_path / "ckpt").mkdir()
    before = snapshot(tmp_path)
    error_line(run("convert", tmp_path / "ckpt", "-o", tmp_path / "out"), "is a directory", "convert --help")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------
# click's own usage errors: the same one line


@pytest.mark.parametrize("args,needles", [
    (["convert", "{ckpt}"], ["missing option '-o' / '--output'", "compactify convert --help"]),
    (["convert"], ["missing argument 'CHECKPOINT'"]),
    (["convert", "{ckpt}", "-o", "{out}", "--max-batch", "0"], ["'--max-batch'", "0 is not in the range x>=1"]),
    (["convert", "{ckpt}", "-o", "{out}", "--forse"], ["no such option '--forse'", "--force"]),
    (["convrt", "{ckpt}"], ["no such command 'convrt'", "did you mean convert?"]),
    (["verify", "{out}", "--batches", "0"], ["'--batches'", "0 is not in the range x>=1"]),
    (["verify", "{out}", "--batch-size", "0"], ["'--batch-size'", "0 is not in the range x>=1"]),
    (["bench"], ["missing argument 'MODEL...'"]),
    (["verify", "{out}", "--device", "tpu"], ["'--device'", "'tpu' is not one of"]),
])
def test_usage_errors_are_one_line(tmp_path, args, needles):
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    args = [a.format(ckpt=ckpt, out=tmp_path / "out") for a in args]
    before = snapshot(tmp_path)
    error_line(run(*args), *needles)
    assert snapshot(tmp_path) == before


def test_bare_compactify_prints_its_help():
    r = run()
    assert r.exit_code == 0 and "Usage: compactify" in r.stdout and r.stderr == ""


def test_python_dash_m_compactify(tmp_path):
    p = process("convert", tmp_path / "missing.pt", "-o", tmp_path / "o")
    code = p.wait(timeout=120)
    _, err = p.communicate()
    assert code == 2 and err.splitlines() == [f"error: checkpoint {tmp_path / 'missing.pt'} does not exist"], err


# ---------------------------------------------------------------------------------------
# What the user caused further in: metadata, factories, weights, shapes, verify's inputs


def _bare(tmp_path, state=None, meta=None, name="net.pt"):
    sd = state if state is not None else user_models.expanded(2).state_dict()
    path = tmp_path / name
    if meta is None:
        torch.save(sd, path)
    else:
        torch.save({"state_dict": sd, "compactify": meta}, path)
    return path


@pytest.mark.parametrize("extra,needles", [
    (["--arch", "user_models:raising"], ["building user_models:raising failed", "ValueError: width must be even",
                                         "--arch-kwargs"]),
    (["--arch", "user_models:expanded", "--arch-kwargs", '{"width": "two"}'],
     ['arch_kwargs {"width": "two"}', "TypeError", "--arch-kwargs"]),
    (["--arch", "smallnet7", "--arch-kwargs", '{"width": "big"}'], ["building smallnet7", "TypeError"]),
    (["--arch", "user_models:expanded", "--arch-kwargs", '{"width": 2.5}'], ["building user_models:expanded"]),
])
def test_a_factory_that_raises_is_bad_input(tmp_path, extra, needles):
    path = _bare(tmp_path)
    before = snapshot(tmp_path)
    error_line(run("convert", path, "-o", tmp_path / "out", "--input-shape", "1,3,6,6", *CONVERT, *extra), *needles)
    assert snapshot(tmp_path) == before



@pytest.mark.parametrize("arch,needles", [
    ("broken_import_models:net", ["cannot import 'broken_import_models'",
                                  "RuntimeError: operator torchvision::nms does not exist", "raised this"]),
    ("missing_dependency_models:net", ["ModuleNotFoundError: No module named 'no_such_dependency'",
                                       "'no_such_dependency', which is not installed"]),
    ("no_such_module:net", ["cannot import 'no_such_module'", "PYTHONPATH"]),
])
def test_an_arch_module_that_cannot_be_imported_names_the_cause(tmp_path, arch, needles):
    path = _bare(tmp_path)
    line = error_line(run("convert", path, "-o", tmp_path / "out", "--arch", arch, "--input-shape", "1,3,6,6",
                          *CONVERT), *needles)
    assert ("PYTHONPATH" in line) == arch.startswith("no_such_module"), line

@pytest.mark.parametrize("meta,needles", [
    ({"arch": "user_models:expanded", "arch_kwargs": {"width": 2}, "input_shape": "1,3,6,6"},
     ["metadata: input_shape '1,3,6,6' is not a shape", "[1, 3, 32, 32]"]),
    ({"arch": "user_models:expanded", "arch_kwargs": {"width": 2}, "input_shape": [1, 3, -6, 6]},
     ["input_shape [1, 3, -6, 6] is not a shape"]),
    ({"arch": "user_models:expanded", "arch_kwargs": [2]}, ["arch_kwargs [2] is not valid", "JSON object"]),
    ({"arch": 7}, ["arch 7 is not valid"]),
    ({"arch": "smallnet7", "expand": "zz"}, ["unknown expansion mode 'zz'"]),
    ({"arch": "smallnet7", "expand": "cl", "rate": 0}, ["rate 0 is not valid", ">= 1"]),
])
def test_bad_metadata_is_bad_input(tmp_path, meta, needles):
    path = _bare(tmp_path, meta=meta)
    before = snapshot(tmp_path)
    error_line(run("convert", path, "-o", tmp_path / "out", *CONVERT), "net.pt metadata", *needles)
    assert snapshot(tmp_path) == before


def test_negative_batchnorm_variance_is_bad_input(tmp_path):
    sd = user_models.expanded(2).state_dict()
    sd["chain.2.running_var"][1] = -0.5
    path = _bare(tmp_path, state=sd)
    before = snapshot(tmp_path)
    error_line(run("convert", path, "-o", tmp_path / "out", "--arch", "user_models:expanded", "--arch-kwargs",
                   '{"width": 2}', "--input-shape", "1,3,6,6"),
               "negative BatchNorm running variance", "chain.2.running_var (1 of 2 values < 0)")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("shape,max_memory,needles", [
    ("1,3,100000,100000", None, ["needs about", "its float64 input alone", "available memory"]),
    ("1,3,6000,6000", "4GB", ["needs about", "activations", "more than the 4.0 GB of --max-memory"]),
    ("1,3,256,256", "1MB", ["more than the 1.0 MB of --max-memory"]),
])
def test_an_input_shape_that_cannot_fit_is_refused_before_allocating(tmp_path, shape, max_memory, needles):
    path = _bare(tmp_path)
    before = snapshot(tmp_path)
    extra = ["--max-memory", max_memory] if max_memory else []
    start = time.perf_counter()
    line = error_line(run("convert", path, "-o", tmp_path / "out", "--arch", "user_models:expanded", "--arch-kwargs",
                          '{"width": 2}', "--input-shape", shape, *extra, *CONVERT), shape, *needles)
    assert time.perf_counter() - start < 20 and " GB" in line or " MB" in line
    assert snapshot(tmp_path) == before


def test_max_memory_that_is_not_a_size(tmp_path):
    path = _bare(tmp_path)
    error_line(run("convert", path, "-o", tmp_path / "out", "--max-memory", "lots"), "--max-memory 'lots'", "8GB")


# ---------------------------------------------------------------------------------------
# verify


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify_bad")
    ckpt = tiny_checkpoint(root / "net.safetensors")
    out = root / "out"
    r = run("convert", ckpt, "-o", out)
    assert r.exit_code == 0, r.output
    return out


def test_nan_in_inputs_is_bad_input(converted, tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 8)).astype(np.float32)
    x[1, 0, 2, 2] = np.nan
    np.savez(tmp_path / "x.npz", x=x)
    before = snapshot(tmp_path, converted)
    error_line(run("verify", converted, "--inputs", tmp_path / "x.npz", "--json", tmp_path / "v.json"),
               "x.npz: array 'x' holds 1 NaN or Inf value(s)")
    assert snapshot(tmp_path, converted) == before


def test_inputs_that_are_not_an_npz_say_what_they_are(converted, tmp_path):
    (tmp_path / "x.npz").write_text("1,2,3\n")
    before = snapshot(tmp_path, converted)
    error_line(run("verify", converted, "--inputs", tmp_path / "x.npz"), "is a text file", "np.savez")
    assert snapshot(tmp_path, converted) == before


def test_verify_with_every_artifact_skipped_does_not_pass(converted, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(converted, out)
    report = json.loads((out / "report.json").read_text())
    (out / "compact.weird").write_bytes(b"?")
    report["artifacts"] = {"weird": "compact.weird"}
    (out / "report.json").write_text(json.dumps(report))
    error_line(run("verify", out), "nothing was verified", "unknown artifact kind")


def test_verify_batches_zero_in_the_api_is_refused(converted):
    from compactify.errors import BadInputError
    from compactify.harness.verify import verify_conversion

    for kwargs in ({"batches": 0}, {"batch_size": 0}):
        with pytest.raises(BadInputError, match=">= 1"):
            verify_conversion(converted, **kwargs)


@pytest.fixture(scope="module")
def net_for_32x32(tmp_path_factory):
    """SmallNet-7 expanded (CL, rate 2), built for 32x32 inputs, with its metadata."""
    from compactify.models import build_model

    meta = {"arch": "smallnet7", "expand": "cl", "rate": 2, "input_shape": [1, 3, 32, 32]}
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("net32") / "c.pt", build_model(meta).state_dict(), meta)


def _stderr_of_process(*args, cwd=None) -> tuple[int, str]:
    p = process(*args, cwd=cwd)
    _, err = p.communicate(timeout=300)
    return p.returncode, err


# A real process: torch's log handlers hold the stderr of import time, which click's test runner
# does not capture; they print a failed meta kernel's traceback (about 20 lines) unless silenced.
@pytest.mark.parametrize("shape", ["1,3,16,16", "1,3,1,1", "1,3,224,224"])
def test_a_wrong_input_shape_is_one_line_without_torch_logs(net_for_32x32, tmp_path, shape):
    code, err = _stderr_of_process("convert", net_for_32x32, "--input-shape", shape, "-o", tmp_path / "out", *CONVERT)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: --input-shape {shape}: the model was built for 32x32 inputs (1,3,32,32); "), err


@pytest.fixture(scope="module")
def functional_head(tmp_path_factory):
    """A net whose size no layer module states (F.linear on its own weight), so that a wrong size
    reaches the capture, where torch logs a failed meta kernel."""
    path = tmp_path_factory.mktemp("head") / "head.pt"
    torch.save(user_models.functional_head().state_dict(), path)
    return path


def test_a_size_no_layer_states_is_still_one_line_without_torch_logs(functional_head, tmp_path):
    code, err = _stderr_of_process("convert", functional_head, "--arch", "user_models:functional_head",
                                   "--input-shape", "1,3,8,8", "-o", tmp_path / "out", *CONVERT,
                                   cwd=Path(user_models.__file__).parent)
    assert code == 2 and err.splitlines() == [("error: the model rejects input shape 1,3,8,8: mat1 and mat2 shapes "
                                               "cannot be multiplied (1x192 and 48x5)")], err


def test_debug_shows_what_torch_logged(functional_head, tmp_path):
    code, err = _stderr_of_process("--debug", "convert", functional_head, "--arch", "user_models:functional_head",
                                   "--input-shape", "1,3,8,8", "-o", tmp_path / "out", *CONVERT,
                                   cwd=Path(user_models.__file__).parent)
    assert code == 1 and "torch said:" in err and "torch._subclasses.fake_tensor" in err, err
    assert err.rstrip().splitlines()[-1].startswith("compactify.errors.BadInputError: the model rejects"), err


# ---------------------------------------------------------------------------------------
# Internal errors and interrupts


def test_an_internal_error_is_one_line_exit_1_and_says_how_to_report(tmp_path, monkeypatch):
    import compactify.converter.pipeline.convert as convert_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(convert_module, "contract_source", broken)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    before = snapshot(tmp_path)
    r = run("convert", ckpt, "-o", tmp_path / "out")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.output
    assert r.stderr.startswith("internal error: RuntimeError: boom") and "--debug" in r.stderr
    assert "bug in compactify" in r.stderr and snapshot(tmp_path) == before
    r = run("--debug", "convert", ckpt, "-o", tmp_path / "out")
    assert isinstance(r.exception, RuntimeError)  # --debug lets the traceback through


def test_an_interrupt_that_torch_turned_into_another_error_is_still_an_interrupt(tmp_path, monkeypatch):
    import compactify.converter.pipeline.convert as convert_module
    from compactify.cli import Interrupted

    def interrupted_inside_torch(*args, **kwargs):
        Interrupted.received = signal.SIGINT  # what the handler records before raising KeyboardInterrupt
        raise AssertionError("Trying to pop empty mode stack")

    monkeypatch.setattr(convert_module, "contract_source", interrupted_inside_torch)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    before = snapshot(tmp_path)
    r = run("convert", ckpt, "-o", tmp_path / "new" / "out")
    assert r.exit_code == 130 and r.stderr == "error: interrupted (SIGINT)\n", r.output
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------------
# Fuzz: corrupted checkpoints under every suffix


SUFFIXES = [".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pt2"]
GOOD = ["torch", "legacy", "safetensors", "pt2"]
WRONG = ["onnx", "npz", "lfs", "html", "text", "json", "random", "empty", "pickle"]


@settings(max_examples=36, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_corrupted_checkpoints_are_one_line_exit_2(files, tmp_path_factory, data):
    how = data.draw(st.sampled_from(["truncate", "flip", "wrong"]), label="how")
    suffix = data.draw(st.sampled_from(SUFFIXES), label="suffix")
    if how == "wrong":
        blob = files[data.draw(st.sampled_from(WRONG), label="kind")]
    else:
        good = files[data.draw(st.sampled_from(GOOD), label="kind")]
        if how == "truncate":
            blob = good[:data.draw(st.integers(0, len(good) - 1), label="length")]
        else:  # one flipped bit in the first 2 KiB: headers, pickles, zip entries and directories
            at = data.draw(st.integers(0, min(len(good), 2048) - 1), label="byte")
            bit = data.draw(st.integers(0, 7), label="bit")
            blob = bytearray(good)
            blob[at] ^= 1 << bit
            blob = bytes(blob)
    folder = tmp_path_factory.mktemp("fuzz")
    path = folder / f"model{suffix}"
    path.write_bytes(blob)
    r = run("convert", path, "-o", folder / "out", *CONVERT)
    event(f"{how}: exit {r.exit_code}")
    if how == "flip" and r.exit_code == 0:  # the bit fell where it changes nothing that can be checked
        assert (folder / "out" / "report.json").is_file()
        return
    error_line(r)
    assert path.read_bytes() == blob and sorted(p.name for p in folder.iterdir()) == [path.name]
