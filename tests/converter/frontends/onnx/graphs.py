"""Hand-written ONNX graphs (onnx.helper) in the shapes other exporters produce, for the ONNX
front-end's tests: tf2onnx's NHWC transposes, Keras' MatMul + Add, BatchNorm written as Mul + Add,
Pad with a value, Gemm with alpha/beta/transB, Constant nodes instead of initializers, opset 11 and
the newest onnx knows, symbolic dims, several inputs and outputs, external data.

Every builder returns a checked ``onnx.ModelProto`` whose output shapes come from ONNX shape
inference (no intermediate value_info, as most exporters write them). Weights are seeded
N(0, 1/fan_in), so activations stay O(1) through a chain; BatchNorms are far from the identity.
``feeds(model)`` gives seeded inputs for any builder's graph.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NEWEST = onnx.defs.onnx_opset_version()
OPSETS = (11, NEWEST)
FLOAT = TensorProto.FLOAT


class Builder:
    """Accumulates nodes and initializers with fresh names and a seeded generator."""

    def __init__(self, seed: int = 0, opset: int = NEWEST):
        self.rng = np.random.default_rng(seed)
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, arr, stem: str = "c") -> str:
        name = self.name(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def ints(self, values, stem: str = "i") -> str:
        return self.const(np.asarray(values, np.int64), stem)

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> str:
        outs = [self.name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self.name(op_type), **attrs))
        return outs[0]

    def weight(self, *shape, fan_in: int | None = None) -> np.ndarray:
        fan = fan_in or math.prod(shape[1:]) or 1
        return (self.rng.standard_normal(shape) / math.sqrt(fan)).astype(np.float32)

    # -- layers ------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k=3, *, stride=1, dilation=1, groups=1, pads=None,
             auto_pad: str | None = None, bias: bool = True) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        w = self.const(self.weight(cout, cin // groups, kh, kw), "w")
        inputs = [x, w] + ([self.const(self.weight(cout, fan_in=1) * 0.5, "b")] if bias else [])
        attrs = dict(kernel_shape=[kh, kw], strides=_pair(stride), dilations=_pair(dilation), group=groups)
        if auto_pad is not None:
            attrs["auto_pad"] = auto_pad
        elif pads is not None:
            attrs["pads"] = _pads(pads)
        return self.op("Conv", inputs, **attrs)

    def conv_transpose(self, x: str, cin: int, cout: int, k=2, *, stride=2, pads=None, output_padding=None,
                       bias: bool = True) -> str:
        w = self.const(self.weight(cin, cout, k, k), "w")
        inputs = [x, w] + ([self.const(self.weight(cout, fan_in=1) * 0.5, "b")] if bias else [])
        attrs = {"kernel_shape": [k, k], "strides": _pair(stride)}
        if pads is not None:
            attrs["pads"] = _pads(pads)
        if output_padding is not None:
            attrs["output_padding"] = _pair(output_padding)
        return self.op("ConvTranspose", inputs, **attrs)

    def batchnorm(self, x: str, c: int) -> str:
        scale = (self.rng.random(c) + 0.5).astype(np.float32)
        shift = (self.rng.standard_normal(c) * 0.5).astype(np.float32)
        mean = (self.rng.standard_normal(c) * 0.5).astype(np.float32)
        var = (self.rng.random(c) * 1.5 + 0.5).astype(np.float32)
        names = [self.const(a, s) for a, s in ((scale, "gamma"), (shift, "beta"), (mean, "mean"), (var, "var"))]
        attrs = {"epsilon": 1e-3}
        if self.opset < 14:
            attrs["momentum"] = 0.9  # as torch.onnx and tf2onnx write it
        return self.op("BatchNormalization", [x, *names], **attrs)

    def channel(self, c: int, *, positive=False, rank=4) -> np.ndarray:
        v = self.rng.random(c) + 0.5 if positive else self.rng.standard_normal(c)
        return v.astype(np.float32).reshape((c,) + (1,) * (rank - 2))

    def pad(self, x: str, pads, value: float = 0.0, mode: str = "constant") -> str:
        """Pad with pads ``[top, left, bottom, right]`` on a 4-D NCHW tensor, as input (opset >= 11)."""
        t, l_, b, r = pads
        p = self.ints([0, 0, t, l_, 0, 0, b, r], "pads")
        inputs = [x, p] + ([self.const(np.array(value, np.float32), "value")] if value != 0.0 else [])
        return self.op("Pad", inputs, mode=mode)

    def slice(self, x: str, starts, ends, axes, steps=None) -> str:
        ins = [x, self.ints(starts), self.ints(ends), self.ints(axes)]
        if steps is not None:
            ins.append(self.ints(steps))
        return self.op("Slice", ins)

    def gemm(self, x: str, n_in: int, n_out: int, *, alpha=1.0, beta=1.0, trans_b=1, bias_shape="N") -> str:
        w = self.weight(n_out, n_in)
        ins = [x, self.const(w if trans_b else np.ascontiguousarray(w.T), "w")]
        if bias_shape is not None:
            b = self.weight(n_out, fan_in=1) * 0.5
            ins.append(self.const(b if bias_shape == "N" else b.reshape(1, n_out), "b"))
        attrs = {"transB": trans_b}
        if alpha != 1.0:
            attrs["alpha"] = alpha
        if beta != 1.0:
            attrs["beta"] = beta
        return self.op("Gemm", ins, **attrs)

    def matmul_add(self, x: str, n_in: int, n_out: int) -> str:
        """Keras/tf2onnx's Dense: MatMul by a [in, out] constant, then Add of a [out] bias."""
        y = self.op("MatMul", [x, self.const(self.weight(n_out, n_in).T.copy(), "kernel")])
        return self.op("Add", [y, self.const(self.weight(n_out, fan_in=1) * 0.5, "bias")])

    # -- finishing -----------------------------------------------------------------------
    def model(self, inputs, outputs, *, metadata: dict | None = None, value_info: bool = False,
              ir_version: int | None = None, constant_nodes: bool = False, doc: str = "") -> onnx.ModelProto:
        """``inputs``: (name, shape) or (name, shape, elem type); ``outputs``: names (float32) or
        (name, elem type)."""
        ins = [helper.make_tensor_value_info(i[0], i[2] if len(i) > 2 else FLOAT, list(i[1])) for i in inputs]
        outs = [helper.make_tensor_value_info(*((o, FLOAT) if isinstance(o, str) else o), None) for o in outputs]
        g = helper.make_graph(self.nodes, "graph", ins, outs, initializer=self.inits, doc_string=doc)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)], producer_name="graphs.py",
                              ir_version=ir_version or (7 if self.opset <= 12 else 8 if self.opset <= 18 else 10))
        for k, v in (metadata or {}).items():
            m.metadata_props.add(key=k, value=v)
        m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
        if not value_info:
            del m.graph.value_info[:]
        if constant_nodes:
            m = as_constant_nodes(m)
        onnx.checker.check_model(m, full_check=True)
        return m


