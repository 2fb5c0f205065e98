"""bench: model resolution, feeds, the interleaved run over real runtimes, and the CLI.

Timing numbers are never asserted, only the structure of the results and the files.
"""

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from compactify.arguments import parse_batches, parse_input_shape
from compactify.cli import main
from compactify.errors import BadInputError
from compactify.harness.bench import (
    BENCH_COLUMNS,
    bench,
    make_feeds,
    markdown_report,
    resolve_models,
)
from compactify.runtimes.base import TensorSpec

# One thread: on a busy 2-core machine two OpenMP threads wait on each other far longer than they compute.
FAST = dict(warmup=1, iters=3, progress=False, threads=1)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _onnx_matmul(path, batch_dim, feat_dim=4):
    """A hand-written ONNX graph y = x @ W, with the given (possibly symbolic) dims."""
    w = helper.make_tensor("W", TensorProto.FLOAT, [4, 2], np.arange(8, dtype=np.float32).tolist())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, feat_dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 2])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench_models")
    torch.manual_seed(0)
    m = Tiny().eval()
    x = torch.randn(2, 3, 8, 8)
    batch = torch.export.Dim("batch", min=1, max=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(m, (x,), dynamic_shapes=({0: batch},))
        torch.export.save(ep, str(d / "tiny.pt2"))
        torch.onnx.export(m, (x,), str(d / "tiny.onnx"), input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: batch},), dynamo=True, verbose=False)
    return {
        "dir": d,
        "pt2": d / "tiny.pt2",
        "onnx": d / "tiny.onnx",
        "fixed": _onnx_matmul(d / "fixed.onnx", 1),
        "dynfeat": _onnx_matmul(d / "dynfeat.onnx", "N", "F"),
        "module": m,
    }


def test_parse_batches():
    assert parse_batches("1,8,32") == [1, 8, 32]
    assert parse_batches(" 4 ") == [4]
    assert parse_batches([2, 3]) == [2, 3]
    for bad in ("", "1,,8", "a", "0", "1,-2", "1.5", "8,8"):
        with pytest.raises(BadInputError):
            parse_batches(bad)


def test_parse_shape():  # N,C,H,W, the batch first, as in convert and verify
    assert parse_input_shape("1,3,32,32", empty_ok=False) == (1, 3, 32, 32)
    assert parse_input_shape("8x3x32x32", empty_ok=False) == (8, 3, 32, 32)
    assert parse_input_shape(None, empty_ok=False) is None
    for bad in ("", "3,a", "0,1", "4"):
        with pytest.raises(BadInputError):
            parse_input_shape(bad, empty_ok=False)


def test_resolve_models(models, tmp_path):
    got = resolve_models([models["pt2"], models["onnx"]])
    assert [(m.label, m.runtime, m.kind) for m in got] == [("tiny.pt2", "torch", "pt2"), ("tiny.onnx", "ort", "onnx")]
    with pytest.raises(BadInputError, match="--runtime ort, not --runtime torch"):
        resolve_models([models["onnx"]], runtime="torch")
    with pytest.raises(BadInputError, match="--runtime torch, not --runtime ort"):
        resolve_models([models["pt2"]], runtime="ort")
    with pytest.raises(BadInputError, match="does not exist"):
        resolve_models([tmp_path / "nope.onnx"])
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(BadInputError, match="cannot benchmark"):
        resolve_models([tmp_path / "x.txt"])
    with pytest.raises(BadInputError, match="unknown runtime"):
        resolve_models([models["pt2"]], runtime="tvm")
    with pytest.raises(BadInputError):
        resolve_models([])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = _onnx_matmul(tmp_path / "a" / "m.onnx", 1), _onnx_matmul(tmp_path / "b" / "m.onnx", 1)
    labels = [m.label for m in resolve_models([a, b, a])]
    assert labels == [str(a), str(b), f"{a}#2"]  # same names: paths; same paths: numbered
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    assert resolve_models([engine])[0].runtime == "trt"


def test_make_feeds():
    specs = [TensorSpec("x", (None, 3, 4), "float32"), TensorSpec("ids", (None, 2), "int64")]
    feeds = make_feeds(specs, 5, None, "m")
    assert feeds["x"].shape == (5, 3, 4) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (5, 2) and feeds["ids"].dtype == np.int64
    np.testing.assert_array_equal(make_feeds(specs, 5, None, "m")["x"], feeds["x"])  # seeded
    with pytest.raises(BadInputError, match="fixed batch of 1"):
        make_feeds([TensorSpec("x", (1, 3), "float32")], 8, None, "m")
    assert make_feeds([TensorSpec("x", (1, 3), "float32")], 1, None, "m")["x"].shape == (1, 3)
    with pytest.raises(BadInputError, match="--input-shape"):
        make_feeds([TensorSpec("x", (None, None, 4), "float32")], 2, None, "m")
    assert make_feeds([TensorSpec("x", (None, None, 4), "float32")], 2, (7, 4), "m")["x"].shape == (2, 7, 4)
    with pytest.raises(BadInputError, match="rank"):
        make_feeds([TensorSpec("x", None, "float32")], 2, None, "m")
    assert make_feeds([TensorSpec("x", None, "float32")], 2, (3,), "m")["x"].shape == (2, 3)


