"""Write a compact fx graph to ONNX directly, one ONNX node (or a few) per graph node.

The graph the converter hands to the exporter is already an ATen graph (captured by torch.export)
plus the merged layers (``nn.Conv*d``, ``nn.ConvTranspose*d``, ``nn.Linear``, ``nn.Sequential`` of
them behind a constant pad). ``torch.onnx.export``'s dynamo path would export it again and run ATen
decompositions over it: seconds to minutes for a graph of Conv, Gemm, ReLU, Add and pooling. This
writer maps those ops to their ONNX operators with ``onnx.helper`` instead. It writes only ops
whose ONNX form is the same computation (shapes, paddings and attributes read off the graph);
anything else raises ``Unsupported`` naming the op, and ``onnx_export`` then falls back to
torch.onnx.export and says so. Like every exporter there, its output is checked against PyTorch on
ONNX Runtime before it is written.

The batch stays symbolic ("batch") with ``dynamic_batch``; reshapes carry it as ``0`` (copy the
input's dimension) or ``-1``. Graphs with symbolic spatial sizes (``--dynamic-hw``) are left to
torch.onnx.export.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx, nn

from compactify.registry import Registry

aten = torch.ops.aten
BATCH = "batch"


class Unsupported(Exception):
    """An op (or a form of it) this writer does not write; the message names it."""


# A graph node's target -> ``handler(writer, node, *node.args, **node.kwargs)``, which emits the
# ONNX nodes and returns the name of the value (a list of names for ops with several outputs).
WRITER_OPS: Registry[Callable] = Registry("ONNX writer op")


def to_onnx(gm: fx.GraphModule, example: Sequence[torch.Tensor], input_names: Sequence[str],
            output_names: Sequence[str], opset: int, dynamic_batch: bool) -> onnx.ModelProto:
    """The ONNX model computing ``gm``; raises Unsupported for an op it does not write."""
    return _Writer(gm, list(example), list(input_names), list(output_names), opset, dynamic_batch).write()


def unwritten_ops(gm: fx.GraphModule) -> set[str]:
    """The ops of ``gm`` that no writer takes. A form of an op its writer refuses (a mode, a dtype) shows
    only when the graph is written; this is the cheap check of which ops a model needs."""
    return {str(n.target) for n in gm.graph.nodes
            if n.op == "call_function" and n.target not in WRITER_OPS and not _is_size_check(n.target)}


def _is_size_check(target) -> bool:
    return getattr(target, "__name__", "") == "check_spatial_size"


def _static(d) -> int | None:
    return d if isinstance(d, int) else None


class _Writer:
    def __init__(self, gm, example, input_names, output_names, opset, dynamic_batch):
        self.gm, self.example, self.opset, self.dynamic = gm, example, opset, dynamic_batch
        self.input_names, self.output_names = input_names, output_names
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.env: dict[fx.Node, Any] = {}
        self.batch_sym: str | None = None
        self._taken: set[str] = set(input_names) | set(output_names)
        self._counter = 0

    # ----------------------------------------------------------------- plumbing

    def fresh(self, base: str) -> str:
        base = "".join(c if c.isalnum() or c in "_." else "_" for c in base) or "v"
        name = base
        while name in self._taken:
            self._counter += 1
            name = f"{base}_{self._counter}"
        self._taken.add(name)
        return name

    def const(self, value, base: str = "const", dtype=np.float32) -> str:
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
        return name

    def tensor_init(self, tensor: torch.Tensor, base: str) -> str:
        array = tensor.detach().cpu().numpy()
        if array.dtype == np.float64:
            raise Unsupported(f"float64 constant {base}")
        name = self.fresh(base)
        self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def emit(self, op: str, inputs: Sequence[str], base: str, outputs: int = 1, **attrs) -> list[str]:
        outs = [self.fresh(base if outputs == 1 else f"{base}_{i}") for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), outs, name=self.fresh(f"{op}_{base}"), **attrs))
        return outs

    def val(self, arg) -> str:
        if not isinstance(arg, fx.Node):
            raise Unsupported(f"a literal {type(arg).__name__} where a tensor was expected")
        value = self.env[arg]
        if not isinstance(value, str):
            raise Unsupported(f"{arg.name} is not a single tensor")
        return value

    def operand(self, arg, base: str) -> str:
        """A tensor input, or a Python number as a float32 scalar constant."""
        if isinstance(arg, (bool, int, float)) and not isinstance(arg, bool):
            return self.const(float(arg), f"{base}_scalar")
        return self.val(arg)

    def shape(self, node) -> tuple | None:
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        return tuple(val.shape) if isinstance(val, torch.Tensor) else None

    def rank(self, node) -> int:
        shape = self.shape(node)
        if shape is None:
            raise Unsupported(f"the rank of {node.name} is unknown")
        return len(shape)

    def static_shape(self, node) -> list[int]:
        """``node``'s shape, every dimension a number; a symbolic one (the batch) is refused."""
        shape = self.shape(node)
        if shape is None or any(_static(d) is None for d in shape):
            raise Unsupported(f"{node.name} needs a static shape, has {shape}")
        return [int(d) for d in shape]

    def spatial(self, node) -> list[int]:
        """The sizes after batch and channels (static: the writer refuses --dynamic-hw graphs)."""
        shape = self.shape(node)
        if shape is None or any(_static(d) is None for d in shape[2:]):
            raise Unsupported(f"{node.name} needs static spatial sizes, has {shape}")
        return [int(d) for d in shape[2:]]

    def dtype(self, node) -> torch.dtype:
        dtype = self.known_dtype(node)
        if dtype is None:
            raise Unsupported(f"the dtype of {getattr(node, 'name', node)} is unknown")
        return dtype

    def known_dtype(self, node) -> torch.dtype | None:
        if isinstance(node, fx.Node) and node.target is aten.item.default:  # written as its 0-d tensor
            node = node.args[0]
        val = node.meta.get("val") if isinstance(node, fx.Node) else None
        return val.dtype if isinstance(val, torch.Tensor) else None

    def onnx_dtype(self, node) -> int:
        return _onnx_type(self.dtype(node))

    # ----------------------------------------------------------------- graph

    def write(self) -> onnx.ModelProto:
        placeholders = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != len(self.input_names) or len(self.example) != len(placeholders):
            raise Unsupported(f"{len(placeholders)} graph inputs for {len(self.input_names)} input names")
        inputs = []
        for node, name, x in zip(placeholders, self.input_names, self.example):
            shape = self.shape(node)
            if shape is None:
                raise Unsupported(f"input {node.name} has no recorded shape")
            if any(_static(d) is None for d in shape[1:]):
                raise Unsupported("symbolic spatial sizes (--dynamic-hw)")
            if self.dynamic:
                if _static(shape[0]) is not None:
                    raise Unsupported("the graph was captured with a static batch")
                self.batch_sym = str(shape[0])
            dims = [BATCH if self.dynamic else int(x.shape[0]), *[int(d) for d in x.shape[1:]]]
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
            self.env[node] = name
        for node in self.gm.graph.nodes:
            if node.op in ("placeholder", "output"):
                continue
            if node.op == "get_attr":
                value = _fetch(self.gm, node.target)
                if not isinstance(value, torch.Tensor):
                    raise Unsupported(f"attribute {node.target} is not a tensor")
                self.env[node] = self.tensor_init(value, node.name)
            elif node.op == "call_module":
                if str(node.target) == "_guards_fn":
                    continue
                if len(node.args) != 1 or node.kwargs:
                    raise Unsupported(f"layer {node.target} called with more than its input")
                shape = self.shape(node.args[0])
                self.env[node] = self.module(self.gm.get_submodule(node.target), self.val(node.args[0]), node.name,
                                             len(shape) if shape is not None else None)
            elif node.op == "call_function":
                self.env[node] = self.function(node)
            else:
                raise Unsupported(f"{node.op} {node.target}")
        outputs = self.outputs(next(n for n in self.gm.graph.nodes if n.op == "output"))
        graph = helper.make_graph(self.nodes, "compact", inputs, outputs, list(self.inits.values()))
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="compactify.fx_onnx")
        model.ir_version = min(model.ir_version, 10)  # what current ONNX Runtime releases read
        return model

    def outputs(self, node: fx.Node) -> list[onnx.ValueInfoProto]:
        results = node.args[0]
        flat = list(results) if isinstance(results, (tuple, list)) else [results]
        if len(flat) != len(self.output_names):
            raise Unsupported(f"{len(flat)} outputs for {len(self.output_names)} output names")
        infos, graph_inputs = [], set(self.input_names)
        for value, name in zip(flat, self.output_names):
            source = self.val(value)
            # Every output gets its own name: rename the node that makes it, unless that value is
            # also an input or read elsewhere, where an Identity keeps both names.
            producer = next((n for n in self.nodes if source in n.output), None)
            readers = sum(source in n.input for n in self.nodes) + sum(self.val(v) == source for v in flat) - 1
            if producer is None or source in graph_inputs or readers:
                self.nodes.append(helper.make_node("Identity", [source], [name], name=self.fresh(f"Identity_{name}")))
            else:
                producer.output[list(producer.output).index(source)] = name
            infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, self.dims(value)))
        return infos

    def dims(self, node) -> list | None:
        shape = self.shape(node)
        if shape is None:
            return None
        return [d if _static(d) is not None else (BATCH if str(d) == self.batch_sym else str(d)) for d in shape]

    # ----------------------------------------------------------------- modules

    def module(self, m: nn.Module, x: str, base: str, rank: int | None) -> str:
        """The layer ``m`` on ``x`` (of ``rank`` dimensions, None if unknown; layers here keep it)."""
        if isinstance(m, nn.Sequential):
            for i, child in enumerate(m):
                x = self.module(child, x, f"{base}_{i}", rank)
            return x
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise Unsupported(f"{type(m).__name__} with padding {m.padding!r} ({m.padding_mode})")
            return self.conv(x, *self.layer_params(m, base), m.stride, m.padding, m.dilation, m.groups,
                             m.weight.shape[2:], base)
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            if m.padding_mode != "zeros":
                raise Unsupported(f"{type(m).__name__} with padding_mode {m.padding_mode!r}")
            return self.conv_transpose(x, *self.layer_params(m, base), m.stride, m.padding, m.output_padding,
                                       m.dilation, m.groups, m.weight.shape[2:], base)
        if isinstance(m, nn.Linear):
            w = self.tensor_init(m.weight, f"{base}.weight")
            b = self.tensor_init(m.bias, f"{base}.bias") if m.bias is not None else None
            return self.linear(x, w, b, rank, base)
        if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            return self.pad(x, list(m.padding), float(m.value), base)
        raise Unsupported(f"layer {type(m).__name__}")

    def layer_params(self, m: nn.Module, base: str) -> tuple[str, list[str]]:
        """A conv layer's weight, and its bias as a list of none or one."""
        w = self.tensor_init(m.weight, f"{base}.weight")
        return w, [self.tensor_init(m.bias, f"{base}.bias")] if m.bias is not None else []

    def conv(self, x, w, b, stride, padding, dilation, groups, kernel, base) -> str:
        return self.emit("Conv", [x, w, *b], base, **_conv_attrs(kernel, stride, padding, dilation, groups))[0]

    def conv_transpose(self, x, w, b, stride, padding, output_padding, dilation, groups, kernel, base) -> str:
        """PyTorch's and ONNX's transposed convs agree on the weight layout ([in, out/groups, k...]),
        the output size and what output_padding adds (rows at the end of each axis)."""
        return self.emit("ConvTranspose", [x, w, *b], base, **_conv_attrs(kernel, stride, padding, dilation, groups),
                         output_padding=[int(p) for p in _per_dim(output_padding, len(kernel))])[0]

    def linear(self, x, w, b, x_rank, base) -> str:
        """``x @ w.T + b``: Gemm for a matrix input, MatMul (+ Add) otherwise."""
        if x_rank == 2:
            return self.emit("Gemm", [x, w] + ([b] if b else []), base, transB=1)[0]
        wt = self.emit("Transpose", [w], f"{base}_wT", perm=[1, 0])[0]
        y = self.emit("MatMul", [x, wt], f"{base}_matmul" if b else base)[0]
        return self.emit("Add", [y, b], base)[0] if b else y

    def pad(self, x, torch_pads: Sequence[int], value: float | None, base: str, mode: str = "constant") -> str:
        """torch's pad list (last axis first, before/after pairs) on the trailing axes; ``mode`` is
        ONNX's (constant, reflect, edge, wrap), ``value`` only for constant."""
        if any(isinstance(p, fx.Node) for p in torch_pads):
            raise Unsupported("padding by a computed amount")
        k = len(torch_pads) // 2
        before = [int(torch_pads[2 * (k - 1 - i)]) for i in range(k)]
        after = [int(torch_pads[2 * (k - 1 - i) + 1]) for i in range(k)]
        if any(p < 0 for p in before + after):
            raise Unsupported("negative padding (a crop)")
        value_input = self.const(float(value or 0.0), f"{base}_value") if mode == "constant" else ""
        return self.emit("Pad", [x, self.const(before + after, f"{base}_pads", np.int64), value_input,
                                 self.const(list(range(-k, 0)), f"{base}_axes", np.int64)], base, mode=mode)[0]

    def group_norm(self, node, x, groups: int, weight, bias, eps: float) -> str:
        """Each group normalized over its channels and positions is InstanceNormalization of the
        [N, groups, -1] view (opset 18's GroupNormalization scales per group, not per channel)."""
        shape = self.shape(x)
        if shape is None or any(_static(d) is None for d in shape[1:]):
            raise Unsupported(f"group_norm of {node.name} without static channel and spatial sizes")
        channels, rest = int(shape[1]), [int(d) for d in shape[2:]]
        base = node.name
        grouped = self.emit("Reshape", [self.val(x), self.const([0, groups, -1], f"{base}_groups", np.int64)],
                            f"{base}_grouped")[0]
        normed = self.emit("InstanceNormalization", [grouped, self.const(np.ones(groups), f"{base}_ones"),
                                                     self.const(np.zeros(groups), f"{base}_zeros")],
                           f"{base}_normed", epsilon=eps)[0]
        y = self.emit("Reshape", [normed, self.const([0, channels, *rest], f"{base}_shape", np.int64)],
                      base if weight is None and bias is None else f"{base}_ungrouped")[0]
        per_channel = self.const([channels] + [1] * len(rest), f"{base}_per_channel", np.int64)
        for op, param, last in (("Mul", weight, bias is None), ("Add", bias, True)):
            if param is not None:
                column = self.emit("Reshape", [self.val(param), per_channel], f"{base}_{op.lower()}_column")[0]
                y = self.emit(op, [y, column], base if last else f"{base}_scaled")[0]
        return y

    # ----------------------------------------------------------------- functions

    def function(self, node: fx.Node):
        target = node.target
        if _is_size_check(target):  # the ONNX input has the same fixed height and width
            return self.val(node.args[0])
        handler = WRITER_OPS.get(target)
        if handler is None:
            raise Unsupported(f"op {target}")
        return handler(self, node, *node.args, **node.kwargs)

    def reshape(self, node: fx.Node, x: fx.Node) -> str:
        """A reshape to ``node``'s recorded shape: static sizes as they are, the batch as ``0`` where
        it stays on its axis, else ``-1``."""
        out, src = self.shape(node), self.shape(x)
        if out is None or src is None:
            raise Unsupported(f"reshape {node.name} without recorded shapes")
        target, free = [], 0
        for i, d in enumerate(out):
            if _static(d) is not None:
                if d == 0:
                    raise Unsupported("a zero-size dimension")
                target.append(int(d))
            elif i < len(src) and str(src[i]) == str(d):
                target.append(0)
            else:
                free += 1
                target.append(-1)
        if free > 1:
            raise Unsupported(f"reshape {node.name} to {out}")
        return self.emit("Reshape", [self.val(x), self.const(target, f"{node.name}_shape", np.int64)], node.name)[0]