def _pair(v):
    return [v, v] if isinstance(v, int) else list(v)


def _pads(p):
    """``p``: an int, (h, w) or (top, left, bottom, right) -> ONNX [top, left, bottom, right]."""
    if isinstance(p, int):
        return [p] * 4
    if len(p) == 2:
        return [p[0], p[1], p[0], p[1]]
    return list(p)


def as_constant_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with every initializer written as a Constant node (as some exporters do)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = [helper.make_node("Constant", [], [t.name], value=t, name=f"Constant_{t.name}") for t in m.graph.initializer]
    del m.graph.initializer[:]
    nodes = consts + list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def with_external_data(model: onnx.ModelProto, folder: Path, name: str = "model.onnx") -> Path:
    """Saved with every tensor in one external file ``<name>.data``; returns the .onnx path."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    path = Path(folder) / name
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{name}.data", size_threshold=0)
    return path


def input_shapes(model: onnx.ModelProto, batch: int = 2, sizes: dict | None = None) -> dict[str, tuple[int, ...]]:
    """Concrete shapes of the graph's inputs: a symbolic first dim becomes ``batch``, other symbolic
    dims take ``sizes[dim_param]``."""
    init = {t.name for t in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        dims = []
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_value"):
                dims.append(d.dim_value)
            elif i == 0:
                dims.append(batch)
            else:
                dims.append((sizes or {})[d.dim_param])
        out[vi.name] = tuple(dims)
    return out


_NP = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64, TensorProto.FLOAT16: np.float16}


def feeds(model: onnx.ModelProto, batch: int = 2, seed: int = 0, sizes: dict | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in model.graph.input}
    return {n: rng.standard_normal(s).astype(_NP[types[n]]) for n, s in input_shapes(model, batch, sizes).items()}


# ---------------------------------------------------------------------------------------
# The graphs


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """One conv of a chain: output channels, kernel, stride, dilation, groups, pads, auto_pad, bias."""

    out: int
    k: int | tuple[int, int] = 3
    stride: int | tuple[int, int] = 1
    dilation: int | tuple[int, int] = 1
    groups: int = 1
    pads: int | tuple = 0
    auto_pad: str | None = None
    bias: bool = True


def conv_chain(specs: Sequence[ConvSpec], cin: int = 4, size=(10, 9), *, opset: int = NEWEST, batch="N",
               seed: int = 0, constant_nodes: bool = False, between: str | None = None) -> onnx.ModelProto:
    """x -> conv -> conv -> ... (``between``: an op name put between every pair, e.g. "Relu")."""
    b = Builder(seed, opset)
    y, c = "x", cin
    for i, s in enumerate(specs):
        if i and between:
            y = b.op(between, [y])
        y = b.conv(y, c, s.out, s.k, stride=s.stride, dilation=s.dilation, groups=s.groups, pads=s.pads,
                   auto_pad=s.auto_pad, bias=s.bias)
        c = s.out
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, cin, *size])], ["y"], constant_nodes=constant_nodes)


# An ExpandNets CL expansion of one unpadded 3x3 conv (4 -> 6 channels, rate 4): 1x1 -> 3x3 -> 1x1.
CL_CHAIN = (ConvSpec(16, 1, pads=0), ConvSpec(24, 3, pads=0), ConvSpec(6, 1, pads=0))
CK_CHAIN = (ConvSpec(8, 3, pads=2), ConvSpec(8, 3), ConvSpec(6, 3))  # a 7x7 "same" conv as three 3x3s


def gemm_chain(*, alpha=1.0, beta=1.0, trans_b=1, bias_shape="N", opset=NEWEST, batch="N", seed=0,
               constant_nodes=False) -> onnx.ModelProto:
    """x[N, 12] -> Gemm(12 -> 48) -> Gemm(48 -> 5), both with the given attributes."""
    b = Builder(seed, opset)
    y = b.gemm("x", 12, 48, alpha=alpha, beta=beta, trans_b=trans_b, bias_shape=bias_shape)
    y = b.gemm(y, 48, 5, alpha=alpha, beta=beta, trans_b=trans_b, bias_shape=bias_shape)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 12])], ["y"], constant_nodes=constant_nodes)


def keras_dense(*, opset=NEWEST, batch="N", seed=0, rank=2) -> onnx.ModelProto:
    """tf2onnx's Dense layers: MatMul + Add, twice (rank 3: a [N, T, F] sequence input)."""
    b = Builder(seed, opset)
    y = b.matmul_add("x", 10, 40)
    y = b.matmul_add(y, 40, 7)
    b.nodes[-1].output[0] = "y"
    shape = [batch, 10] if rank == 2 else [batch, 3, 10]
    return b.model([("x", shape)], ["y"])