def test_bench_interleaved_pt2_and_onnx(models):
    res = bench([models["pt2"], models["onnx"]], batches="1,4", **FAST)
    assert [(r["model"], r["runtime"], r["batch"]) for r in res.rows] == [
        ("tiny.pt2", "torch", 1), ("tiny.onnx", "ort", 1), ("tiny.pt2", "torch", 4), ("tiny.onnx", "ort", 4),
    ]
    for r in res.rows:
        assert r["device"] == "cpu" and r["n"] == 3
        assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert r["throughput"] == pytest.approx(r["batch"] * 1000 / r["mean_ms"])
    first = [r for r in res.rows if r["model"] == "tiny.pt2"]
    assert all(r["ratio"] == 1.0 and r["speedup"] == 1.0 for r in first)
    second = res.rows[1]
    assert second["ratio"] == pytest.approx(second["p50_ms"] / res.rows[0]["p50_ms"])
    assert second["speedup"] == pytest.approx(res.rows[0]["p50_ms"] / second["p50_ms"])  # times faster than first
    assert set(res.runs) == {1, 4} and res.runs[4].rounds == 3
    assert res.settings["baseline"] == "tiny.pt2" and res.settings["batches"] == [1, 4]
    assert res.machine["torch"] == torch.__version__
    d = json.loads(json.dumps(res.to_dict()))
    assert d["rows"][0]["model"] == "tiny.pt2" and len(d["runs"]["1"]["stats"][0]["samples_ms"]) == 3
    md = markdown_report(res)
    assert "| tiny.onnx | ort | cpu | 4 |" in md and "Machine:" in md
    assert md.count("\n| tiny.") == 4


def test_bench_threads_are_pinned_and_restored(models):
    before = torch.get_num_threads()
    res = bench([models["pt2"]], **FAST)
    assert FAST["threads"] == 1
    assert res.machine["torch_threads"] == 1 and res.settings["threads"] == 1
    assert torch.get_num_threads() == before


