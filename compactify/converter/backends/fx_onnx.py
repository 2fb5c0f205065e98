"""Write a compact fx graph to ONNX directly, one ONNX node (or a few) per graph node.

The graph the converter hands to the exporter is already an ATen graph (captured by torch.export)
plus the merged layers (``nn.Conv*d``, ``nn.Linear``, ``nn.Sequential`` of them behind a constant
pad). ``torch.onnx.export``'s dynamo path would export it again and run ATen decompositions over
it: seconds to minutes for a graph of Conv, Gemm, ReLU, Add and pooling. This writer maps those
ops to their ONNX operators with ``onnx.helper`` instead. It writes only ops whose ONNX form is the
same computation (shapes, paddings and attributes read off the graph); anything else raises
``Unsupported`` naming the op, and ``onnx_export`` then falls back to torch.onnx.export and says
so. Like every exporter there, its output is checked against PyTorch on ONNX Runtime before it is
written.

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
            w = self.tensor_init(m.weight, f"{base}.weight")
            b = [self.tensor_init(m.bias, f"{base}.bias")] if m.bias is not None else []
            return self.conv(x, w, b, m.stride, m.padding, m.dilation, m.groups, m.weight.shape[2:], base)
        if isinstance(m, nn.Linear):
            w = self.tensor_init(m.weight, f"{base}.weight")
            b = self.tensor_init(m.bias, f"{base}.bias") if m.bias is not None else None
            return self.linear(x, w, b, rank, base)
        if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            return self.pad(x, list(m.padding), float(m.value), base)
        raise Unsupported(f"layer {type(m).__name__}")

    def conv(self, x, w, b, stride, padding, dilation, groups, kernel, base) -> str:
        n = len(kernel)
        pads = [int(p) for p in _per_dim(padding, n)]
        return self.emit("Conv", [x, w, *b], base, kernel_shape=[int(k) for k in kernel],
                         strides=[int(s) for s in _per_dim(stride, n)], pads=pads + pads,
                         dilations=[int(d) for d in _per_dim(dilation, n)], group=int(groups))[0]

    def linear(self, x, w, b, x_rank, base) -> str:
        """``x @ w.T + b``: Gemm for a matrix input, MatMul (+ Add) otherwise."""
        if x_rank == 2:
            return self.emit("Gemm", [x, w] + ([b] if b else []), base, transB=1)[0]
        wt = self.emit("Transpose", [w], f"{base}_wT", perm=[1, 0])[0]
        y = self.emit("MatMul", [x, wt], f"{base}_matmul" if b else base)[0]
        return self.emit("Add", [y, b], base)[0] if b else y

    def pad(self, x, torch_pads: list[int], value: float, base: str) -> str:
        """torch's pad list (last axis first, before/after pairs) on the trailing axes."""
        k = len(torch_pads) // 2
        before = [torch_pads[2 * (k - 1 - i)] for i in range(k)]
        after = [torch_pads[2 * (k - 1 - i) + 1] for i in range(k)]
        if any(p < 0 for p in before + after):
            raise Unsupported("negative padding (a crop)")
        axes = list(range(-k, 0))
        return self.emit("Pad", [x, self.const(before + after, f"{base}_pads", np.int64),
                                 self.const(value, f"{base}_value"), self.const(axes, f"{base}_axes", np.int64)],
                         base, mode="constant")[0]

    # ----------------------------------------------------------------- functions

    def function(self, node: fx.Node):
        target = node.target
        if getattr(target, "__name__", "") == "check_spatial_size":  # the ONNX input has the same fixed height and width
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
        raise Unsupported("transposed convolution")
    return _conv(w, node, x, weight, bias, stride, padding, dilation, groups)


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
    return w.emit(_BINARY[node.target], [w.operand(a, node.name), w.operand(b, node.name)], node.name)[0]


@WRITER_OPS.register(aten.div.Tensor)
def _div(w, node, a, b, rounding_mode=None):
    if rounding_mode is not None:
        raise Unsupported(f"div with rounding_mode={rounding_mode!r}")
    return w.emit("Div", [w.operand(a, node.name), w.operand(b, node.name)], node.name)[0]


def _pool_args(n, kernel, stride, padding, dilation=1):
    kernel = [int(k) for k in _per_dim(kernel, n)]
    stride = [int(s) for s in _per_dim(stride, n)] if stride not in (None, [], ()) else list(kernel)
    pads = [int(p) for p in _per_dim(padding, n)]
    return kernel, stride, pads + pads, [int(d) for d in _per_dim(dilation, n)]


@WRITER_OPS.register(aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default,
                     aten.max_pool2d_with_indices.default)
def _max_pool(w, node, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    if ceil_mode:
        raise Unsupported("max_pool with ceil_mode")
    k, s, p, d = _pool_args(w.rank(x) - 2, kernel, stride, padding, dilation)
    out = w.emit("MaxPool", [w.val(x)], node.name, kernel_shape=k, strides=s, pads=p, dilations=d)[0]
    return [out, None] if "with_indices" in str(node.target) else out


@WRITER_OPS.register(aten.avg_pool1d.default, aten.avg_pool2d.default, aten.avg_pool3d.default)
def _avg_pool(w, node, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
              divisor_override=None):
    if ceil_mode or divisor_override is not None:
        raise Unsupported("avg_pool with ceil_mode or divisor_override")
    n = w.rank(x) - 2
    k, s, p, _ = _pool_args(n, kernel, stride, padding)
    return w.emit("AveragePool", [w.val(x)], node.name, kernel_shape=k, strides=s, pads=p,
                  count_include_pad=int(bool(count_include_pad)))[0]


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