def conv_bn_chain(*, opset=NEWEST, batch="N", seed=0) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Conv(1x1) -> BatchNormalization (an unmerged export)."""
    b = Builder(seed, opset)
    y = b.batchnorm(b.conv("x", 3, 8, 3, pads=1, bias=False), 8)
    y = b.batchnorm(b.conv(y, 8, 5, 1, bias=True), 5)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 9, 9])], ["y"])


def conv_transpose_bn(*, k=3, stride=2, pads=None, output_padding=None, bias=False, then_1x1=False, opset=NEWEST,
                      batch="N", seed=0) -> onnx.ModelProto:
    """ConvTranspose -> BatchNormalization (-> Conv 1x1): an upsampling layer as exported."""
    b = Builder(seed, opset)
    y = b.batchnorm(b.conv_transpose("x", 3, 6, k, stride=stride, pads=pads, output_padding=output_padding,
                                     bias=bias), 6)
    if then_1x1:
        y = b.conv(y, 6, 4, 1)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 5, 6])], ["y"])


def mul_add_bn(*, opset=NEWEST, batch="N", seed=0, sub: bool = False) -> onnx.ModelProto:
    """BatchNorm as exporters fold it into elementwise ops: Conv -> Mul[C,1,1] -> Add[C,1,1]
    (``sub``: Sub of the shift) -> Conv."""
    b = Builder(seed, opset)
    y = b.conv("x", 3, 8, 3, pads=1)
    y = b.op("Mul", [y, b.const(b.channel(8, positive=True), "bn_scale")])
    y = b.op("Sub" if sub else "Add", [y, b.const(b.channel(8), "bn_shift")])
    y = b.conv(y, 8, 4, 1)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 8, 8])], ["y"])


def elementwise(op: str, operand: str = "channel", const_first: bool = False, *, opset=NEWEST, batch="N",
                seed=0) -> onnx.ModelProto:
    """Conv -> ``op`` with a constant (``operand``: "scalar" [], "one" [1], or "channel" [C,1,1];
    ``const_first``: the constant is the first operand) -> Conv."""
    b = Builder(seed, opset)
    y = b.conv("x", 3, 6, 3, pads=0)
    if operand == "scalar":
        value = np.array(1.7 if op in ("Mul", "Div") else 0.6, np.float32)
    elif operand == "one":
        value = np.array([1.7 if op in ("Mul", "Div") else 0.6], np.float32)
    else:
        value = b.channel(6, positive=op in ("Mul", "Div"))
    c = b.const(value, "k")
    y = b.op(op, [c, y] if const_first else [y, c])
    y = b.conv(y, 6, 4, 3)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 9, 9])], ["y"])


def pad_chain(value: float = 0.0, *, opset=NEWEST, batch="N", seed=0, pads=(1, 2, 1, 0),
              bias_first: bool = False) -> onnx.ModelProto:
    """Pad (constant mode, ``value``) -> Conv 3x3 -> Conv 3x3 (no padding on the convs), the
    pads given as an input. With ``bias_first`` a biased 1x1 conv comes before the pad, so only a
    pad of the value that conv answers to zero would be exact (none is: it is per channel)."""
    b = Builder(seed, opset)
    y = "x"
    if bias_first:
        y = b.conv(y, 3, 3, 1, bias=True)
    y = b.pad(y, pads, value)
    y = b.conv(y, 3, 8, 3)
    y = b.conv(y, 8, 4, 3)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 8, 8])], ["y"])


def avgpool_chain(count_include_pad: int = 1, pads: int = 0, *, opset=NEWEST, batch="N", seed=0,
                  kernel=2, stride=2, bias: bool = False) -> onnx.ModelProto:
    """Conv 1x1 (3 -> 16, ``bias``) -> AveragePool(kernel, stride, pads, count_include_pad) ->
    Conv 1x1 (16 -> 4): merged, one strided 3 -> 4 conv, which pays. The pooling's zero padding is
    what the merged conv sees only after a bias-free conv and with count_include_pad=1."""
    b = Builder(seed, opset)
    y = b.conv("x", 3, 16, 1, bias=bias)
    attrs = dict(kernel_shape=[kernel, kernel], strides=[stride, stride], count_include_pad=count_include_pad)
    if pads:
        attrs["pads"] = [pads] * 4
    y = b.op("AveragePool", [y], **attrs)
    y = b.conv(y, 16, 4, 1)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 10, 10])], ["y"])


def identities(*, opset=NEWEST, batch="N", seed=0) -> onnx.ModelProto:
    """Conv -> Identity -> Dropout (inference) -> Conv -> Dropout with a ratio (an input from
    opset 12, an attribute before)."""
    b = Builder(seed, opset)
    y = b.conv("x", 3, 8, 3)
    y = b.op("Identity", [y])
    y = b.op("Dropout", [y])
    y = b.conv(y, 8, 4, 3)
    if opset >= 12:  # the ratio became an input in opset 12
        y = b.op("Dropout", [y, b.const(np.array(0.3, np.float32), "ratio")])
    else:
        y = b.op("Dropout", [y], ratio=0.3)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 9, 9])], ["y"])


def flatten_gemm(kind: str = "Flatten", *, opset=NEWEST, batch="N", seed=0) -> onnx.ModelProto:
    """Conv -> Flatten (or Reshape to [N, -1] / [-1, C*H*W]) -> Gemm -> Gemm: a classifier head."""
    b = Builder(seed, opset)
    y = b.conv("x", 3, 4, 3)  # [N, 4, 4, 4]
    if kind == "Flatten":
        y = b.op("Flatten", [y], axis=1)
    elif kind == "Reshape":
        y = b.op("Reshape", [y, b.ints([0, -1], "shape")])
    else:
        y = b.op("Reshape", [y, b.ints([-1, 64], "shape")])
    y = b.gemm(y, 64, 32)
    y = b.gemm(y, 32, 5)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 6, 6])], ["y"])


def nhwc_transposes(*, opset=NEWEST, batch="N", seed=0, n_convs: int = 2) -> onnx.ModelProto:
    """tf2onnx's layout: the input is NHWC; each Conv sits between Transpose(0,3,1,2) and
    Transpose(0,2,3,1), so every pair between two convs cancels."""
    b = Builder(seed, opset)
    y, c = "x", 3
    for i in range(n_convs):
        y = b.op("Transpose", [y], perm=[0, 3, 1, 2])
        out = 12 if i < n_convs - 1 else 5
        y = b.conv(y, c, out, 3 if i == 0 else 1, pads=1 if i == 0 else 0)
        y = b.op("Transpose", [y], perm=[0, 2, 3, 1])
        c = out
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 7, 7, 3])], ["y"])


def slices(kind: str = "channels", *, opset=NEWEST, batch="N", seed=0) -> onnx.ModelProto:
    """Conv -> Slice -> Conv. ``channels``: a channel range; ``crop``: an ACNet-style spatial crop
    of H and W in one Slice (1:-1 on H, 1: on W), ``crop_h``: of H alone (1:-1); ``strided``: every
    second row."""
    b = Builder(seed, opset)
    y = b.conv("x", 3, 8, 3)  # [N, 8, 8, 8]
    if kind == "channels":
        y = b.slice(y, [2], [7], [1])
        c = 5
    elif kind == "crop":
        y = b.slice(y, [1, 1], [-1, 100], [2, 3])
        c = 8
    elif kind == "crop_h":
        y = b.slice(y, [1], [-1], [2])
        c = 8
    else:
        y = b.slice(y, [0], [8], [2], [2])
        c = 8
    y = b.conv(y, c, 4, 3)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 10, 10])], ["y"])


def concat_branches(*, opset=NEWEST, batch="N", seed=0) -> onnx.ModelProto:
    """Two 3x3 convs of one tensor concatenated along channels, then a 1x1 conv (DBB IV)."""
    b = Builder(seed, opset)
    a = b.conv("x", 4, 6, 3, pads=1)
    c = b.conv("x", 4, 5, 3, pads=1, dilation=1)
    y = b.op("Concat", [a, c], axis=1)
    y = b.conv(y, 11, 3, 1)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 4, 7, 7])], ["y"])


def repvgg_block(*, opset=NEWEST, batch="N", seed=0, act: str | None = "Relu", acnet: bool = False) -> onnx.ModelProto:
    """RepVGG: 3x3 conv + BN, 1x1 conv + BN and a BN of the input, summed (then ``act``). With
    ``acnet`` also ACNet's 1x3 and 3x1 branches, each with its BN."""
    b = Builder(seed, opset)
    c = 6
    branches = [b.batchnorm(b.conv("x", c, c, 3, pads=1, bias=False), c),
                b.batchnorm(b.conv("x", c, c, 1, bias=False), c),
                b.batchnorm("x", c)]
    if acnet:
        branches.append(b.batchnorm(b.conv("x", c, c, (1, 3), pads=(0, 1), bias=False), c))
        branches.append(b.batchnorm(b.conv("x", c, c, (3, 1), pads=(1, 0), bias=False), c))
    y = branches[0]
    for other in branches[1:]:
        y = b.op("Add", [y, other])
    if act:
        y = b.op(act, [y])
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, c, 8, 8])], ["y"])


