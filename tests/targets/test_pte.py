"""compact.pte (--executorch): lowered to XNNPACK, run on ExecuTorch's own runtime and checked against the
source in float64, from a contracted network, a truncated one (--rank) and timm's RepVGG-A0; what is not
delegated is reported; bad input and a missing ExecuTorch are one line; ExecuTorch's C++ log lines never
reach the terminal."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from families.factories import timm_model
from torch_compact import TorchCompact

from compactify.cli import main
from compactify.converter.load.checkpoint import save_checkpoint
from compactify.converter.pipeline.convert import convert_checkpoint
from compactify.converter.pipeline.settings import ConvertOptions
from compactify.errors import BadInputError, MissingRuntimeError
from compactify.harness.bench import bench
from compactify.harness.verify.conversion import verify_conversion
from compactify.measure.metrics import DEFAULT_ATOL, DEFAULT_RTOL
from compactify.models import create_model, expand
from compactify.targets import TARGETS, build_artifacts, check_requests, target_for
from compactify.targets.pte import summary_line

ARCH = {"num_classes": 10, "in_chans": 1, "input_size": 8}
SHAPE = (1, 1, 8, 8)


def _executorch_runtime():
    return pytest.importorskip("executorch.runtime", reason="needs executorch (pip install compactify[edge])")


def _expanded_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    model = expand(create_model("smallnet7", **ARCH), "cl", rate=4)
    meta = {"arch": "smallnet7", "arch_kwargs": ARCH, "expand": "cl", "rate": 4, "layers": None, "aux": None,
            "input_shape": list(SHAPE)}
    return save_checkpoint(path, model.state_dict(), meta), model.eval()


@pytest.fixture(scope="module")
def expanded(tmp_path_factory):
    _executorch_runtime()
    return _expanded_checkpoint(tmp_path_factory.mktemp("pte") / "expanded.pt")


@pytest.fixture(scope="module")
def contracted(expanded, tmp_path_factory):
    out = tmp_path_factory.mktemp("pte") / "out"
    return out, convert_checkpoint(expanded[0], out, ConvertOptions(onnx=False, executorch=True))


@pytest.fixture(scope="module")
def truncated(expanded, tmp_path_factory):
    out = tmp_path_factory.mktemp("pte") / "truncated"
    return out, convert_checkpoint(expanded[0], out, ConvertOptions(onnx=False, executorch=True, rank="energy:0.9"))


def _run_pte(path, x: np.ndarray) -> np.ndarray:
    """ExecuTorch's own Python API, none of compactify's runner."""
    method = _executorch_runtime().Runtime.get().load_program(str(path)).load_method("forward")
    return method.execute([torch.from_numpy(x)])[0].numpy()


def _float64(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.double()(torch.from_numpy(x).double()).numpy()


def test_the_contracted_pte_computes_the_expanded_network(expanded, contracted):
    out, report = contracted
    assert report["artifacts"]["pte"] == "compact.pte" and target_for(out / "compact.pte").name == "pte"
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    want = _float64(expanded[1], x)
    got = _run_pte(out / "compact.pte", x)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_a_fully_delegated_network_says_so(contracted):
    entry = contracted[1]["pte"]
    assert entry["not_delegated"] == {} and entry["delegated_parts"] >= 1
    assert entry["input_shape"] == list(SHAPE) and entry["batch"] == "static"
    assert json.loads((contracted[0] / "report.json").read_text())["pte"] == entry
    assert summary_line(entry) == "compact.pte: every op runs on XNNPACK (static input shape 1,1,8,8)"


class _MeanHead(torch.nn.Module):
    """A global average pool written as a mean over H and W without keepdim, which XNNPACK does not take."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).relu().mean((2, 3)))


def test_what_xnnpack_does_not_run_is_reported_and_still_runs(tmp_path):
    _executorch_runtime()
    torch.manual_seed(0)
    model = _MeanHead().eval()
    added = build_artifacts(TorchCompact(model, model, SHAPE, dynamic_batch=False), tmp_path, {"pte": None})
    entry = added["pte"]
    assert entry["not_delegated"] == {"aten.mean.dim": 1} and entry["delegated_parts"] == 2  # conv+relu, linear
    assert summary_line(entry) == ("compact.pte: 1 op not delegated to XNNPACK, run as ExecuTorch's portable "
                                   "kernels: aten.mean.dim (static input shape 1,1,8,8)")
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    want = _float64(model, x)
    assert np.abs(_run_pte(tmp_path / "compact.pte", x) - want).max() <= 1e-5 * np.abs(want).max()


def test_verify_runs_the_pte_on_executorch_at_its_fixed_batch(contracted):
    result = verify_conversion(contracted[0])
    pte = next(c for c in result.candidates if c.label.startswith("compact.pte"))
    assert pte.runtime == "executorch" and pte.passed and (pte.atol, pte.rtol) == (DEFAULT_ATOL, DEFAULT_RTOL)
    assert result.inputs["batch_size"] == 1 and result.inputs["batches"] == 16  # as many inputs as by default
    assert result.passed


