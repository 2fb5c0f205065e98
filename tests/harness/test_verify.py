"""verify: a real conversion checked against an independent float64 run, and tampered artifacts caught."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compactify.converter.load.checkpoint import save_checkpoint
from compactify.converter.pipeline.options import ConvertOptions
from compactify.converter.pipeline.convert import convert_checkpoint
from compactify.errors import BadInputError, VerificationError
from compactify.harness.inputs import load_inputs, seeded_inputs
from compactify.harness.verify import verify_conversion, verify_models
from compactify.models import build_model
from compactify.runtimes.devices import tensorrt_missing

KW = {"input_size": 8, "width": 0.25, "hidden": 8}
META = {"arch": "smallnet7", "arch_kwargs": KW, "expand": "cl", "rate": 4, "input_shape": [1, 3, 8, 8],
        "training": {"dataset": "digits", "epochs": 0}}


def _randomize_bn(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial running statistics, so that folding BatchNorm is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("verify")
    model = build_model(META)
    _randomize_bn(model, 1)
    ckpt = save_checkpoint(root / "tiny.pt", model.state_dict(), META)
    out = root / "out"
    convert_checkpoint(ckpt, out, ConvertOptions())
    return ckpt, out


def _copy(converted, tmp_path):
    ckpt, out = converted
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    return dst


def _report(outdir):
    return json.loads((outdir / "report.json").read_text())


def _independent_reference(ckpt, batches):
    """The expanded model rebuilt by hand, run in float64 on the same inputs."""
    state = torch.load(ckpt, weights_only=True)
    model = build_model(META)
    model.load_state_dict(state["state_dict"])
    model = model.double().eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(b["x"]).double()).numpy() for b in batches])


def test_conversion_verifies_and_statistics_match_an_independent_run(converted):
    ckpt, out = converted
    assert "onnx" in _report(out)["artifacts"], "convert should export compact.onnx"
    result = verify_conversion(out, batches=2, batch_size=5)
    assert result.passed
    labels = [c.label for c in result.candidates]
    assert labels == ["expanded float32", "compact.pt2 (torch)", "compact.onnx (ort)"]
    assert result.candidates[0].baseline and not result.candidates[1].baseline

    # Recompute the ONNX error from scratch: same seeded inputs, our own float64 model, raw onnxruntime.
    import onnxruntime as ort

    data = seeded_inputs(["x"], [(3, 8, 8)], 2, 5)
    ref = _independent_reference(ckpt, data.batches)
    sess = ort.InferenceSession(str(out / "compact.onnx"), providers=["CPUExecutionProvider"])
    got = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: b["x"]})[0] for b in data.batches])
    onnx_cmp = result.candidates[2].comparisons["output0"]
    assert onnx_cmp.shape == (10, 10)
    assert onnx_cmp.max_abs == pytest.approx(float(np.abs(got - ref).max()), rel=1e-6, abs=1e-12)
    assert 0 < onnx_cmp.max_abs < 1e-5
    assert onnx_cmp.cosine > 0.999999 and onnx_cmp.top1 == 1.0
    # Digits accuracy (the meta says it was trained on digits) is the same for every exact candidate.
    assert result.reference_accuracy is not None
    for c in result.candidates:
        assert c.accuracy == pytest.approx(result.reference_accuracy, abs=1 / 360 + 1e-9)


def test_scaled_weights_in_compact_pt2_fail_and_per_region_names_the_region(converted, tmp_path):
    out = _copy(converted, tmp_path)
    program = torch.export.load(str(out / "compact.pt2"))
    key = "merged_batch_norm_1.weight"
    assert key in program.state_dict, sorted(program.state_dict)
    with torch.no_grad():
        program.state_dict[key].mul_(1.5)
    torch.export.save(program, str(out / "compact.pt2"))

    result = verify_conversion(out, batches=1, per_region=True)
    assert not result.passed
    by_label = {c.label: c for c in result.candidates}
    assert by_label["compact.pt2 (torch)"].passed is False
    assert by_label["compact.onnx (ort)"].passed is True
    with pytest.raises(VerificationError, match="compact.pt2"):
        result.raise_if_failed()

    worst = result.regions[0]
    report_names = [r["name"] for r in _report(out)["regions"] if r["decision"] == "dense"]
    assert sorted(r.name for r in result.regions) == sorted(report_names)
    assert worst.weights == "compact.pt2"
    assert not worst.deployed.passed and worst.deployed.max_rel_error > 1e-2
    assert worst.algebra.max_abs < 1e-9  # the merge is exact: the shipped weights are what is off
    assert all(r.deployed.passed for r in result.regions[1:])


def test_scaled_or_nan_onnx_initializer_fails(converted, tmp_path):
    out = _copy(converted, tmp_path)
    proto = onnx.load(str(out / "compact.onnx"))
    init = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init).copy()
    init.CopyFrom(numpy_helper.from_array(arr * 1.01, init.name))
    onnx.save(proto, str(out / "compact.onnx"))
    result = verify_conversion(out, batches=1)
    assert [c.label for c in result.failures] == ["compact.onnx (ort)"]

    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    # NaN in the classifier's bias reaches the output (a NaN inside may be swallowed by ReLU/max-pool).
    bias = next(t for t in proto.graph.initializer if list(t.dims) == [10])
    values = numpy_helper.to_array(bias).copy()
    values[3] = np.nan
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(proto, str(out / "compact.onnx"))
    result = verify_conversion(out, batches=1)
    failed = result.failures[0].comparisons["output0"]
    assert failed.nonfinite > 0 and not failed.passed


def test_fp16_artifact_is_judged_with_fp16_tolerances(converted, tmp_path):
    from compactify.targets.fp16_convert import to_fp16

    out = _copy(converted, tmp_path)
    to_fp16(out / "compact.onnx", out / "compact.fp16.onnx")
    report = _report(out)
    report["artifacts"]["onnx_fp16"] = "compact.fp16.onnx"
    (out / "report.json").write_text(json.dumps(report))
    result = verify_conversion(out, batches=1)
    half = next(c for c in result.candidates if c.label.startswith("compact.fp16.onnx"))
    assert half.atol == 1e-2 and half.passed
    assert half.comparisons["output0"].max_abs > 1e-6  # it really is half precision
    assert not verify_conversion(out, batches=1, fp16_atol=0.0, fp16_rtol=0.0).passed


@pytest.mark.skipif(tensorrt_missing() is None, reason="TensorRT is installed: the engine runs instead of being skipped")
def test_engine_without_tensorrt_is_listed_as_skipped(converted, tmp_path):
    out = _copy(converted, tmp_path)
    (out / "compact.engine").write_bytes(b"not an engine")
    report = _report(out)
    report["artifacts"]["engine"] = "compact.engine"
    (out / "report.json").write_text(json.dumps(report))
    result = verify_conversion(out, batches=1)
    engine = result.candidates[-1]
    assert engine.label == "compact.engine (trt)" and engine.comparisons is None
    assert "TensorRT" in engine.skipped or "CUDA" in engine.skipped
    assert result.passed


def test_npz_inputs_batches_and_bad_names_or_shapes(converted, tmp_path):
    _, out = converted
    x = np.random.default_rng(0).standard_normal((3, 4, 3, 8, 8)).astype(np.float32)
    good = tmp_path / "in.npz"
    np.savez(good, x=x)
    result = verify_conversion(out, inputs=good)
    assert result.passed and result.inputs["batches"] == 3
    assert result.candidates[1].comparisons["output0"].shape == (12, 10)

    one = tmp_path / "one.npz"
    np.savez(one, x=x[0])
    assert load_inputs(one, ["x"], [(3, 8, 8)], batch_size=3).description["batch_sizes"] == [1, 3]

    np.savez(tmp_path / "name.npz", image=x)
    with pytest.raises(BadInputError, match=r"holds arrays \['image'\].*takes input\(s\) \['x'\]"):
        verify_conversion(out, inputs=tmp_path / "name.npz")
    np.savez(tmp_path / "shape.npz", x=x[0, :, :, :4, :4])
    with pytest.raises(BadInputError, match="shape"):
        verify_conversion(out, inputs=tmp_path / "shape.npz")


def test_bad_folders(converted, tmp_path):
    ckpt, out = converted
    with pytest.raises(BadInputError, match="no report.json"):
        verify_conversion(tmp_path)
    dst = _copy(converted, tmp_path)
    (dst / "compact.onnx").unlink()
    with pytest.raises(BadInputError, match="lists compact.onnx"):
        verify_conversion(dst)
    report = _report(dst)
    (dst / "report.json").write_text(json.dumps({**report, "artifacts": {}}))
    with pytest.raises(BadInputError, match="lists no artifacts"):
        verify_conversion(dst)
    (dst / "report.json").write_text(json.dumps(report))
    # The source changed after the conversion: verifying against it would prove nothing.
    moved = tmp_path / "other.pt"
    shutil.copy(ckpt, moved)
    state = torch.load(moved, weights_only=True)
    state["state_dict"]["fc2.bias"] += 1
    torch.save(state, moved)
    report = _report(dst)
    report["source"]["checkpoint"] = str(moved)
    report["artifacts"].pop("onnx")
    (dst / "report.json").write_text(json.dumps(report))
    with pytest.raises(BadInputError, match="changed since the conversion"):
        verify_conversion(dst)


def test_verify_any_two_models(converted, tmp_path):
    ckpt, out = converted
    result = verify_models(ckpt, out / "compact.onnx", batches=1)
    assert result.passed and result.reference.startswith("tiny.pt (torch float64)")
    assert result.reference_accuracy is not None
    assert verify_models(out / "compact.pt2", out / "compact.onnx", reference_dtype="float32", batches=1).passed
    with pytest.raises(BadInputError, match="runs on --runtime ort"):
        verify_models(ckpt, out / "compact.onnx", runtime_b="torch")

    # A candidate for another input size does not fit.
    from compactify.converter.backends.onnx_export import export_onnx

    other = build_model({**META, "expand": None, "arch_kwargs": {**KW, "input_size": 16}}).eval()
    export_onnx(other, torch.randn(2, 3, 16, 16), tmp_path / "other.onnx", simplify=False)
    with pytest.raises(BadInputError, match="input dims"):
        verify_models(ckpt, tmp_path / "other.onnx")


class _PaddedChain(torch.nn.Module):
    """Two "same"-padded 3x3 convs in a row: no single conv computes them on the border."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.c = torch.nn.Conv2d(4, 4, 1)
        self.d = torch.nn.Conv2d(4, 4, 1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        y = self.b(self.a(x)).relu()
        return self.head(self.d(self.c(y)).mean((2, 3)))


def test_per_region_finds_the_approximate_merge(tmp_path):
    torch.manual_seed(0)
    model = _PaddedChain().eval()
    path = tmp_path / "padded.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 3, 6, 6),)), str(path))
    out = tmp_path / "out"
    convert_checkpoint(path, out, ConvertOptions(allow_approximate=True, onnx=False))
    result = verify_conversion(out, batches=1, per_region=True)
    assert not result.passed
    worst, rest = result.regions[0], result.regions[1:]
    assert not worst.exact and worst.algebra.max_rel_error > 1e-3  # the merge itself is off, not the weights
    assert "a" in " ".join(worst.layers) and "b" in " ".join(worst.layers)
    assert rest and all(r.exact and r.deployed.passed for r in rest)


def test_truncated_conversion_verifies_its_export_and_per_region_lists_truncated_regions_first(converted, tmp_path):
    ckpt, _ = converted
    out = tmp_path / "rank"
    report = convert_checkpoint(ckpt, out, ConvertOptions(rank="rank:1", onnx=False))
    truncated = {row["region"] for row in report["truncation"]["layers"] if row["rank_after"] != row["full_rank"]}
    assert truncated
    result = verify_conversion(out, batches=1, per_region=True)
    # The artifacts are judged against the truncated network: its export is exact. Rank 1 everywhere is
    # far from the source, which is reported apart, not as a failed export.
    assert result.passed and result.reference.startswith("truncated compact.pt2 float64")
    # Its one error figure is the conversion's, on the inputs report.json names: verify repeats it.
    measured = report["truncation"]["output_error"]
    assert result.truncation["max_rel_error"] == measured["max_rel_error"] > 0.1
    assert result.truncation["inputs"] == measured["inputs"]
    assert f"{measured['max_rel_error']:.2e}" in result.truncation["note"] and measured["inputs"] in result.truncation["note"]
    marked = [r for r in result.regions if r.truncation]
    merged = {r.name for r in result.regions}
    assert marked and {r.name for r in marked} == truncated & merged
    singles = sorted(truncated - merged)  # fc1, fc2: single layers, truncated but not merged
    assert singles and any(", ".join(singles) in w for w in result.warnings)
    assert result.regions[:len(marked)] == marked
    assert [r.energy_kept for r in marked] == sorted(r.energy_kept for r in marked)
    assert any("--rank" in w for w in result.warnings)


def test_the_plan_is_the_target_registry(converted, tmp_path, monkeypatch):
    """A target registered anywhere is verified with its own runtime and tolerance; unregistered, its
    artifact is listed as skipped."""
    from compactify.targets import TARGETS, Built, Target

    class CopiedOnnx(Target):  # a throwaway kind: compact.onnx under another name, judged 10x looser
        name = "copied_onnx"
        file = "compact.copied.onnx"
        suffixes = (".copied.onnx",)
        description = "copied ONNX model"
        runtime = "ort"
        builds_from = ("onnx",)

        def build(self, compact, folder, built, settings):
            shutil.copy(built["onnx"], folder / self.file)
            return Built(self.file)

        def tolerance(self, atol, rtol, artifacts):
            return 10 * atol, 10 * rtol

    out = _copy(converted, tmp_path)
    assert CopiedOnnx().build(None, out, {"onnx": out / "compact.onnx"}, None).file == CopiedOnnx.file
    report = _report(out)
    report["artifacts"][CopiedOnnx.name] = CopiedOnnx.file
    (out / "report.json").write_text(json.dumps(report))

    unknown = verify_conversion(out, batches=1, accuracy=False).candidates[-1]
    assert unknown.label == CopiedOnnx.file and unknown.skipped == "unknown artifact kind"

    monkeypatch.setitem(TARGETS._entries, CopiedOnnx.name, CopiedOnnx())  # removed again after the test
    result = verify_conversion(out, batches=1, accuracy=False, atol=1e-5, rtol=1e-4)
    copied = result.candidates[-1]
    assert copied.label == "compact.copied.onnx (ort)" and copied.passed
    assert (copied.atol, copied.rtol) == pytest.approx((1e-4, 1e-3))
    assert any(row["candidate"] == copied.label for row in result.rows())
