"""Build a serialized TensorRT engine from an ONNX file (TensorRT 10 and 11 Python API).

Choices that matter for a fair comparison with PyTorch:
- TF32 is cleared, so fp32 convolutions and GEMMs stay fp32 and the engine's outputs can be
  checked against the fp32 model with fp32 tolerances.
- Precision comes from the graph. TensorRT 11 removed the FP16/INT8 builder flags and
  always builds strongly typed networks; TensorRT 10 gets the STRONGLY_TYPED flag for the
  same behaviour. ``fp16=True`` therefore builds from an fp16 ONNX graph (converted here
  with ``fp16.to_fp16`` when the given file is fp32), and sets the FP16 builder flag
  only on a TensorRT old enough to have neither strong typing nor the graph's say.
- An int8 QDQ model (``convert --int8 --trt``) is built as it is: explicit quantization, the
  precision of every layer taken from the graph's QuantizeLinear/DequantizeLinear nodes in a
  strongly typed network (the INT8 builder flag is set only on a TensorRT without strong
  typing). TensorRT takes symmetric quantization only and no int32 DequantizeLinear (ONNX
  Runtime's quantized biases): a QDQ model that has either is refused before building, with
  the conversion that writes the form TensorRT takes.
- One optimization profile covers the batch range; the timing cache is loaded before and
  saved after each build, so rebuilding (another batch range, the fp16 variant) skips
  kernel timing already done on this GPU.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from compactify.errors import BadInputError, CompactifyError
from compactify.outputs import atomic_file
from compactify.runtimes.devices import require_tensorrt
from compactify.runtimes.trt_runner import make_logger
from compactify.targets.fp16_convert import to_fp16

DEFAULT_WORKSPACE_MB = 1024


@dataclass
class EngineInfo:
    path: Path
    layers: int  # layers in the built engine (after TensorRT's fusions)
    network_layers: int  # layers the ONNX parser produced
    build_seconds: float
    tensorrt_version: str
    fp16: bool
    strongly_typed: bool
    min_batch: int | None  # None when the ONNX batch is static
    opt_batch: int | None
    max_batch: int | None
    workspace_mb: int
    timing_cache: Path | None
    timing_cache_reused: bool
    size_bytes: int
    warnings: list[str] = field(default_factory=list)
    int8: bool = False  # built from an int8 QDQ model (explicit quantization)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["timing_cache"] = None if self.timing_cache is None else str(self.timing_cache)
        return out


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    *,
    min_batch: int = 1,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: str | Path | None = None,
    fp16: bool = False,
    force: bool = True,
) -> EngineInfo:
    """Build ``engine_path`` from ``onnx_path``.

    ``opt_batch`` defaults to ``min_batch`` (latency-oriented) and ``max_batch`` to
    ``max(opt_batch, 32)``. A static-batch ONNX file ignores the batch range. Raises
    MissingRuntimeError without TensorRT or a CUDA device, BadInputError for bad arguments or
    an ONNX file TensorRT cannot parse.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    opt_batch = min_batch if opt_batch is None else opt_batch
    max_batch = max(opt_batch, 32) if max_batch is None else max_batch
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise BadInputError(f"batch range must satisfy 1 <= min <= opt <= max, got min {min_batch}, opt {opt_batch}, max {max_batch}")
    if workspace_mb < 1:
        raise BadInputError(f"workspace must be at least 1 MB, got {workspace_mb}")
    if not onnx_path.is_file():
        raise BadInputError(f"ONNX file {onnx_path} does not exist")
    if engine_path.resolve() == onnx_path.resolve():
        raise BadInputError("the engine path must differ from the ONNX path")
    timing_cache = None if timing_cache is None else Path(timing_cache)

    trt = require_tensorrt("building a TensorRT engine")
    notes: list[str] = []
    int8 = _check_qdq(onnx_path)
    if int8 and fp16:
        raise BadInputError(f"{onnx_path.name} is an int8 QDQ model: TensorRT builds it as it is (explicit "
                            "quantization); drop --fp16")
    if int8:
        notes.append("int8 QDQ model: explicit quantization, each layer's precision taken from its Q/DQ nodes")
    with tempfile.TemporaryDirectory(prefix="compactify-trt-") as tmp:
        source = onnx_path
        if fp16 and not _has_fp16(onnx_path):
            source = Path(tmp) / "fp16.onnx"
            to_fp16(onnx_path, source, keep_io_types=True)
            notes.append("converted the fp32 ONNX model to fp16 (fp32 inputs/outputs) before building")

        logger = make_logger(trt)
        builder = trt.Builder(logger)
        flags = 0
        strongly_typed = hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")
        if strongly_typed:  # deprecated-but-accepted in 11, where strong typing is always on
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(source.read_bytes(), str(source)):
            errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
            raise BadInputError(f"TensorRT cannot parse {onnx_path}: {errors[0] if errors else logger.last_error()}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        if hasattr(trt.BuilderFlag, "TF32"):
            config.clear_flag(trt.BuilderFlag.TF32)
        if fp16 and not strongly_typed and hasattr(trt.BuilderFlag, "FP16"):
            config.set_flag(trt.BuilderFlag.FP16)
        if int8 and not strongly_typed and hasattr(trt.BuilderFlag, "INT8"):
            config.set_flag(trt.BuilderFlag.INT8)  # a weakly typed network reads Q/DQ nodes only with it

        batch_range = _add_profile(trt, builder, network, config, min_batch, opt_batch, max_batch)
        if batch_range is None and (min_batch, opt_batch, max_batch) != (1, 1, 32):
            notes.append("the ONNX batch dimension is static; the requested batch range was ignored")

        cache, reused = _attach_timing_cache(config, timing_cache, notes)

        start = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.perf_counter() - start
        if serialized is None:
            raise CompactifyError(f"TensorRT could not build an engine from {onnx_path}: {logger.last_error() or 'no reason given'}")
        blob = bytes(serialized)

        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            raise CompactifyError(f"TensorRT built an engine it cannot load back: {logger.last_error()}")
        layers = int(engine.num_layers)
        network_layers = int(network.num_layers)
        del engine, runtime

        with atomic_file(engine_path, force=force) as out:
            out.write_bytes(blob)
        if timing_cache is not None and cache is not None:
            with atomic_file(timing_cache, force=True) as out:
                out.write_bytes(bytes(config.get_timing_cache().serialize()))

    return EngineInfo(
        path=engine_path,
        layers=layers,
        network_layers=network_layers,
        build_seconds=seconds,
        tensorrt_version=str(trt.__version__),
        fp16=fp16,
        strongly_typed=strongly_typed,
        min_batch=None if batch_range is None else batch_range[0],
        opt_batch=None if batch_range is None else batch_range[1],
        max_batch=None if batch_range is None else batch_range[2],
        workspace_mb=workspace_mb,
        timing_cache=timing_cache,
        timing_cache_reused=reused,
        size_bytes=len(blob),
        warnings=notes,
        int8=int8,
    )


def _add_profile(trt, builder, network, config, lo: int, opt: int, hi: int) -> tuple[int, int, int] | None:
    """One optimization profile over the batch; every other dimension must be static."""
    profile = builder.create_optimization_profile()
    dynamic = False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(int(d) for d in tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise BadInputError(f"input {tensor.name!r} has dynamic dimensions {shape} beyond the batch; export with a fixed input size")
        if shape and shape[0] < 0:
            dynamic = True
            rest = shape[1:]
            profile.set_shape(tensor.name, (lo, *rest), (opt, *rest), (hi, *rest))
    if not dynamic:
        return None
    config.add_optimization_profile(profile)
    return lo, opt, hi


def _attach_timing_cache(config, path: Path | None, notes: list[str]):
    if path is None:
        return None, False
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    reused = bool(blob)
    if not config.set_timing_cache(cache, False):  # False: refuse a cache from another TensorRT/GPU
        notes.append(f"timing cache {path} does not match this TensorRT version or GPU; starting a fresh one")
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
        reused = False
    return cache, reused


def _check_qdq(onnx_path: Path) -> bool:
    """Whether the model is quantized with QuantizeLinear/DequantizeLinear nodes; BadInputError for a QDQ
    model TensorRT cannot build (asymmetric zero points, int32 DequantizeLinear). A file onnx cannot read is
    left to TensorRT's parser, which says why."""
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:
        return False
    nodes = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not nodes:
        return False
    inits = {i.name: i for i in model.graph.initializer}
    problems = []
    if any(len(n.input) > 2 and n.input[2] in inits and np.any(numpy_helper.to_array(inits[n.input[2]]))
           for n in nodes):
        problems.append("non-zero zero points (TensorRT quantizes symmetrically only)")
    if any(n.op_type == "DequantizeLinear" and n.input[0] in inits
           and inits[n.input[0]].data_type == onnx.TensorProto.INT32 for n in nodes):
        problems.append("int32 DequantizeLinear inputs (quantized biases, which TensorRT's parser rejects)")
    if problems:
        raise BadInputError(f"{onnx_path.name} is an int8 QDQ model TensorRT cannot build: it has "
                            f"{' and '.join(problems)}; write the form TensorRT takes with `compactify convert "
                            "--int8 --trt` (symmetric activations, float biases)")
    return True


def _has_fp16(onnx_path: Path) -> bool:
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:
        raise BadInputError(f"{onnx_path} is not a readable ONNX model: {type(exc).__name__}") from exc
    return any(init.data_type == onnx.TensorProto.FLOAT16 for init in model.graph.initializer)
