"""Cross-layer equalization (Nagel et al., "Data-Free Quantization", 2019) of the compact ONNX graph
before it is quantized (``convert --int8 --int8-equalize``).

For two convolutions with a positively homogeneous activation between them (ReLU, LeakyReLU:
``f(x / s) = f(x) / s`` for ``s > 0``), dividing the first's output channel ``i`` (its weights and
bias) by ``s_i`` and multiplying the second's input channel ``i`` by ``s_i`` computes exactly the
same function. With ``s_i = sqrt(r1_i / r2_i)``, where ``r1_i`` is the largest |weight| of the
first's output channel ``i`` and ``r2_i`` that of the second's input channel ``i``, both become
``sqrt(r1_i * r2_i)``: a channel that merging made far wider than the rest hands half its range,
in log scale, to the layer after it, and the activations between them shrink with it. It is an
exact rescaling, so the fp32 model is unchanged up to float32 rounding (the tests check it against
float64); what it changes is what one int8 scale per tensor must cover.

The pure part (``equalize_pair``) works on arrays; ``equalize_graph`` finds the pairs: Conv or
Gemm -> (Relu | LeakyRelu) -> any MaxPools -> Conv or Gemm (a max commutes with a positive
per-channel scale), where each tensor between them has one reader and each weight belongs to one
node. ReLU6 (a Clip) is not homogeneous and is left alone, and so is a Flatten between a conv and
a Gemm (it spreads a channel over many features).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

HOMOGENEOUS = ("Relu", "LeakyRelu")
COMMUTING = ("MaxPool",)  # per channel, max(x / s) = max(x) / s for s > 0
ROUNDS = 4  # chains equalize pair by pair; a few sweeps let the scales settle along a chain


@dataclass(frozen=True)
class Pair:
    first: str  # node names
    activation: str
    second: str


def input_channel_view(weight: np.ndarray, groups: int) -> np.ndarray:
    """The second conv's weights per input channel: ``[in_channels, ...]`` (a view of every weight that
    reads input channel ``i``), for any grouping."""
    out_ch, in_per_group = weight.shape[:2]
    per_group_out = out_ch // groups
    # [groups, out/groups, in/groups, k...] -> [groups, in/groups, out/groups, k...] -> [in, ...]
    w = weight.reshape(groups, per_group_out, in_per_group, *weight.shape[2:])
    return np.moveaxis(w, 2, 1).reshape(groups * in_per_group, -1)


def equalization_scales(first_weight: np.ndarray, second_weight: np.ndarray, groups: int) -> np.ndarray:
    """``s_i = sqrt(r1_i / r2_i)`` per channel between the two layers (1 where either range is 0)."""
    r1 = np.abs(first_weight.reshape(first_weight.shape[0], -1)).max(axis=1)
    r2 = np.abs(input_channel_view(second_weight, groups)).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.sqrt(r1 / r2)
    return np.where((r1 > 0) & (r2 > 0) & np.isfinite(s), s, 1.0)


def equalize_pair(first_weight: np.ndarray, first_bias: np.ndarray | None, second_weight: np.ndarray,
                  groups: int, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The rescaled (first weight, first bias, second weight): channel ``i`` of the first divided by
    ``scales[i]``, input channel ``i`` of the second multiplied by it."""
    shape = (-1,) + (1,) * (first_weight.ndim - 1)
    w1 = first_weight / scales.reshape(shape)
    b1 = None if first_bias is None else first_bias / scales
    out_ch, in_per_group = second_weight.shape[:2]
    per_group_out = out_ch // groups
    w2 = second_weight.reshape(groups, per_group_out, in_per_group, *second_weight.shape[2:]).copy()
    w2 *= scales.reshape(groups, 1, in_per_group, *(1,) * (second_weight.ndim - 2))
    return w1, b1, w2.reshape(second_weight.shape)


def find_pairs(model: onnx.ModelProto) -> list[Pair]:
    """Linear -> Relu/LeakyRelu -> (MaxPool ...) -> linear, with nothing else reading between them and
    unshared constant weights; a linear layer is a Conv, or a Gemm whose weight is ``[out, in]``."""
    nodes = model.graph.node
    readers: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    producers = {o: n for n in nodes for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}

    def linear(node) -> bool:
        if node.op_type == "Conv":
            return True
        attrs = {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}
        return node.op_type == "Gemm" and attrs.get("transB", 0) == 1 and attrs.get("transA", 0) == 0

    def own_weights(node) -> bool:
        return all(name in inits and len(readers[name]) == 1 for name in node.input[1:] if name)

    def only_reader(tensor: str):
        after = readers.get(tensor, [])
        return after[0] if len(after) == 1 and tensor not in outputs else None

    pairs = []
    for act in nodes:
        if act.op_type not in HOMOGENEOUS:
            continue
        first = producers.get(act.input[0])
        if first is None or not linear(first) or only_reader(first.output[0]) is not act or not own_weights(first):
            continue
        second = only_reader(act.output[0])
        while second is not None and second.op_type in COMMUTING and len(second.output) == 1:
            second = only_reader(second.output[0])
        if second is None or not linear(second) or not own_weights(second) or readers[second.input[0]] != [second]:
            continue
        if second.input[0] in inits:
            continue
        pairs.append(Pair(first.name, act.name, second.name))
    return pairs


def equalize_graph(model: onnx.ModelProto, rounds: int = ROUNDS) -> dict[str, Any]:
    """Equalize every pair of ``model`` in place (weights in float64, stored back as float32); what
    was done, for report.json."""
    pairs = find_pairs(model)
    by_name = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    arrays = {name: numpy_helper.to_array(inits[name]).astype(np.float64)
              for p in pairs for node in (by_name[p.first], by_name[p.second]) for name in node.input[1:] if name}
    total = {p: None for p in pairs}
    for _ in range(rounds):
        for p in pairs:
            first, second = by_name[p.first], by_name[p.second]
            groups = next((a.i for a in second.attribute if a.name == "group"), 1)
            bias = first.input[2] if len(first.input) > 2 and first.input[2] else None
            w1, w2 = arrays[first.input[1]], arrays[second.input[1]]
            s = equalization_scales(w1, w2, groups)
            w1, b1, w2 = equalize_pair(w1, None if bias is None else arrays[bias], w2, groups, s)
            arrays[first.input[1]], arrays[second.input[1]] = w1, w2
            if bias is not None:
                arrays[bias] = b1
            total[p] = s if total[p] is None else total[p] * s
    for name, value in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    spread = [float(np.max(s) / np.min(s)) for s in total.values() if s is not None]
    return {"pairs": len(pairs), "layers": [f"{p.first} -> {p.second}" for p in pairs], "rounds": rounds,
            "largest_scale_ratio": max(spread, default=1.0)}