def sum_node(*, opset=NEWEST, batch="N", seed=0) -> onnx.ModelProto:
    """Three parallel convs of one tensor summed by one variadic Sum node."""
    b = Builder(seed, opset)
    parts = [b.conv("x", 4, 5, 3, pads=1), b.conv("x", 4, 5, 1), b.conv("x", 4, 5, (1, 3), pads=(0, 1))]
    b.op("Sum", parts)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 4, 6, 6])], ["y"])


BOUNDARY_OPS = ("Relu", "Sigmoid", "Square")


def boundary(op: str = "Relu", *, opset=NEWEST, batch="N", seed=0) -> onnx.ModelProto:
    """conv -> conv -> ``op`` -> conv -> conv: the op is not affine and splits the chain in two.
    ``Square`` is written as Mul of the tensor with itself."""
    b = Builder(seed, opset)
    y = b.conv("x", 3, 12, 1)
    y = b.conv(y, 12, 6, 3)
    y = b.op("Mul", [y, y]) if op == "Square" else b.op(op, [y])
    y = b.conv(y, 6, 12, 1)
    y = b.conv(y, 12, 4, 3)
    b.nodes[-1].output[0] = "y"
    return b.model([("x", [batch, 3, 9, 9])], ["y"])


METADATA = {"author": "graphs.py", "framework": "tf2onnx-like", "classes": "a,b,c"}


