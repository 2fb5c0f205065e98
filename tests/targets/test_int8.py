"""INT8 (the onnx_int8 target): the QDQ model onnxruntime.quantization writes, the calibration inputs, and
the measured cost of quantization.

Thresholds stated here: on the built-in digits a trained SmallNet-7 CL (94% accurate) quantized with
per-channel weights agrees with its fp32 compact model on at least 97% of the 360 held-out test images,
and loses at most 2 points of accuracy.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from compactify.converter.backends.onnx_export import export_onnx
from compactify.converter.pipeline.contraction import contract
from compactify.errors import BadInputError, CompactifyError
from compactify.targets import Int8Settings, OnnxGraph, build_artifacts, prepare_artifacts
from compactify.targets import calibration as C
from compactify.targets import int8_artifact as A
from compactify.targets import int8_kernels as K
from compactify.targets import int8_outliers as O
from compactify.targets import int8_measure as M
from compactify.targets import int8_quantize as Q
from torch_compact import TorchCompact

SHAPE = (1, 3, 8, 8)
MIN_AGREEMENT = 0.97
MAX_ACCURACY_DROP = 0.02
DIGITS_META = {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.5, "hidden": 32}, "expand": "cl",
               "rate": 2, "input_shape": [1, 3, 8, 8]}


class Net(nn.Module):
    """Conv, depthwise conv, Gemm: every kind of weight axis the quantizer must scale per channel."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8, 5)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * (1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.1))
            self.conv1.weight[0] *= 30  # one channel far wider than the rest, as merged branches make them

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = torch.relu(self.conv2(h) + h)
        return self.fc(h.mean((2, 3)))


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    path = tmp_path_factory.mktemp("int8") / "net.onnx"
    export_onnx(Net().eval(), torch.randn(2, *SHAPE[1:]), path, exporter="torchscript", simplify=False)
    return path


