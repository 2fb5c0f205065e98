"""The target registry: every artifact kind once, found by suffix or by content, opened on its runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compactify.errors import BadInputError
from compactify.registry import DuplicateRegistration
from compactify.runtimes import RUNNERS
from compactify.targets import (TARGETS, Built, Fp16Settings, OnnxSettings, Target, build_artifacts, kinds_help,
                                kinds_table, open_artifact, prepare_artifacts, register_target, runtime_for, target_for)
from torch_compact import TorchCompact

SHAPE = (2, 3, 8, 8)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def tiny():
    return Tiny().eval()


@pytest.fixture(scope="module")
def onnx_file(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("targets") / "tiny.onnx"
    torch.onnx.export(tiny, (torch.randn(SHAPE),), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    return path


def test_every_target_once():
    targets = TARGETS.values()
    assert [t.name for t in targets] == ["pt2", "onnx", "onnx_fp16", "onnx_int8", "engine", "openvino", "openvino_int8", "pte",
                                         "tflite"]
    for attribute in ("name", "file"):
        values = [getattr(t, attribute) for t in targets]
        assert len(values) == len(set(values)), attribute
    suffixes = [s for t in targets for s in t.suffixes]
    assert len(suffixes) == len(set(suffixes))
    for t in targets:
        assert t.runtime in RUNNERS, t.name
        assert all(b in TARGETS for b in t.builds_from), t.name
        assert target_for(t.file) is t  # the file convert writes is recognised as its own kind


def test_a_second_target_of_one_name_is_refused():
    with pytest.raises(DuplicateRegistration, match="target 'onnx' is registered twice"):
        @register_target
        class AnotherOnnx(Target):
            name = "onnx"
            file = "other.onnx"
            suffixes = (".other",)
            description = "another ONNX model"
            runtime = "ort"
            settings_type = OnnxSettings

            def build(self, compact, folder, built, settings):
                return Built(self.file)


def test_target_by_suffix():
    assert target_for("m.onnx").name == "onnx"
    assert target_for("M.PT2").name == "pt2"
    assert target_for("a.engine").name == target_for("a.plan").name == target_for("a.trt").name == "engine"
    assert target_for("compact.int8.onnx").name == "onnx_int8"
    assert runtime_for("a.onnx") == "ort" and runtime_for("a.plan") == "trt" and runtime_for("a.pt2") == "torch"
    assert runtime_for(nn.Linear(2, 2)) == "torch"


def test_target_by_content(onnx_file, tiny, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(onnx_file.read_bytes())
    assert target_for(renamed).name == "onnx"
    program = tmp_path / "model.weights"
    torch.export.save(torch.export.export(tiny, (torch.randn(SHAPE),)), str(tmp_path / "p.pt2"))
    program.write_bytes((tmp_path / "p.pt2").read_bytes())
    assert target_for(program).name == "pt2"
    torch.save(tiny.state_dict(), tmp_path / "weights.pth")  # a checkpoint is the converter's, not an artifact
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    for path in (tmp_path / "weights.pth", notes, tmp_path / "missing.xyz"):
        with pytest.raises(BadInputError, match=r"cannot tell what .* is: expected one of \.pt2"):
            target_for(path)


def test_fp16_and_int8_onnx_are_told_apart_by_content(onnx_file, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_file))
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    half = tmp_path / "half.model"
    onnx.save(model, str(half))
    assert target_for(half).name == "onnx_fp16"


def test_open_gives_a_loaded_runner_on_the_targets_runtime(onnx_file, tiny, tmp_path):
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    want = tiny(torch.from_numpy(x)).detach().numpy()
    with TARGETS["onnx"].open(onnx_file) as runner:
        np.testing.assert_allclose(runner.infer({"x": x})["y"], want, rtol=1e-4, atol=1e-5)
    pt2 = tmp_path / "tiny.pt2"
    torch.export.save(torch.export.export(tiny, (torch.from_numpy(x),)), str(pt2))
    with open_artifact(pt2) as runner:
        assert runner.name == "torch"
        np.testing.assert_allclose(list(runner.infer({"x": x}).values())[0], want, rtol=1e-4, atol=1e-5)


def test_tolerances():
    artifacts = {"pt2": "compact.pt2", "onnx": "compact.onnx"}
    assert TARGETS["onnx"].tolerance(1e-4, 1e-5, artifacts) == (1e-4, 1e-5)
    assert TARGETS["onnx_fp16"].tolerance(1e-4, 1e-5, artifacts) == (1e-2, 1e-2)
    assert TARGETS["onnx_int8"].tolerance(1e-4, 1e-5, artifacts) is None
    engine = TARGETS["engine"]
    assert engine.tolerance(1e-4, 1e-5, artifacts) == (1e-4, 1e-5)
    assert engine.tolerance(1e-4, 1e-5, {**artifacts, "onnx_fp16": "compact.fp16.onnx"}) == (1e-2, 1e-2)
    assert engine.tolerance(1e-4, 1e-5, {**artifacts, "onnx_int8": "compact.int8.onnx"}) is None


def test_engine_says_what_is_missing():
    reason = TARGETS["engine"].missing()
    if reason is not None:
        assert "\n" not in reason and ("TensorRT" in reason or "CUDA" in reason)
    assert all(TARGETS[name].missing() is None for name in ("pt2", "onnx"))


def test_help_lists_every_kind_and_runtime():
    line, table = kinds_help(), kinds_table()
    for t in TARGETS.values():
        assert "/".join(t.suffixes) in line and " ".join(t.suffixes) in table
    assert all(name in table for name in RUNNERS)


def test_build_artifacts_writes_pt2_onnx_and_fp16_that_load_and_run(tiny, tmp_path):
    compact = TorchCompact(tiny, tiny, SHAPE)
    added = build_artifacts(compact, tmp_path, {"pt2": None, "onnx": OnnxSettings(), "onnx_fp16": Fp16Settings()})
    assert added["artifacts"] == {"pt2": "compact.pt2", "onnx": "compact.onnx", "onnx_fp16": "compact.fp16.onnx"}
    assert added["onnx"]["simplified"] and added["onnx"]["simplify_max_abs_diff"] < 1e-5
    assert added["onnx"]["exporter"] == "torchscript" and added["onnx"]["nodes_after"] <= added["onnx"]["nodes_before"]
    assert added["onnx_fp16"]["max_rel_diff_vs_fp32"] < 1e-2 and added["warnings"] == []
    x = np.random.default_rng(3).standard_normal((5, *SHAPE[1:])).astype(np.float32)
    want = compact.reference({"x": x})[0]
    for name, file in added["artifacts"].items():
        target = target_for(tmp_path / file)
        assert target.name == name
        with target.open(tmp_path / file) as runner:
            got = list(runner.infer({"x": x}).values())[0]
        np.testing.assert_allclose(got, want, atol=target.tolerance(1e-4, 1e-4, added["artifacts"])[0])
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "compact.onnx")).metadata_props}
    assert props["compactify.source_arch"] == "tiny"


def test_requests_are_checked_before_any_work():
    with pytest.raises(BadInputError, match="--fp16 writes compact.fp16.onnx from compact.onnx; drop --no-onnx"):
        prepare_artifacts({"onnx_fp16": None}, {}, SHAPE)
    with pytest.raises(BadInputError, match="no artifact kind 'tvm'"):
        prepare_artifacts({"tvm": None}, {}, SHAPE)
    with pytest.raises(BadInputError, match="--trt builds one engine: from compact.int8.onnx with --int8 or "
                                            "from compact.fp16.onnx with --fp16; drop one of them"):
        prepare_artifacts({"onnx": None, "onnx_fp16": None, "onnx_int8": None, "engine": None}, {}, SHAPE)
    with pytest.raises(BadInputError, match="simplify must be true or false"):
        OnnxSettings(simplify="yes")


def test_pt2_of_a_source_without_a_program_is_one_line(tiny, tmp_path):
    compact = TorchCompact(tiny, tiny, SHAPE)
    compact.program = lambda: None  # an ONNX source has no PyTorch graph
    with pytest.raises(BadInputError, match="an ONNX source has no PyTorch graph"):
        build_artifacts(compact, tmp_path, {"pt2": None, "onnx": None})
    assert list(tmp_path.iterdir()) == []


def test_a_target_this_machine_cannot_build_is_refused_before_any_work_with_what_to_install(monkeypatch):
    from compactify.errors import MissingRuntimeError
    from compactify.targets import check_requests
    from compactify.targets.tensorrt import EngineTarget

    monkeypatch.setattr(EngineTarget, "missing", lambda self: "needs TensorRT (tensorrt Python package)")
    with pytest.raises(MissingRuntimeError, match=r"^--trt needs TensorRT .*; install it on a machine with an NVIDIA "
                                                  r"GPU \(pip install tensorrt\)$"):
        check_requests({"onnx": None, "engine": None})
