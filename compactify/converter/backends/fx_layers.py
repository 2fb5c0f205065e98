"""The PyTorch layer that computes a merged operator: ``nn.Linear``, ``nn.ConvNd`` or, for an
operator that spreads its input, ``nn.ConvTransposeNd`` (behind a constant pad for what the
layer's own padding cannot say), cast once from float64."""

from __future__ import annotations

import torch
from torch import nn

from compactify.converter.engine import algebra as A


def to_module(op: A.AffineConv) -> nn.Module:
    """The standard layer computing ``op``, in float32 (cast once, from float64)."""
    op = A.trim(op)
    if op.dilates_input:
        form = A.transposed_layer(op)
        layer = _behind_pad(_transposed_layer(op, form), form.input_pad)
        if any(b or a for b, a in form.output_crop):  # a constant pad by minus n crops n
            layer = nn.Sequential(layer, _pad_layer([(-b, -a) for b, a in form.output_crop]))
        return layer.eval()
    layer = _linear_layer(op) if op.ndim == 0 else _conv_layer(op)
    # asymmetric padding: convs only pad symmetrically
    return _behind_pad(layer, [(b - min(b, a), a - min(b, a)) for b, a in op.padding]).eval()


def _behind_pad(layer: nn.Module, padding) -> nn.Module:
    return nn.Sequential(_pad_layer(padding), layer) if any(b or a for b, a in padding) else layer


def _pad_layer(padding) -> nn.Module:
    pad_cls = {1: nn.ConstantPad1d, 2: nn.ConstantPad2d, 3: nn.ConstantPad3d}[len(padding)]
    return pad_cls(tuple(p for pair in reversed(padding) for p in pair), 0.0)


def attach_modules(decisions) -> None:
    """Give every merged decision that has none yet the layer computing its operator."""
    for d in decisions:
        if d.kind == "dense" and d.module is None and d.operator is not None:
            d.module = to_module(d.operator)


def _linear_layer(op: A.AffineConv) -> nn.Linear:
    weight = A.dense_weight(op)
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=op.has_bias)
    layer.weight.data = weight.to(torch.float32)
    if op.has_bias:
        layer.bias.data = op.bias.to(torch.float32)
    return layer


def _conv_layer(op: A.AffineConv) -> nn.Module:
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[op.ndim]
    layer = cls(op.in_channels, op.out_channels, op.kernel, stride=op.stride,
                padding=tuple(min(b, a) for b, a in op.padding), dilation=op.dilation,
                groups=op.groups, bias=op.has_bias)
    layer.weight.data = op.weight.to(torch.float32).contiguous()
    if op.has_bias:
        layer.bias.data = op.bias.to(torch.float32)
    return layer


def _transposed_layer(op: A.AffineConv, form: A.TransposedLayer) -> nn.Module:
    cls = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[op.ndim]
    layer = cls(op.in_channels, op.out_channels, op.kernel, stride=form.stride, padding=form.padding,
                output_padding=form.output_padding, groups=op.groups, bias=op.has_bias, dilation=form.dilation)
    layer.weight.data = form.weight.to(torch.float32).contiguous()
    if op.has_bias:
        layer.bias.data = op.bias.to(torch.float32)
    return layer