def _fetch(gm: nn.Module, target: str):
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _conv_attrs(kernel, stride, padding, dilation, groups) -> dict:
    n = len(kernel)
    pads = [int(p) for p in _per_dim(padding, n)]
    return {"kernel_shape": [int(k) for k in kernel], "strides": [int(s) for s in _per_dim(stride, n)],
            "pads": pads + pads, "dilations": [int(d) for d in _per_dim(dilation, n)], "group": int(groups)}


def _onnx_type(dtype: torch.dtype) -> int:
    try:
        return helper.np_dtype_to_tensor_dtype(torch.empty(0, dtype=dtype).numpy().dtype)
    except (TypeError, KeyError) as exc:
        raise Unsupported(f"tensors of {dtype}") from exc


def _per_dim(value, n: int) -> list:
    if isinstance(value, int):
        return [value] * n
    value = list(value)
    return value * n if len(value) == 1 else value


# --------------------------------------------------------------------------- op table

@WRITER_OPS.register(operator.getitem)
def _getitem(w, node, source, index):
    """One output of an op that has several (written as a list of names, None where unwritten)."""
    values = w.env[source]
    if not isinstance(values, list):
        raise Unsupported(f"getitem on {source.name}")
    value = values[index]
    if value is None:
        raise Unsupported(f"output {index} of {source.name}")
    return value