def calib(n=48, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def weight_quantization(model) -> dict[str, dict]:
    """Per Conv/Gemm node, read straight from the graph: the scales and zero points of its weight's
    DequantizeLinear, and the weight's output-channel count."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq = producers[node.input[1]]
        assert dq.op_type == "DequantizeLinear", (node.name, dq.op_type)
        q = producers.get(dq.input[0])
        weight = inits[q.input[0]] if q is not None else inits[dq.input[0]]
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        channels = weight.shape[0] if node.op_type == "Conv" or trans_b else weight.shape[1]
        out[node.name] = {"scale": inits[dq.input[1]], "zero": inits[dq.input[2]],
                          "axis": next((a.i for a in dq.attribute if a.name == "axis"), 1), "channels": channels,
                          "stored": inits[dq.input[0]].dtype if dq.input[0] in inits else None,
                          "pair": q is not None and q.op_type == "QuantizeLinear"}
    return out


def test_qdq_model_has_per_channel_symmetric_int8_weights_on_every_conv_and_gemm(fp32, tmp_path):
    out = tmp_path / "q.onnx"
    kept = Q.quantize(fp32, out, calib())
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    weights = weight_quantization(model)
    assert len(weights) == 3 and kept == []
    for name, w in weights.items():
        assert w["scale"].shape == (w["channels"],), name  # one scale per output channel
        assert w["axis"] == 0 and w["stored"] == np.int8 and not np.any(w["zero"]), name
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Activations are quantized too: every Conv/Gemm reads its input through a DequantizeLinear.
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            assert producers[node.input[0]].op_type == "DequantizeLinear"
    rows = Q.qdq_structure(model)
    assert all(r["weight"]["scales"] == weights[r["layer"]]["channels"] for r in rows)


def test_per_tensor_has_one_scale(fp32, tmp_path):
    Q.quantize(fp32, tmp_path / "t.onnx", calib(), per_channel=False)
    assert all(w["scale"].size == 1 for w in weight_quantization(onnx.load(str(tmp_path / "t.onnx"))).values())


def test_tensorrt_form_is_symmetric_with_float_biases(fp32, tmp_path):
    Q.quantize(fp32, tmp_path / "trt.onnx", calib(), tensorrt=True)
    model = onnx.load(str(tmp_path / "trt.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert not np.any(inits[node.input[2]]), node.name  # zero points 0: TensorRT takes nothing else
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                assert inits[node.input[0]].dtype != np.int32, node.name  # no int32 bias
    for name, w in weight_quantization(model).items():
        assert w["pair"] and w["scale"].shape == (w["channels"],), name


def _activation_zero_types(model) -> set:
    """Element types of the activations' QuantizeLinear zero points (what the tensors are stored as)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {inits[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


def test_onnxruntime_form_runs_every_conv_and_gemm_as_an_integer_kernel(fp32, tmp_path):
    """u8 activations with s8 weights: the form ONNX Runtime's CPU kernels take. With s8 activations it
    fused only some convs and ran the rest in float between Q/DQ pairs (ResNet-18: slower than fp32)."""
    out = tmp_path / "q.onnx"
    Q.quantize(fp32, out, calib())
    assert _activation_zero_types(onnx.load(str(out))) == {np.dtype(np.uint8)}
    census = K.kernel_census(out)
    linear = sum(n.op_type in ("Conv", "Gemm") for n in onnx.load(str(fp32)).graph.node)
    integer_linear = sum(n for op, n in census["integer_ops"].items() if op in ("QLinearConv", "QGemm", "QLinearMatMul"))
    assert integer_linear == linear == 3, census
    assert "Conv" not in census["float_ops"] and "Gemm" not in census["float_ops"], census
    # The float ops left are explained: the mean over space has no integer form in the quantizer.
    assert set(census["float_reasons"]) == set(census["float_ops"]), census
    assert "ReduceMean" in census["float_ops"] and "no integer form" in census["float_reasons"]["ReduceMean"]


def test_a_kept_layer_is_counted_in_float_with_its_reason(fp32, tmp_path):
    out = tmp_path / "kept.onnx"
    conv = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    kept = Q.quantize(fp32, out, calib(), keep=[conv])
    census = K.kernel_census(out, kept)
    assert census["float_ops"].get("Conv") == 1, census
    assert census["float_reasons"]["Conv"] == f"1 kept in float by --int8-keep ({conv})"
    assert "Conv x1" in K.census_line(census)


def test_tensorrt_form_keeps_int8_activations(fp32, tmp_path):
    Q.quantize(fp32, tmp_path / "trt.onnx", calib(), tensorrt=True)
    assert _activation_zero_types(onnx.load(str(tmp_path / "trt.onnx"))) == {np.dtype(np.int8)}


def test_weight_ranges_match_numpy_on_the_planted_wide_channel(fp32):
    model = onnx.load(str(fp32))
    rows = {r["layer"]: r for r in O.weight_outliers(model)}
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        w = inits[node.input[1]]
        ch = w.reshape(w.shape[0], -1)  # torchscript's Gemm is transB=1: rows are output channels
        peak = np.abs(ch).max(1)
        assert rows[node.name]["channel_spread"] == pytest.approx(peak.max() / np.median(peak))
        assert rows[node.name]["outlier_ratio"] == pytest.approx((peak / ch.std(1)).max())
    # conv1's channel 0 was made 30x wider: it tops the list, well past the warning threshold.
    first = O.weight_outliers(model)[0]
    assert first["layer"].endswith("conv1/Conv") and first["channel_spread"] > O.SPREAD_WARNING


def test_a_region_that_summed_batchnormed_branches_is_named_when_its_kernel_spreads():
    region = {"name": "stage1.0", "decision": "dense", "ops": ["conv", "batchnorm", "conv", "batchnorm", "batchnorm", "sum"],
              "layers": ["stage1.0.rbr_dense.conv (conv2d_2)", "stage1.0.rbr_identity (batch_norm_4)", "stage1.0 (add_1)"]}
    chain = {"name": "head", "decision": "dense", "ops": ["conv", "batchnorm", "conv"], "layers": ["head (conv2d_9)"]}
    wide = [{"weight": "merged_add_1.weight", "channel_spread": 40.0}, {"weight": "merged_conv2d_9.weight",
                                                                         "channel_spread": 50.0}]
    (warning,) = O.pattern_warnings([region, chain], wide)
    assert "stage1.0 (40x)" in warning and "head" not in warning and "QARepVGG" in warning
    assert O.pattern_warnings([region], [{"weight": "merged_add_1.weight", "channel_spread": 2.0}]) == []
    assert O.pattern_warnings([dict(region, decision="keep")], wide) == []


def activation_scales(model) -> dict[str, float]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]].reshape(-1)[0]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits}


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_other_calibration_methods_choose_other_ranges(fp32, tmp_path, method):
    Q.quantize(fp32, tmp_path / "minmax.onnx", calib())
    Q.quantize(fp32, tmp_path / f"{method}.onnx", calib(), method=method)
    model = onnx.load(str(tmp_path / f"{method}.onnx"))
    onnx.checker.check_model(model)
    ours, minmax = activation_scales(model), activation_scales(onnx.load(str(tmp_path / "minmax.onnx")))
    assert ours.keys() == minmax.keys()
    assert all(ours[k] <= 1.001 * minmax[k] for k in ours)  # both only ever cut the tails
    if method == "entropy":  # and KL does cut them: not MinMax under another name, which ONNX Runtime's
        assert any(ours[k] < 0.95 * minmax[k] for k in ours)  # default of 128 entropy bins would make it


