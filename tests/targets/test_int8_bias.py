"""Bias correction: each quantized layer's mean output shift, measured on the calibration inputs, leaves
its bias; checked against an independent measurement of the shift before and after."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from compactify.converter.backends.onnx_export import export_onnx
from compactify.targets import int8_bias as B
from compactify.targets import int8_quantize as Q


class Skewed(nn.Module):
    """A first conv whose weights all lean one way, so that rounding them shifts its outputs' mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 4, 1)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand(self.conv.weight.shape, generator=g) * 0.3 + 0.01)
            self.conv.weight[0] *= 40  # one wide channel: the others keep few int8 steps per tensor

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)))


def _first_layer_shift(fp32: str, int8: str, x: np.ndarray) -> np.ndarray:
    """Per channel, mean(int8 - fp32) of the first conv's output, read with ONNX Runtime unoptimized."""
    outs = []
    for path in (fp32, int8):
        model = onnx.load(path)
        conv = next(n for n in model.graph.node if n.op_type == "Conv")
        model.graph.output.append(onnx.helper.make_tensor_value_info(conv.output[0], onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outs.append(session.run([conv.output[0]], {model.graph.input[0].name: x})[0].astype(np.float64))
    return (outs[1] - outs[0]).mean(axis=(0, 2, 3))


def test_bias_correction_removes_the_first_layers_mean_shift(tmp_path):
    fp32, int8 = tmp_path / "f.onnx", tmp_path / "q.onnx"
    export_onnx(Skewed().eval(), torch.randn(1, 3, 8, 8), fp32, exporter="torchscript", simplify=False)
    x = np.abs(np.random.default_rng(0).standard_normal((64, 3, 8, 8))).astype(np.float32)  # positive inputs
    Q.quantize(fp32, int8, x, per_channel=False)
    before = _first_layer_shift(str(fp32), str(int8), x)
    info = B.correct_biases(fp32, int8, x)
    after = _first_layer_shift(str(fp32), str(int8), x)
    assert info["layers"] == 2 and info["largest_shift"] > 0
    assert np.abs(before).max() > 1e-3, before  # rounding to one scale per tensor did shift the means
    # What is left is below one step of the int32 bias, far below the shift that was there.
    assert np.abs(after).max() < 0.1 * np.abs(before).max(), (before, after)
    # The TensorRT form keeps float biases: they are corrected directly.
    trt = tmp_path / "trt.onnx"
    Q.quantize(fp32, trt, x, per_channel=False, tensorrt=True)
    before = _first_layer_shift(str(fp32), str(trt), x)
    B.correct_biases(fp32, trt, x)
    assert np.abs(_first_layer_shift(str(fp32), str(trt), x)).max() < 0.1 * np.abs(before).max()