def multi_io(*, opset=NEWEST, batch="batch", seed=0) -> onnx.ModelProto:
    """Two inputs, three outputs in an order unlike the node order, a float16 output, a symbolic
    batch shared by the inputs and a symbolic width, and metadata_props:

    image [batch, 3, 8, W] -> conv -> conv -> "features" (float32) and, through Cast, "features16"
    (float16); aux [batch, 6] -> Gemm -> Gemm -> "logits".
    """
    b = Builder(seed, opset)
    y = b.conv("image", 3, 12, 1)
    y = b.conv(y, 12, 4, 3)
    b.nodes[-1].output[0] = "features"
    b.op("Cast", ["features"], to=TensorProto.FLOAT16)
    b.nodes[-1].output[0] = "features16"
    z = b.gemm("aux", 6, 24)
    b.gemm(z, 24, 3)
    b.nodes[-1].output[0] = "logits"
    return b.model([("image", [batch, 3, 8, "W"]), ("aux", [batch, 6])],
                   ["logits", "features", ("features16", TensorProto.FLOAT16)], metadata=METADATA)


def nan_weights(*, opset=NEWEST) -> onnx.ModelProto:
    """A conv chain whose second weight holds a NaN."""
    m = conv_chain(CL_CHAIN, opset=opset)
    t = m.graph.initializer[2]
    arr = numpy_helper.to_array(t).copy()
    arr.flat[3] = np.nan
    t.CopyFrom(numpy_helper.from_array(arr, t.name))
    return m


def ops_of(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def count(model: onnx.ModelProto, *ops: str) -> int:
    return sum(n.op_type in ops for n in model.graph.node)


LAYER_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