def test_keep_leaves_named_layers_in_float(fp32, tmp_path):
    model = onnx.load(str(fp32))
    conv = next(n for n, _ in Q.linear_layers(model) if n.op_type == "Conv")
    gemm_weight = next(w for n, w in Q.linear_layers(model) if n.op_type == "Gemm")
    kept = Q.quantize(fp32, tmp_path / "k.onnx", calib(), keep=[conv.name, gemm_weight.removesuffix(".weight")])
    assert len(kept) == 2 and conv.name in kept
    rows = {r["layer"]: r for r in Q.qdq_structure(onnx.load(str(tmp_path / "k.onnx")))}
    assert [name for name, r in rows.items() if r["weight"] is None] == [n for n in rows if n in kept]
    with pytest.raises(BadInputError, match="no such layer.*its layers are"):
        Q.resolve_keep(model, ["nope"])


def test_layer_errors_compare_every_layer(fp32, tmp_path):
    Q.quantize(fp32, tmp_path / "q.onnx", calib())
    rows = M.layer_errors(fp32, tmp_path / "q.onnx", calib(16, seed=1))
    assert len(rows) == 3 and all(r["int8"] for r in rows)
    assert all(0 < r["rel_error"] < 0.5 and math.isfinite(r["input_rel_error"]) for r in rows)
    assert [r["added"] for r in rows] == sorted((r["added"] for r in rows), reverse=True)
    # The first conv reads the quantized model input: its input error is that of quantizing x alone.
    first = next(r for r in rows if r["layer"] == Q.linear_layers(onnx.load(str(fp32)))[0][0].name)
    assert 0 < first["input_rel_error"] < 0.02


def test_static_batch_calibrates_on_whole_batches(tmp_path):
    static = tmp_path / "static.onnx"
    export_onnx(Net().eval(), torch.randn(4, *SHAPE[1:]), static, exporter="torchscript", simplify=False,
                dynamic_batch=False)
    Q.quantize(static, tmp_path / "s.onnx", calib(10))  # 10 inputs: two batches of 4, the rest dropped
    out = M.run_onnx(M._session(tmp_path / "s.onnx"), calib(7), 4)
    assert out[0].shape == (7, 5)
    with pytest.raises(BadInputError, match="fixed batch of 4"):
        Q.quantize(static, tmp_path / "s2.onnx", calib(3))


# ------------------------------------------------------------------ calibration inputs


def test_split_is_seeded_and_disjoint():
    cal, held = C.split_indices(10)
    assert len(held) == 2 and len(cal) == 8 and not set(cal) & set(held)
    assert np.array_equal(C.split_indices(10)[1], held)
    assert [len(h) for _, h in (C.split_indices(n) for n in (2, 3, 100))] == [1, 1, 20]