def test_a_truncated_pte_is_judged_against_the_truncated_network(truncated):
    out, report = truncated
    assert report["truncation"]["flops_ratio"] < 1
    result = verify_conversion(out)
    pte = next(c for c in result.candidates if c.label.startswith("compact.pte"))
    assert result.passed and pte.passed and "truncated" in result.reference


def test_timm_repvgg_a0_lowers_and_runs_within_its_own_float32_error(tmp_path):
    _executorch_runtime()
    model = timm_model("repvgg_a0")
    ckpt = save_checkpoint(tmp_path / "repvgg.pt", model.state_dict(),
                           {"arch": "families.factories:timm_model", "arch_kwargs": {"name": "repvgg_a0"},
                            "input_shape": [1, 3, 32, 32]})
    report = convert_checkpoint(ckpt, tmp_path / "out", ConvertOptions(onnx=False, executorch=True))
    assert report["pte"]["not_delegated"] == {}
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    want = _float64(model, x)
    with torch.no_grad():
        float32_error = np.abs(model.float()(torch.from_numpy(x)).numpy() - want).max()
    error = np.abs(_run_pte(tmp_path / "out" / "compact.pte", x) - want).max()
    # Random BatchNorm statistics make this net's outputs large: its own float32 run is the yardstick.
    assert error <= max(10 * float32_error, 1e-6 * np.abs(want).max())


def test_bench_times_the_pte_beside_the_others_on_the_threads_asked(contracted):
    portable = pytest.importorskip("executorch.extension.pybindings.portable_lib",
                                   reason="needs executorch's portable kernels (pip install compactify[edge])")
    out = contracted[0]
    for threads in (2, 1):  # the pool is process-wide: the second bench must set it back
        result = bench([out / "compact.pt2", out / "compact.pte"], iters=3, warmup=1, threads=threads, progress=False)
        assert [r["runtime"] for r in result.rows] == ["torch", "executorch"]
        assert all(r["p50_ms"] > 0 for r in result.rows)
        assert portable._threadpool_get_thread_count() == threads


def test_convert_prints_the_delegation_and_no_foreign_line(expanded, tmp_path, capfd):
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(expanded[0]), "-o", str(tmp_path / "out"), "--no-onnx",
                                  "--executorch"])
    assert result.exit_code == 0, result.output
    assert "compact.pte: every op runs on XNNPACK" in result.output
    bench_result = runner.invoke(main, ["bench", str(tmp_path / "out" / "compact.pte"), "--iters", "2", "--threads", "3"])
    assert bench_result.exit_code == 0, bench_result.output
    captured = capfd.readouterr()
    said = captured.out + captured.err
    assert "cpuinfo" not in said and "threadpool" not in said and ".cpp:" not in said


def test_the_runner_refuses_what_it_cannot_run(contracted, tmp_path):
    not_pte = tmp_path / "notes.pte"
    not_pte.write_text("hello")
    with pytest.raises(BadInputError, match="is not an ExecuTorch program"):
        TARGETS["pte"].open(not_pte)
    cut = tmp_path / "cut.pte"
    cut.write_bytes((contracted[0] / "compact.pte").read_bytes()[:200])
    with pytest.raises(BadInputError, match=r"^ExecuTorch cannot load .*cut.pte: File size is too small"):
        TARGETS["pte"].open(cut)
    with TARGETS["pte"].open(contracted[0] / "compact.pte") as runner:
        assert [s.shape for s in runner.inputs] == [SHAPE] and runner.inputs[0].dtype == "float32"
        with pytest.raises(BadInputError, match=r"has shape \(2, 1, 8, 8\), expected input0: float32\[1,1,8,8\]"):
            runner.infer({"input0": np.zeros((2, 1, 8, 8), np.float32)})
    with pytest.raises(BadInputError, match="runs on the cpu only"):
        TARGETS["pte"].open(contracted[0] / "compact.pte", device="cuda")


def test_without_executorch_the_answer_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch", None)  # find_spec and import both say "not installed"
    monkeypatch.setitem(sys.modules, "executorch.runtime", None)
    assert "not installed" in TARGETS["pte"].missing()
    with pytest.raises(MissingRuntimeError, match=r"^--executorch needs the Python package executorch, which is not "
                                                  r"installed here; pip install compactify\[edge\]$"):
        check_requests({"pt2": None, "pte": None})
    artifact = tmp_path / "m.pte"
    artifact.write_bytes(b"\0\0\0\0ET12" + bytes(64))
    with pytest.raises(MissingRuntimeError, match=r"compactify\[edge\]"):
        TARGETS["pte"].open(artifact)