def test_bench_pins_one_thread_by_default_and_says_so(models):
    res = bench([models["pt2"]], warmup=1, iters=3, progress=False)
    assert res.settings["threads"] == 1 and res.machine["torch_threads"] == 1
    r = _cli([models["onnx"], "--warmup", "1", "--iters", "3", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "1 thread per model (--threads)" in " ".join(r.stdout.split())  # the header line, however wrapped


def test_cli_speedup_column_and_progress_lines_off_a_terminal(models):
    r = _cli([models["pt2"], models["onnx"], "--batch", "1,2", "--warmup", "1", "--iters", "3"])
    assert r.exit_code == 0, r.output
    assert "faster than first" in " ".join(r.stdout.split())
    speedups = [line.split()[-1] for line in r.stdout.splitlines() if "tiny." in line]
    assert len(speedups) == 4 and speedups[0] == speedups[2] == "1.00x"
    assert all(s.endswith("x") and float(s[:-1]) > 0 for s in speedups)
    # CliRunner's stderr is no terminal: a line when each batch starts and one per model timed (noisy timings
    # on a busy machine add their warnings).
    progress = [line for line in r.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(progress) == 6 and all(line.startswith("bench: batch ") for line in progress), r.stderr
    assert sum("tiny.onnx (ort)" in line and "x faster than first" in line for line in progress) == 2


def test_bench_time_budget(models):
    res = bench([models["onnx"]], seconds=0.05, warmup=0, progress=False, threads=1)
    assert res.runs[1].rounds >= 1 and res.settings["seconds"] == 0.05


def test_bench_bad_inputs(models):
    with pytest.raises(BadInputError, match="fixed batch"):
        bench([models["fixed"]], batches="2", **FAST)
    with pytest.raises(BadInputError, match="--input-shape"):
        bench([models["dynfeat"]], **FAST)
    assert bench([models["dynfeat"]], input_shape="1,4", **FAST).rows[0]["n"] == 3
    assert bench([models["dynfeat"]], input_shape="2,4", **FAST).rows[0]["batch"] == 2  # N is the default batch
    with pytest.raises(BadInputError, match="not both"):
        bench([models["onnx"]], iters=2, seconds=1.0)
    with pytest.raises(BadInputError, match="device"):
        bench([models["onnx"]], device="tpu", **FAST)


def test_an_input_shape_is_applied_or_refused_never_ignored(models, tmp_path):
    """A model file with fixed dims: --input-shape must agree with them (the JSON records what ran)."""
    with pytest.raises(BadInputError, match=r"takes 1x4 .*did you mean 1,4\?"):
        bench([models["fixed"]], input_shape="1,5", **FAST)
    with pytest.raises(BadInputError, match=r"takes \?x3x8x8 .*did you mean 1,3,8,8\?"):
        bench([models["onnx"]], input_shape="1,3,16,16", **FAST)
    with pytest.raises(BadInputError, match="takes 4 dims"):
        bench([models["pt2"]], input_shape="1,3,8", **FAST)
    assert bench([models["fixed"]], input_shape="1,4", **FAST).settings["input_shape"] == [1, 4]
    path, _ = _checkpoint(tmp_path, ".pt")  # a checkpoint: its network says what it takes
    with pytest.raises(BadInputError, match="takes 3 channels, got 1"):
        bench([path], input_shape="1,1,24,24", **FAST)
    with pytest.raises(BadInputError, match=r"built for 24x24 inputs \(1,3,24,24\); at 16x16 it fails in its "
                                                 r"layer conv3.1 \(Conv2d\): .*Kernel size"):
        bench([path], input_shape="1,3,16,16", **FAST)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_cuda_without_device_is_missing_runtime(models):
    from compactify.errors import MissingRuntimeError

    with pytest.raises(MissingRuntimeError):
        bench([models["pt2"]], device="cuda", **FAST)


def _checkpoint(tmp_path, suffix):
    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import build_model

    meta = {"arch": "smallnet3", "arch_kwargs": {"width": 0.25, "input_size": 24, "hidden": 8}, "expand": "cl",
            "rate": 2, "layers": None, "aux": None, "input_shape": [1, 3, 24, 24]}
    model = build_model(meta)
    return save_checkpoint(tmp_path / f"ck{suffix}", model.state_dict(), meta), model


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_bench_checkpoint(tmp_path, suffix):
    path, _ = _checkpoint(tmp_path, suffix)
    res = bench([path], batches="1,2", **FAST)
    assert [(r["model"], r["runtime"], r["batch"]) for r in res.rows] == [(path.name, "torch", 1), (path.name, "torch", 2)]
    assert res.rows[0]["n"] == 3
    with pytest.raises(BadInputError, match="runs on --runtime torch"):
        bench([path], runtime="ort", **FAST)


def test_bench_checkpoint_without_metadata(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(Tiny().state_dict(), path)
    with pytest.raises(BadInputError, match="no compactify metadata"):
        bench([path], **FAST)


def test_bench_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(Tiny(), path)
    with pytest.raises(BadInputError, match="--trust-pickle"):
        bench([path], **FAST)
    with pytest.raises(BadInputError, match="--input-shape"):  # no metadata: the shape must be given
        bench([path], trust_pickle=True, **FAST)
    res = bench([path], trust_pickle=True, input_shape="2,3,8,8", batches="2", **FAST)
    assert res.rows[0]["batch"] == 2 and res.rows[0]["runtime"] == "torch"


def _cli(args):
    return CliRunner().invoke(main, ["bench", *map(str, args)])


def test_cli_writes_reports(models, tmp_path):
    out = tmp_path / "out"
    res = _cli([models["pt2"], models["onnx"], "--batch", "1,2", "--warmup", "1", "--iters", "3", "--no-progress", "--threads", "1",
                "--json", out / "r.json", "--md", out / "r.md", "--png", out / "r.png"])
    assert res.exit_code == 0, res.output
    for c in BENCH_COLUMNS:  # the columns a person decides by; --wide shows the rest
        assert (c.title in res.output) != c.wide, c
    assert "tiny.onnx" in res.output and "cores" in res.output  # the machine line
    data = json.loads((out / "r.json").read_text())
    assert len(data["rows"]) == 4 and data["machine"]["python"] and data["settings"]["iters"] == 3
    assert (out / "r.md").read_text().count("| tiny.") == 4
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["{onnx}", "--batch", "1,x"], "--batch"),
        (["{dir}/missing.onnx"], "does not exist"),
        (["{onnx}", "--runtime", "torch"], "--runtime ort"),
        (["{onnx}", "--runtime", "trt"], "--runtime ort"),
        (["{onnx}", "--iters", "2", "--seconds", "1"], "not both"),
        (["{onnx}", "--threads", "0"], "--threads"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(models, args, message):
    args = [a.format(onnx=models["onnx"], dir=models["dir"]) for a in args]
    res = _cli(args + ["--no-progress", "--iters", "1"] if "--iters" not in args else args + ["--no-progress"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_cli_engine_without_tensorrt_is_missing_runtime(tmp_path):
    from compactify.runtimes.devices import tensorrt_missing

    if tensorrt_missing() is None:
        pytest.skip("TensorRT and CUDA are present")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    res = _cli([engine, "--no-progress"])
    assert res.exit_code == 2 and res.output.startswith("error:") and len(res.output.strip().splitlines()) == 1