def test_npz_with_labels(tmp_path):
    x = calib(20)
    labels = np.arange(20) % 5
    np.savez(tmp_path / "c.npz", x=x, labels=labels)
    data = C.calibration_set(tmp_path / "c.npz", SHAPE, None)
    assert data.calibration.shape == (16, 3, 8, 8) and data.held_out.shape == (4, 3, 8, 8)
    assert data.held_out_labels.dtype == np.int64 and len(data.held_out_labels) == 4
    assert data.description["sha256"] and "4 held-out inputs of c.npz, with labels" == data.held_out_what
    x2, l2 = C.held_out_inputs(data.description, SHAPE)
    assert np.array_equal(x2, data.held_out) and np.array_equal(l2, data.held_out_labels)
    # The only array of a file counts as the input, whatever its name.
    np.savez(tmp_path / "any.npz", images=x)
    assert C.calibration_set(tmp_path / "any.npz", SHAPE, None).held_out_labels is None


def test_digits_default_for_checkpoints_trained_on_digits():
    data = C.calibration_set(None, SHAPE, {"training": {"dataset": "digits"}})
    assert len(data.calibration) == C.DIGITS_CALIBRATION and len(data.held_out) == 360
    assert data.held_out_labels is not None and data.description["source"] == "digits"
    with pytest.raises(BadInputError, match="--int8 needs calibration inputs: pass --calibration FILE.npz"):
        C.calibration_set(None, SHAPE, {"training": {"dataset": "cifar"}})


def _bad_files(tmp_path):
    x = calib(8)
    cases = {}

    def save(name, **arrays):
        np.savez(tmp_path / f"{name}.npz", **arrays)
        cases[name] = tmp_path / f"{name}.npz"

    save("shape", x=np.zeros((8, 3, 16, 16), np.float32))
    save("rank", x=np.zeros((8, 192), np.float32))
    save("no_samples", x=np.zeros((0, 3, 8, 8), np.float32))
    save("one_sample", x=x[:1])
    nan = x.copy()
    nan[2, 1, 3, 3] = np.nan
    save("nan", x=nan)
    save("ints", x=x.astype(np.int64))
    save("labels_float", x=x, labels=np.zeros(8))
    save("labels_short", x=x, labels=np.zeros(3, np.int64))
    save("labels_negative", x=x, labels=-np.ones(8, np.int64))
    save("two_arrays", a=x, b=x)
    (tmp_path / "empty.npz").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.npz"
    (tmp_path / "text.npz").write_text("0.1, 0.2\n")
    cases["text"] = tmp_path / "text.npz"
    cases["missing"] = tmp_path / "missing.npz"
    return cases


