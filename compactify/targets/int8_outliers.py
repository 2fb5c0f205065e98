"""How hard the merged kernels are to quantize: per weight, how far its channels' ranges spread.

Summing re-parameterized branches, each with its own BatchNorm, gives the merged kernel channels
whose ranges differ by large factors (QARepVGG, Chu et al. 2022: the identity and 1x1 branches'
BatchNorms; RepVGG-A0 fell from 72.4% to 52.2% top-1 under standard post-training quantization).
One int8 scale per tensor then rounds the small channels away; one per output channel (what
``--int8`` writes) does not, but a channel whose few weights lie far out still costs its own
resolution. Two figures per Conv/Gemm weight, on the compact ONNX model's initializers:

- ``channel_spread``: the largest channel's max |w| over the median channel's (1 for even channels);
- ``outlier_ratio``: the largest max |w| / std of a channel, over the channels (about 3 for a
  Gaussian kernel of a few hundred weights; large when a few weights dominate).

A region that summed BatchNorm'd branches (the QARepVGG pattern) is named in a warning when its
merged kernel's channels spread beyond :data:`SPREAD_WARNING`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from onnx import numpy_helper

from compactify.targets.int8_quantize import linear_layers

SPREAD_WARNING = 8.0  # a channel 8x wider than the median one keeps 3 bits less of it at one scale per tensor


def weight_outliers(model) -> list[dict[str, Any]]:
    """Per Conv/Gemm/MatMul with a constant weight: its channel spread and outlier ratio, widest first."""
    inits = {i.name: i for i in model.graph.initializer}
    rows = []
    for node, weight in linear_layers(model):
        if weight is None:
            continue
        w = numpy_helper.to_array(inits[weight]).astype(np.float64)
        if node.op_type == "Conv" or (node.op_type == "Gemm" and _attr(node, "transB", 0)):
            channels = w.reshape(w.shape[0], -1)
        else:  # MatMul x @ W, Gemm without transB: output channels are the columns
            channels = w.reshape(-1, w.shape[-1]).T
        peak = np.abs(channels).max(axis=1)
        std = channels.std(axis=1)
        median = float(np.median(peak))
        rows.append({
            "layer": node.name, "weight": weight, "channels": int(channels.shape[0]),
            "channel_spread": float(peak.max() / median) if median > 0 else float("inf"),
            "outlier_ratio": float(np.max(np.divide(peak, std, out=np.zeros_like(peak), where=std > 0))),
        })
    return sorted(rows, key=lambda r: -r["channel_spread"])


def summed_batchnorm_regions(regions: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Merged regions that summed two or more BatchNorm'd branches: the QARepVGG pattern."""
    return [r for r in regions if r.get("decision") not in (None, "keep") and "sum" in r.get("ops", ())
            and sum(op == "batchnorm" for op in r.get("ops", ())) >= 2]


def pattern_warnings(regions: Sequence[Mapping[str, Any]], outliers: Sequence[Mapping[str, Any]]) -> list[str]:
    """One warning naming the summed-BatchNorm regions whose merged kernel spreads beyond SPREAD_WARNING."""
    by_weight = {r["weight"]: r for r in outliers}
    wide = []
    for region in summed_batchnorm_regions(regions):
        row = by_weight.get(f"merged_{_exit_node(region)}.weight")
        if row is not None and row["channel_spread"] > SPREAD_WARNING:
            wide.append(f"{region['name']} ({row['channel_spread']:.0f}x)")
    if not wide:
        return []
    return [f"int8: {len(wide)} merged region(s) summed BatchNorm'd branches and their kernels' channel ranges "
            f"spread widely (largest channel / median): {', '.join(wide[:6])}{', ...' if len(wide) > 6 else ''}. "
            "That is where int8 of re-parameterized nets is known to collapse (QARepVGG); the weights are per "
            "channel, but check the int8 layer errors, and keep the worst in float (--int8-keep)"]


def _exit_node(region: Mapping[str, Any]) -> str:
    """The graph node a region ends at: its last layer is listed as 'module (node)'."""
    last = region.get("layers", [""])[-1]
    return last.rsplit("(", 1)[-1].rstrip(")") if last.endswith(")") else last


def _attr(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)