@WRITER_OPS.register(aten._assert_tensor_metadata.default)
def _metadata_assert(w, node, *args, **kwargs):
    """A dtype/shape check of the captured graph: the ONNX graph's types state the same, so no node."""
    return None


@WRITER_OPS.register(aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)
def _conv(w: _Writer, node, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if isinstance(padding, str):
        raise Unsupported(f"{node.target} with padding {padding!r}")
    kernel = w.shape(weight)
    if kernel is None:
        raise Unsupported(f"{node.name}: weight shape unknown")
    b = [w.val(bias)] if bias is not None else []
    return w.conv(w.val(x), w.val(weight), b, stride, padding, dilation, groups, kernel[2:], node.name)


@WRITER_OPS.register(aten.convolution.default)
def _convolution(w, node, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        return _conv_transpose(w, node, x, weight, bias, stride, padding, output_padding, groups, dilation)
    return _conv(w, node, x, weight, bias, stride, padding, dilation, groups)


@WRITER_OPS.register(aten.conv_transpose1d.default, aten.conv_transpose2d.input, aten.conv_transpose3d.input)
def _conv_transpose(w, node, x, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    kernel = w.shape(weight)
    if kernel is None:
        raise Unsupported(f"{node.name}: weight shape unknown")
    b = [w.val(bias)] if bias is not None else []
    return w.conv_transpose(w.val(x), w.val(weight), b, stride, padding, output_padding, dilation, groups,
                            kernel[2:], node.name)


@WRITER_OPS.register(aten.linear.default)
def _linear(w, node, x, weight, bias=None):
    return w.linear(w.val(x), w.val(weight), w.val(bias) if bias is not None else None, w.rank(x), node.name)


@WRITER_OPS.register(aten.mm.default, aten.matmul.default)
def _matmul(w, node, a, b):
    return w.emit("MatMul", [w.val(a), w.val(b)], node.name)[0]


@WRITER_OPS.register(aten.addmm.default)
def _addmm(w, node, bias, a, b, beta=1, alpha=1):
    if beta != 1 or alpha != 1:
        raise Unsupported("addmm with beta/alpha")
    return w.emit("Gemm", [w.val(a), w.val(b), w.val(bias)], node.name)[0]


_UNARY = {aten.relu.default: ("Relu", {}), aten.sigmoid.default: ("Sigmoid", {}), aten.tanh.default: ("Tanh", {}),
          aten.hardswish.default: ("HardSwish", {}), aten.neg.default: ("Neg", {}),
          aten.hardsigmoid.default: ("HardSigmoid", {"alpha": 1.0 / 6.0, "beta": 0.5})}


@WRITER_OPS.register(*_UNARY)
def _unary(w, node, x, *rest, **kwargs):
    if rest or kwargs:
        raise Unsupported(f"{node.target} with arguments {rest} {kwargs}")
    op, attrs = _UNARY[node.target]
    return w.emit(op, [w.val(x)], node.name, **attrs)[0]


@WRITER_OPS.register(aten.clone.default, aten.alias.default, aten.detach.default, aten.contiguous.default,
                     aten.dropout.default)
def _identity(w, node, x, *rest, **kwargs):
    if node.target is aten.dropout.default and (rest[1:2] or [kwargs.get("train", False)])[0]:
        raise Unsupported("dropout in training mode")
    return w.val(x)


@WRITER_OPS.register(aten.clamp.default)
def _clip(w, node, x, low=None, high=None):
    inputs = [w.val(x), w.const(float(low), f"{node.name}_min") if low is not None else "",
              w.const(float(high), f"{node.name}_max") if high is not None else ""]
    while inputs[-1] == "":
        inputs.pop()
    return w.emit("Clip", inputs, node.name)[0]


@WRITER_OPS.register(aten.hardtanh.default)
def _hardtanh(w, node, x, low=-1.0, high=1.0):
    return _clip(w, node, x, low, high)


@WRITER_OPS.register(aten.relu6.default)
def _relu6(w, node, x):
    return _clip(w, node, x, 0.0, 6.0)


class _Size:
    """A number computed from the symbolic batch (``sym_size``, arithmetic on it). Reshapes take
    their target from the recorded output shape, so such a number is only ever read there; used
    as a tensor it is refused."""


@WRITER_OPS.register(aten.sym_size.int, operator.add, operator.sub, operator.mul, operator.floordiv,
                     operator.truediv)
def _size(w, node, *args, **kwargs):
    if any(isinstance(a, fx.Node) and isinstance(w.env.get(a), str) for a in node.all_input_nodes if a is not None) \
            and node.target is not aten.sym_size.int:
        raise Unsupported(f"{node.target} on a tensor")
    return _Size()


@WRITER_OPS.register(aten.leaky_relu.default)
def _leaky_relu(w, node, x, slope=0.01):
    return w.emit("LeakyRelu", [w.val(x)], node.name, alpha=float(slope))[0]


@WRITER_OPS.register(aten.silu.default)
def _silu(w, node, x):
    s = w.emit("Sigmoid", [w.val(x)], f"{node.name}_sigmoid")[0]
    return w.emit("Mul", [w.val(x), s], node.name)[0]


@WRITER_OPS.register(aten.gelu.default)
def _gelu(w, node, x, approximate="none"):
    if approximate != "none":
        raise Unsupported(f"gelu(approximate={approximate!r})")
    if w.opset >= 20:
        return w.emit("Gelu", [w.val(x)], node.name)[0]
    # 0.5 * x * (1 + erf(x / sqrt(2))), the definition torch computes
    scaled = w.emit("Div", [w.val(x), w.const(math.sqrt(2.0), f"{node.name}_sqrt2")], f"{node.name}_scaled")[0]
    erf = w.emit("Erf", [scaled], f"{node.name}_erf")[0]
    one = w.emit("Add", [erf, w.const(1.0, f"{node.name}_one")], f"{node.name}_plus1")[0]
    half = w.emit("Mul", [w.val(x), w.const(0.5, f"{node.name}_half")], f"{node.name}_half_x")[0]
    return w.emit("Mul", [half, one], node.name)[0]


_BINARY = {aten.add.Tensor: "Add", aten.sub.Tensor: "Sub", aten.mul.Tensor: "Mul"}


@WRITER_OPS.register(*_BINARY)
def _binary(w, node, a, b, alpha=1, **kwargs):
    if alpha != 1 or kwargs:
        raise Unsupported(f"{node.target} with alpha={alpha} {kwargs}")
    if not isinstance(a, fx.Node) and not isinstance(b, fx.Node):
        raise Unsupported(f"{node.target} of two numbers")
    _one_float_type(w, node, a, b)
    return w.emit(_BINARY[node.target], [w.operand(a, node.name), w.operand(b, node.name)], node.name)[0]


@WRITER_OPS.register(aten.div.Tensor)
def _div(w, node, a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise Unsupported(f"div with rounding_mode={rounding_mode!r}")
    _one_float_type(w, node, a, b)
    return w.emit("Div", [w.operand(a, node.name), w.operand(b, node.name)], node.name)[0]


def _one_float_type(w, node, *args):
    """ONNX arithmetic takes one element type and numbers are written as float32: torch's promotions
    (an integer tensor times a float) are refused, where the graph records the types."""
    types = {w.known_dtype(a) if isinstance(a, fx.Node) else torch.float32 for a in (node, *args)} - {None}
    if len(types) > 1 or types - {torch.float32}:
        raise Unsupported(f"{node.target} on {', '.join(sorted(map(str, types)))}")


def _pool_args(n, kernel, stride, padding, dilation=1):
    kernel = [int(k) for k in _per_dim(kernel, n)]
    stride = [int(s) for s in _per_dim(stride, n)] if stride not in (None, [], ()) else list(kernel)
    pads = [int(p) for p in _per_dim(padding, n)]
    return kernel, stride, pads + pads, [int(d) for d in _per_dim(dilation, n)]


@WRITER_OPS.register(aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default,
                     aten.max_pool2d_with_indices.default)
def _max_pool(w, node, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    n = w.rank(x) - 2
    k, s, p, d = _pool_args(n, kernel, stride, padding, dilation)
    y = w.val(x)
    if ceil_mode:  # only the end padding changes
        after = _end_pads(w.spatial(x), k, s, p[:n], d, True, right_padded=False)
        if all(a < size for a, size in zip(after, k)):
            p = p[:n] + after  # ONNX pads with -inf like torch
        else:  # ONNX Runtime takes pads smaller than the kernel only (a dilated window spans more)
            ends = [q for a in reversed(after) for q in (0, a)]
            y = w.pad(y, ends, -math.inf, f"{node.name}_padded")
            p = p[:n] + [0] * n
    out = w.emit("MaxPool", [y], node.name, kernel_shape=k, strides=s, pads=p, dilations=d)[0]
    return [out, None] if "with_indices" in str(node.target) else out


@WRITER_OPS.register(aten.avg_pool1d.default, aten.avg_pool2d.default, aten.avg_pool3d.default)
def _avg_pool(w, node, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    if divisor_override is not None:
        raise Unsupported("avg_pool with divisor_override")
    n = w.rank(x) - 2
    k, s, p, _ = _pool_args(n, kernel, stride, padding)
    if not ceil_mode:
        return w.emit("AveragePool", [w.val(x)], node.name, kernel_shape=k, strides=s, pads=p,
                      count_include_pad=int(bool(count_include_pad)))[0]
    return _avg_pool_ceil(w, node, x, k, s, p[:n], bool(count_include_pad))


def _avg_pool_ceil(w, node, x, k, s, p, count_include_pad) -> str:
    """torch divides a ceil-mode window by its elements inside the input and, with count_include_pad,
    its padding, never the part past the right padding. ONNX's count_include_pad=0 divides by the
    elements inside its input, so the padding torch counts is made part of that input."""
    spatial, y = w.spatial(x), w.val(x)
    if count_include_pad and any(p):
        y = w.pad(y, [q for pad in reversed(p) for q in (pad, pad)], 0.0, f"{node.name}_padded")
    after = _end_pads(spatial, k, s, p, [1] * len(k), True, right_padded=count_include_pad)
    before = [0] * len(p) if count_include_pad else list(p)
    return w.emit("AveragePool", [y], node.name, kernel_shape=k, strides=s, pads=before + after,
                  count_include_pad=0)[0]


@WRITER_OPS.register(aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default)
def _adaptive_avg_pool(w, node, x, size):
    shape = w.shape(x)
    if shape is None:
        raise Unsupported(f"{node.name}: input shape unknown")
    spatial = shape[2:]
    size = [int(s) for s in _per_dim(size, len(spatial))]
    if all(s == 1 for s in size):
        return w.emit("GlobalAveragePool", [w.val(x)], node.name)[0]
    if any(_static(d) is None or d % s for d, s in zip(spatial, size)):
        raise Unsupported(f"adaptive_avg_pool to {size} from {spatial}")
    kernel = [int(d) // s for d, s in zip(spatial, size)]
    return w.emit("AveragePool", [w.val(x)], node.name, kernel_shape=kernel, strides=kernel)[0]


_REDUCE = {aten.mean.dim: "ReduceMean", aten.sum.dim_IntList: "ReduceSum"}


@WRITER_OPS.register(*_REDUCE)
def _reduce(w, node, x, dims=None, keepdim=False, dtype=None):
    if dtype is not None:
        raise Unsupported(f"{node.target} with dtype")
    if dims is None or (isinstance(dims, (list, tuple)) and not dims):
        dims = list(range(w.rank(x)))
    dims = [int(d) for d in _per_dim(dims, 1)]
    return w.emit(_REDUCE[node.target], [w.val(x), w.const(dims, f"{node.name}_axes", np.int64)], node.name,
                  keepdims=int(bool(keepdim)))[0]


@WRITER_OPS.register(aten.flatten.using_ints, aten.view.default, aten.reshape.default, aten._unsafe_view.default,
                     aten.unflatten.int, aten.squeeze.dim, aten.squeeze.dims)
def _reshape(w, node, x, *rest, **kwargs):
    return w.reshape(node, x)


@WRITER_OPS.register(aten.cat.default)
def _cat(w, node, tensors, dim=0):
    rank = w.rank(tensors[0])
    return w.emit("Concat", [w.val(t) for t in tensors], node.name, axis=int(dim) % rank)[0]


def _split_sizes(w, node, x, dim) -> tuple[int, int]:
    shape = w.shape(x)
    if shape is None or _static(shape[dim]) is None:
        raise Unsupported(f"{node.target} along a dimension of unknown size")
    return int(shape[dim]), int(dim) % len(shape)


def _emit_split(w, node, x, sizes, axis):
    return w.emit("Split", [w.val(x), w.const(sizes, f"{node.name}_sizes", np.int64)], node.name,
                  outputs=len(sizes), axis=axis)


@WRITER_OPS.register(aten.chunk.default)
def _chunk(w, node, x, chunks, dim=0):
    size, axis = _split_sizes(w, node, x, dim)
    step = -(-size // chunks)
    sizes = [min(step, size - i) for i in range(0, size, step)]
    return _emit_split(w, node, x, sizes, axis)


@WRITER_OPS.register(aten.split.Tensor, aten.split_with_sizes.default)
def _split(w, node, x, split_size, dim=0):
    size, axis = _split_sizes(w, node, x, dim)
    if isinstance(split_size, (list, tuple)):
        return _emit_split(w, node, x, [int(s) for s in split_size], axis)
    sizes = [min(split_size, size - i) for i in range(0, size, split_size)]
    return _emit_split(w, node, x, sizes, axis)


@WRITER_OPS.register(aten.transpose.int)
def _transpose(w, node, x, a, b):
    rank = w.rank(x)
    perm = list(range(rank))
    perm[a % rank], perm[b % rank] = perm[b % rank], perm[a % rank]
    return w.emit("Transpose", [w.val(x)], node.name, perm=perm)[0]


@WRITER_OPS.register(aten.permute.default)
def _permute(w, node, x, dims):
    rank = w.rank(x)
    return w.emit("Transpose", [w.val(x)], node.name, perm=[int(d) % rank for d in dims])[0]


@WRITER_OPS.register(aten.t.default)
def _t(w, node, x):
    return w.emit("Transpose", [w.val(x)], node.name, perm=[1, 0])[0]


def _batch_norm_inputs(w, node, x, weight, bias, mean, var):
    shape = w.shape(x)
    channels = _static(shape[1]) if shape is not None and len(shape) > 1 else None
    if (weight is None or bias is None) and channels is None:
        raise Unsupported(f"{node.name}: batch norm without affine parameters and unknown channels")
    scale = w.val(weight) if weight is not None else w.const(np.ones(channels), f"{node.name}_scale")
    shift = w.val(bias) if bias is not None else w.const(np.zeros(channels), f"{node.name}_shift")
    return [w.val(x), scale, shift, w.val(mean), w.val(var)]


@WRITER_OPS.register(aten._native_batch_norm_legit_no_training.default)
def _bn_no_training(w, node, x, weight, bias, mean, var, momentum, eps):
    out = w.emit("BatchNormalization", _batch_norm_inputs(w, node, x, weight, bias, mean, var), node.name,
                 epsilon=float(eps))[0]
    return [out, None, None]


@WRITER_OPS.register(aten.batch_norm.default)
def _batch_norm(w, node, x, weight, bias, mean, var, training, momentum, eps, cudnn_enabled=True):
    if training or mean is None or var is None:
        raise Unsupported("batch norm in training mode")
    return w.emit("BatchNormalization", _batch_norm_inputs(w, node, x, weight, bias, mean, var), node.name,
                  epsilon=float(eps))[0]


@WRITER_OPS.register(aten.layer_norm.default)
def _layer_norm(w, node, x, shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    if weight is None:
        raise Unsupported("layer_norm without a weight")
    inputs = [w.val(x), w.val(weight)] + ([w.val(bias)] if bias is not None else [])
    return w.emit("LayerNormalization", inputs, node.name, axis=-len(shape), epsilon=float(eps))[0]


@WRITER_OPS.register(aten.softmax.int, aten._softmax.default)
def _softmax(w, node, x, dim, half_to_float=False):
    if half_to_float:
        raise Unsupported("softmax with half_to_float")
    return w.emit("Softmax", [w.val(x)], node.name, axis=int(dim))[0]


@WRITER_OPS.register(aten.slice.Tensor)
def _slice(w, node, x, dim=0, start=None, end=None, step=1):
    if any(isinstance(v, fx.Node) for v in (start, end, step)):
        raise Unsupported("slice with symbolic bounds")
    big = 2**63 - 1  # torch's "to the end", which ONNX Slice clamps the same way
    start = 0 if start is None else int(start)
    end = big if end is None else min(int(end), big)
    return w.emit("Slice", [w.val(x), w.const([start], f"{node.name}_starts", np.int64),
                            w.const([end], f"{node.name}_ends", np.int64),
                            w.const([int(dim)], f"{node.name}_axes", np.int64),
                            w.const([int(step)], f"{node.name}_steps", np.int64)], node.name)[0]


@WRITER_OPS.register(aten.unsqueeze.default)
def _unsqueeze(w, node, x, dim):
    return w.emit("Unsqueeze", [w.val(x), w.const([int(dim)], f"{node.name}_axes", np.int64)], node.name)[0]


@WRITER_OPS.register(aten.select.int)
def _select(w, node, x, dim, index):
    if isinstance(index, fx.Node):
        raise Unsupported("select at a computed index")
    # A 0-d index makes Gather drop the axis, as select does; negative indices count from the end in both.
    return w.emit("Gather", [w.val(x), w.const(int(index), f"{node.name}_index", np.int64)], node.name,
                  axis=int(dim) % w.rank(x))[0]


@WRITER_OPS.register(aten.unbind.int)
def _unbind(w, node, x, dim=0):
    size, axis = _split_sizes(w, node, x, dim)
    pieces = _emit_split(w, node, x, [1] * size, axis)
    axes = w.const([axis], f"{node.name}_axes", np.int64)
    return [w.emit("Squeeze", [p, axes], f"{node.name}_{i}")[0] for i, p in enumerate(pieces)]


@WRITER_OPS.register(aten.stack.default)
def _stack(w, node, tensors, dim=0):
    axis = int(dim) % (w.rank(tensors[0]) + 1)
    axes = w.const([axis], f"{node.name}_axes", np.int64)
    parts = [w.emit("Unsqueeze", [w.val(t), axes], f"{node.name}_{i}")[0] for i, t in enumerate(tensors)]
    return w.emit("Concat", parts, node.name, axis=axis)[0]


@WRITER_OPS.register(aten.index.Tensor)
def _index(w, node, x, indices):
    """``x[..., idx, ...]`` with integer index tensors (None for a full axis)."""
    axes = [i for i, t in enumerate(indices) if t is not None]
    for i in axes:
        if not isinstance(indices[i], fx.Node) or w.dtype(indices[i]) not in (torch.int64, torch.int32):
            raise Unsupported(f"index with a {getattr(indices[i], 'name', indices[i])} that is not an integer tensor")
    if len(axes) == 1:  # Gather puts the index's dimensions where the axis was, as torch does
        return w.emit("Gather", [w.val(x), w.val(indices[axes[0]])], node.name, axis=axes[0])[0]
    return _index_several(w, node, x, [indices[i] for i in axes], axes)


def _index_several(w, node, x, tensors, axes):
    """Several index tensors pick one element each from their broadcast shape: GatherND over the indexed
    axes moved to the front. torch puts the result's index dimensions first unless the indexed axes are
    adjacent, where they stay at the first one's place."""
    rank = w.rank(x)
    rest = [i for i in range(rank) if i not in axes]
    front = w.emit("Transpose", [w.val(x)], f"{node.name}_front", perm=axes + rest)[0]
    shape = list(np.broadcast_shapes(*(tuple(w.static_shape(t)) for t in tensors)))
    target = w.const(shape, f"{node.name}_shape", np.int64)
    last = w.const([-1], f"{node.name}_last", np.int64)
    columns = []
    for i, t in enumerate(tensors):
        wide = w.emit("Expand", [w.val(t), target], f"{node.name}_index{i}")[0]
        if w.dtype(t) != torch.int64:
            wide = w.emit("Cast", [wide], f"{node.name}_index{i}_int64", to=TensorProto.INT64)[0]
        columns.append(w.emit("Unsqueeze", [wide, last], f"{node.name}_index{i}_col")[0])
    where = w.emit("Concat", columns, f"{node.name}_indices", axis=-1)[0]
    adjacent = axes == list(range(axes[0], axes[-1] + 1))
    if not adjacent or axes[0] == 0:
        return w.emit("GatherND", [front, where], node.name)[0]
    picked = w.emit("GatherND", [front, where], f"{node.name}_gathered")[0]
    b = len(shape)
    perm = [b + i for i in range(axes[0])] + list(range(b)) + [b + i for i in range(axes[0], len(rest))]
    return w.emit("Transpose", [picked], node.name, perm=perm)[0]


# torch's pad modes by ONNX Pad's names; circular ("wrap") needs opset 19
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


@WRITER_OPS.register(aten.pad.default)
def _pad(w, node, x, pad, mode="constant", value=None):
    if mode not in _PAD_MODES or (mode == "circular" and w.opset < 19):
        raise Unsupported(f"pad in mode {mode!r} at opset {w.opset}")
    return w.pad(w.val(x), pad, value, node.name, _PAD_MODES[mode])


@WRITER_OPS.register(aten.constant_pad_nd.default)
def _constant_pad(w, node, x, pad, value=0):
    return w.pad(w.val(x), pad, value, node.name)


@WRITER_OPS.register(aten.reflection_pad1d.default, aten.reflection_pad2d.default, aten.reflection_pad3d.default)
def _reflection_pad(w, node, x, pad):
    return w.pad(w.val(x), pad, None, node.name, "reflect")


@WRITER_OPS.register(aten.replication_pad1d.default, aten.replication_pad2d.default, aten.replication_pad3d.default)
def _replication_pad(w, node, x, pad):
    return w.pad(w.val(x), pad, None, node.name, "edge")


_NEAREST = [aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d,
            aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d, aten._upsample_nearest_exact3d]


@WRITER_OPS.register(*(getattr(op, overload) for op in _NEAREST for overload in ("default", "vec")))
def _upsample_nearest(w, node, x, *args, **kwargs):
    """Nearest-neighbour resizing picks, along each spatial axis, one source index per output index.
    Which one is torch's rounding of its own scale (1/scale_factor or in/out, in float32), so the
    indices are read off the op itself run on each axis's positions. A whole-number upscale whose
    indices are out // k is ONNX Resize (asymmetric, floor), exact there; anything else is a Gather
    per axis."""
    if any(isinstance(a, fx.Node) for a in (*args, *kwargs.values())):
        raise Unsupported(f"{node.target} to a computed size")
    spatial = w.spatial(x)
    sources = [_nearest_sources(node, spatial, axis, args, kwargs) for axis in range(len(spatial))]
    factors = [len(src) // size for src, size in zip(sources, spatial)]
    if all(len(src) == k * size and np.array_equal(src, np.arange(len(src)) // k)
           for src, size, k in zip(sources, spatial, factors)):
        scales = w.const([1.0, 1.0, *map(float, factors)], f"{node.name}_scales")
        return w.emit("Resize", [w.val(x), "", scales], node.name, mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")[0]
    moved = [(axis, src) for axis, src in enumerate(sources) if not np.array_equal(src, np.arange(spatial[axis]))]
    y = w.val(x)
    for i, (axis, src) in enumerate(moved):
        base = node.name if i == len(moved) - 1 else f"{node.name}_axis{axis}"
        y = w.emit("Gather", [y, w.const(src, f"{node.name}_rows{axis}", np.int64)], base, axis=axis + 2)[0]
    return y


def _nearest_sources(node, spatial, axis, args, kwargs) -> np.ndarray:
    """The source index of every output position along ``axis`` (exact in float32 below 2**24)."""
    view = [1] * len(spatial)
    view[axis] = spatial[axis]
    positions = torch.arange(spatial[axis], dtype=torch.float32).view(1, 1, *view).expand(1, 1, *spatial)
    picked = node.target(positions.contiguous(), *args, **kwargs)[0, 0]
    line = picked.movedim(axis, 0).reshape(picked.shape[axis], -1)[:, 0]
    return line.to(torch.int64).numpy()


@WRITER_OPS.register(aten.group_norm.default)
def _group_norm(w, node, x, groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True):
    return w.group_norm(node, x, int(groups), weight, bias, float(eps))


@WRITER_OPS.register(aten.native_group_norm.default)
def _native_group_norm(w, node, x, weight, bias, n, c, hw, groups, eps):
    return [w.group_norm(node, x, int(groups), weight, bias, float(eps)), None, None]


@WRITER_OPS.register(aten.scaled_dot_product_attention.default)
def _attention(w, node, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q @ k^T * scale + mask) @ v, with torch's rule that a row whose every score is masked out
    gives zeros (softmax alone would give NaN)."""
    if dropout_p or enable_gqa or (is_causal and attn_mask is not None):
        raise Unsupported(f"scaled_dot_product_attention with dropout_p={dropout_p}, enable_gqa={enable_gqa}, "
                          f"or is_causal={is_causal} beside a mask")
    qs, ks = w.shape(q), w.shape(k)
    if qs is None or ks is None or any(_static(d) is None for d in (qs[-2], qs[-1], ks[-2])):
        raise Unsupported(f"{node.name}: attention over sizes that are not static")
    base, rank = node.name, w.rank(k)
    scale = 1.0 / math.sqrt(int(qs[-1])) if scale is None else float(scale)
    kt = w.emit("Transpose", [w.val(k)], f"{base}_kT", perm=[*range(rank - 2), rank - 1, rank - 2])[0]
    scores = w.emit("MatMul", [w.val(q), kt], f"{base}_qk")[0]
    scores = w.emit("Mul", [scores, w.const(scale, f"{base}_scale")], f"{base}_scores")[0]
    if is_causal:  # the lower triangle from the top-left corner, as torch builds it
        keep = np.tril(np.ones((int(qs[-2]), int(ks[-2])), dtype=bool))
        scores = w.emit("Where", [w.const(keep, f"{base}_causal", bool), scores,
                                  w.const(-np.inf, f"{base}_minus_inf")], f"{base}_causal_scores")[0]
    elif attn_mask is not None:
        scores = _masked_scores(w, node, scores, attn_mask)
    probs = w.emit("Softmax", [scores], f"{base}_probs", axis=-1)[0]
    if attn_mask is not None:
        probs = _zero_dead_rows(w, base, scores, probs)
    return w.emit("MatMul", [probs, w.val(v)], base)[0]


def _masked_scores(w, node, scores, mask) -> str:
    if w.dtype(mask) == torch.bool:  # False: left out, as torch's -inf there does
        return w.emit("Where", [w.val(mask), scores, w.const(-np.inf, f"{node.name}_minus_inf")],
                      f"{node.name}_masked")[0]
    if w.dtype(mask) != torch.float32:
        raise Unsupported(f"an attention mask of {w.dtype(mask)}")
    return w.emit("Add", [scores, w.val(mask)], f"{node.name}_masked")[0]


def _zero_dead_rows(w, base, scores, probs) -> str:
    top = w.emit("ReduceMax", [scores, w.const([-1], f"{base}_last", np.int64)], f"{base}_row_max", keepdims=1)[0]
    dead = w.emit("Equal", [top, w.const(-np.inf, f"{base}_dead_value")], f"{base}_dead")[0]
    return w.emit("Where", [dead, w.const(0.0, f"{base}_zero"), probs], f"{base}_probs_live")[0]


def _pooled_size(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """torch's pooling output length: with ceil_mode the last window must still start inside the input
    or its left padding."""
    span = (kernel - 1) * dilation + 1
    out = (size + 2 * pad - span + (stride - 1 if ceil_mode else 0)) // stride + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size + pad else out


def _end_pads(spatial, kernel, stride, pads, dilation, ceil_mode, right_padded: bool) -> list[int]:
    """The padding after each axis that makes a floor-mode ONNX pool give torch's (ceil-mode) windows,
    for an input with its left padding on and, if ``right_padded``, its right padding too. ONNX then
    clips a window at the end of the padded input where torch clips it."""
    after = []
    for size, k, s, p, d in zip(spatial, kernel, stride, pads, dilation):
        out = _pooled_size(size, k, s, p, d, ceil_mode)
        after.append(max((out - 1) * s + (k - 1) * d + 1 - size - p - (p if right_padded else 0), 0))
    return after


# ----------------------------------------------------- tensors made from sizes (detection heads' anchors)

@WRITER_OPS.register(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(w, node, *args, **kwargs):
    if any(isinstance(a, fx.Node) for a in (*args, *kwargs.values())):
        raise Unsupported("arange over a computed range")
    return w.tensor_init(node.target(*args, **{**kwargs, "device": "cpu"}), node.name)


@WRITER_OPS.register(aten.type_as.default)
def _type_as(w, node, x, other):
    if w.dtype(x) == w.dtype(other):
        return w.val(x)
    return w.emit("Cast", [w.val(x)], node.name, to=w.onnx_dtype(other))[0]


@WRITER_OPS.register(aten.meshgrid.default, aten.meshgrid.indexing)
def _meshgrid(w, node, tensors, indexing="ij"):
    """Tensor i runs along axis i of the grid (with "xy", the first two tensors swap axes)."""
    sizes = [w.static_shape(t)[0] for t in tensors]
    order = list(range(len(tensors)))
    if indexing == "xy" and len(order) > 1:
        order[0], order[1] = 1, 0
    elif indexing != "ij":
        raise Unsupported(f"meshgrid indexing {indexing!r}")
    grid = [0] * len(sizes)
    for i, axis in enumerate(order):
        grid[axis] = sizes[i]
    full = w.const(grid, f"{node.name}_grid", np.int64)
    outs = []
    for i, (t, axis) in enumerate(zip(tensors, order)):
        line = [1] * len(sizes)
        line[axis] = sizes[i]
        column = w.emit("Reshape", [w.val(t), w.const(line, f"{node.name}_line{i}", np.int64)],
                        f"{node.name}_line{i}")[0]
        outs.append(w.emit("Expand", [column, full], f"{node.name}_{i}")[0])
    return outs


@WRITER_OPS.register(aten.item.default)
def _item(w, node, x):
    """The number as a 0-d tensor: only ops that read a tensor take it (arithmetic on it is refused)."""
    if w.shape(x) == ():
        return w.val(x)
    return w.emit("Reshape", [w.val(x), w.const(np.zeros(0), f"{node.name}_scalar", np.int64)], node.name)[0]


@WRITER_OPS.register(aten.new_full.default)
def _new_full(w, node, x, size, fill_value, **kwargs):
    if any(isinstance(d, fx.Node) for d in size):
        raise Unsupported("new_full of a computed size")
    dtype = w.dtype(node)
    if isinstance(fill_value, fx.Node):
        fill = w.val(fill_value)
        if w.dtype(fill_value) != dtype:
            fill = w.emit("Cast", [fill], f"{node.name}_fill", to=_onnx_type(dtype))[0]
    else:
        fill = w.tensor_init(torch.tensor(fill_value, dtype=dtype), f"{node.name}_fill")
    return w.emit("Expand", [fill, w.const([int(d) for d in size], f"{node.name}_size", np.int64)], node.name)[0]


@WRITER_OPS.register(aten.expand.default)
def _expand(w, node, x, size, implicit=False):
    """Expand to the recorded shape; a symbolic size (the batch) the input already has is written as 1,
    which ONNX's broadcasting keeps."""
    out, src = w.shape(node), w.shape(x)
    if out is None or src is None:
        raise Unsupported(f"expand {node.name} without recorded shapes")
    offset, target = len(out) - len(src), []
    for i, d in enumerate(out):
        if _static(d) is not None:
            target.append(int(d))
        elif i >= offset and str(src[i - offset]) == str(d):
            target.append(1)
        else:
            raise Unsupported(f"expand {node.name} to the computed size {d}")
    return w.emit("Expand", [w.val(x), w.const(target, f"{node.name}_shape", np.int64)], node.name)[0]