BAD = {
    "shape": "has shape (8, 3, 16, 16), but the model takes (N, 3, 8, 8)",
    "rank": "has shape (8, 192)",
    "no_samples": "holds no samples",
    "one_sample": "holds 1 sample; calibration needs at least 2",
    "nan": "holds 1 NaN or Inf value",
    "ints": "must be floating-point",
    "labels_float": "must be 8 integer class indices",
    "labels_short": "must be 8 integer class indices",
    "labels_negative": "negative class -1",
    "two_arrays": "needs the model's input as an array named 'x'",
    "empty": "is an empty file, not an .npz",
    "text": "not an .npz",
    "missing": "does not exist",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_calibration_files_are_one_line_errors(tmp_path, case):
    path = _bad_files(tmp_path)[case]
    with pytest.raises(BadInputError) as info:
        C.calibration_set(path, SHAPE, None)
    assert BAD[case] in str(info.value) and "\n" not in str(info.value)


def test_held_out_of_a_changed_file_is_refused(tmp_path):
    np.savez(tmp_path / "c.npz", x=calib(10))
    desc = C.calibration_set(tmp_path / "c.npz", SHAPE, None).description
    np.savez(tmp_path / "c.npz", x=calib(10, seed=5))
    with pytest.raises(BadInputError, match="changed since the conversion"):
        C.held_out_inputs(desc, SHAPE)
    (tmp_path / "c.npz").unlink()
    with pytest.raises(BadInputError, match="no longer exists"):
        C.held_out_inputs(desc, SHAPE)


# ------------------------------------------------------------------ through build_artifacts, on digits


@pytest.fixture(scope="module")
def digits_compact():
    """A SmallNet-7 CL trained on the digits, contracted: what the converter hands the int8 target."""
    from compactify.models import build_model
    from compactify.models.train import train

    torch.manual_seed(0)
    model = build_model(DIGITS_META)
    result = train(model, 3, input_shape=DIGITS_META["input_shape"], progress=False)
    meta = dict(DIGITS_META, training={"dataset": "digits", "epochs": 3, "test_accuracy": result.test_accuracy})
    model.eval()
    contraction = contract(model, tuple(DIGITS_META["input_shape"]))
    return TorchCompact(contraction.compact, model, (2, *DIGITS_META["input_shape"][1:]), meta), result


@pytest.fixture(scope="module")
def converted(digits_compact, tmp_path_factory):
    compact, _ = digits_compact
    out = tmp_path_factory.mktemp("conv")
    return out, build_artifacts(compact, out, {"onnx": None, "onnx_int8": Int8Settings()})


def test_digits_agreement_and_accuracy_above_the_stated_thresholds(converted, digits_compact):
    out, report = converted
    r = report["int8"]
    assert (out / "compact.int8.onnx").is_file() and report["artifacts"]["onnx_int8"] == "compact.int8.onnx"
    assert r["held_out"]["source"] == "digits" and r["held_out"]["held_out_samples"] == 360
    assert r["calibration"]["calibration_samples"] == C.DIGITS_CALIBRATION
    assert r["top1_agreement"] >= MIN_AGREEMENT
    assert r["accuracy_fp32"] == pytest.approx(digits_compact[1].test_accuracy, abs=1e-6)
    assert r["accuracy_int8"] >= r["accuracy_fp32"] - MAX_ACCURACY_DROP
    assert r["reference"] == "source float64"
    assert 0 < r["mean_abs_error"] <= r["max_abs_error"] and r["max_rel_error"] < 0.2
    assert r["fp32_max_abs_error"] < 1e-4 < r["max_abs_error"]  # int8, not fp32, is what is measured
    assert r["quantized_layers"] == r["linear_layers"] == len(r["layers"]) == 5
    assert "## INT8" in "\n".join(A.int8_markdown(r))


def test_min_agreement_failure_raises_after_measuring(digits_compact, tmp_path, monkeypatch):
    compact, _ = digits_compact
    real = M.measure

    def lower(*args, **kwargs):  # as if int8 had flipped 10% of the predictions
        out = real(*args, **kwargs)
        out["top1_agreement"] = 0.9
        return out

    monkeypatch.setattr(A, "measure", lower)
    with pytest.raises(CompactifyError, match="below --int8-min-agreement 0.95 .0.9000 on the digits test split .360 images, with labels.. "
                                              "even with every Conv/Gemm/MatMul layer in float .5 kept.; nothing "
                                              "was written") as info:
        build_artifacts(compact, tmp_path, {"onnx": None, "onnx_int8": Int8Settings(min_agreement=0.95)})
    assert not isinstance(info.value, BadInputError)  # exit 1: the conversion ran and failed its bar


def test_sensitivity_pass_keeps_the_most_sensitive_layers_until_the_bar_is_met(digits_compact, tmp_path, monkeypatch):
    """As if int8 flipped 10% of the predictions until two layers are in float: the pass keeps exactly
    the two that add the most error, in that order, and times each step."""
    compact, _ = digits_compact
    real_measure, real_quantize = M.measure, A.quantize
    keeps = []

    def quantize(*args, keep=(), **kwargs):
        keeps.append(tuple(keep))
        return real_quantize(*args, keep=keep, **kwargs)

    def measure(*args, **kwargs):
        out = real_measure(*args, **kwargs)
        out["top1_agreement"] = 0.9 if len(keeps[-1]) < 2 else 0.99
        return out

    orders = []
    real_layers = A.layer_errors

    def layer_errors(*args, **kwargs):
        rows = real_layers(*args, **kwargs)
        orders.append([r["layer"] for r in rows if r["int8"]])
        return rows

    monkeypatch.setattr(A, "quantize", quantize)
    monkeypatch.setattr(A, "measure", measure)
    monkeypatch.setattr(A, "layer_errors", layer_errors)
    out = build_artifacts(compact, tmp_path, {"onnx": None, "onnx_int8": Int8Settings(min_agreement=0.95)})
    r = out["int8"]
    assert keeps == [(), (orders[0][0],), (orders[0][0], orders[1][0])]
    assert r["kept_in_float"] == list(keeps[-1]) and r["top1_agreement"] == 0.99
    fallback = r["sensitivity_fallback"]
    assert [k["layer"] for k in fallback["kept"]] == list(keeps[-1])
    assert fallback["top1_agreement_all_int8"] == 0.9 and all(k["latency_ms_after"] > 0 for k in fallback["kept"])
    assert "to meet --int8-min-agreement 0.95, kept in float" in "\n".join(A.summary_lines(r))


def test_settings_are_checked_before_any_work(tmp_path):
    cases = [
        (lambda: prepare_artifacts({"onnx_int8": Int8Settings()}, {}, SHAPE), "drop --no-onnx"),
        (lambda: Int8Settings(method="kl"), "minmax, entropy, percentile"),
        (lambda: Int8Settings(min_agreement=1.5), "fraction in [0, 1]"),
        (lambda: prepare_artifacts({"onnx": None, "onnx_fp16": None, "onnx_int8": None, "engine": None}, {}, SHAPE),
         "--trt builds one engine"),
        (lambda: prepare_artifacts({"onnx": None, "onnx_int8": Int8Settings(calibration=str(tmp_path / "no.npz"))},
                                   {}, SHAPE), "does not exist"),
    ]
    for make, message in cases:
        with pytest.raises(BadInputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            make()
    assert Int8Settings(keep=(" a ", "", "b")).keep == ("a", "b")


def test_an_onnx_source_quantizes_too(fp32, tmp_path):
    """int8 needs only compact.onnx and the source's float64 outputs: what an ONNX source has."""
    np.savez(tmp_path / "c.npz", x=calib(40))
    net = Net().eval()
    compact = TorchCompact(net, net, (2, *SHAPE[1:]))
    compact.program = lambda: None  # as for an ONNX source: no PyTorch graph, only the ONNX one
    compact.onnx = lambda: OnnxGraph(onnx.load(str(fp32)), {"exporter": "compactify.onnx_rewrite"})
    out = tmp_path / "out"
    out.mkdir()
    added = build_artifacts(compact, out, {"onnx": None,
                                           "onnx_int8": Int8Settings(calibration=str(tmp_path / "c.npz"))})
    assert added["artifacts"]["onnx_int8"] == "compact.int8.onnx" and added["int8"]["max_rel_error"] < 0.2


def test_outputs_beyond_the_calibrated_range_are_counted_as_clipped(fp32, tmp_path):
    Q.quantize(fp32, tmp_path / "q.onnx", calib() * 0.2)  # calibrated on small inputs
    (lo, hi), = M.output_ranges(onnx.load(str(tmp_path / "q.onnx"))).values()
    assert lo < 0 < hi
    narrow = C.CalibrationSet(calib() * 0.2, calib(32, seed=1) * 0.2, None, {})
    wide = C.CalibrationSet(calib() * 0.2, calib(32, seed=1) * 3, None, {})
    source = TorchCompact(Net(), Net(), SHAPE)
    names = [o.name for o in onnx.load(str(fp32)).graph.output]
    assert M.measure(fp32, tmp_path / "q.onnx", wide, source.reference, names)["clipped"] > 0.1
    assert M.measure(fp32, tmp_path / "q.onnx", narrow, source.reference, names)["clipped"] < 0.1


def test_a_layer_that_removes_error_prints_one_sign():
    """A layer whose output is closer to fp32 than its input ("added" < 0) reads -0.00011, not +-0.00011."""
    r = {"artifact": "compact.int8.onnx", "calibration_method": "minmax", "calibration": {"calibration_what": "x"},
         "held_out": {"held_out_what": "y"}, "reference": "source float64", "max_abs_error": 0.1,
         "mean_abs_error": 0.01, "max_rel_error": 0.01, "fp32_max_abs_error": 1e-7,
         "layers": [{"layer": "a", "added": -0.00011}, {"layer": "b", "added": 0.002}]}
    line = A.summary_lines(r)[1]
    assert "a -0.00011" in line and "b +0.002" in line and "+-" not in line
