"""Each pass's own settings, from checked ``ConvertOptions`` (``pipeline.options``): ``split`` turns
the flags of ``compactify convert`` into them once, and asks the targets to check what they are asked
for. No pass reads the options object."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from compactify.converter.pipeline.options import ConvertOptions
from compactify.targets import (EngineSettings, Fp16Settings, Int8Settings, OnnxSettings, OpenVinoInt8Settings,
                                OpenVinoSettings, Pt2Settings, PteSettings, TfliteSettings, check_requests)


def split(options: ConvertOptions, source_format: str) -> "ConvertSettings":
    """Each pass's settings for a source of ``source_format`` ("pytorch" or "onnx"); a BadInputError
    for flags that do not go together or do not apply to that source, before any work."""
    options.check(source_format)
    rank = None
    if options.rank:
        rank = RankSettings(options.rank, options.rank_multiple, options.cost, options.calibration,
                            options.rank_data, options.max_accuracy_drop)
    return ConvertSettings(
        load=LoadSettings(options.arch, options.arch_kwargs, options.input_shape, options.trust_pickle,
                          options.outputs, options.max_memory),
        dynamic_hw=options.dynamic_hw,
        allow_approximate=options.allow_approximate,
        rank=rank,
        dynamic_batch=not options.static,
        targets=_targets(options, source_format),
        force=options.force,
        progress=options.progress,
    )


def _targets(options: ConvertOptions, source_format: str) -> dict[str, Any]:
    """The artifacts asked for, checked by the targets themselves (what each is built from, whether
    this machine can build it) before any work."""
    wanted: dict[str, Any] = {}
    if source_format != "onnx":
        wanted["pt2"] = Pt2Settings()
    if options.onnx:
        wanted["onnx"] = OnnxSettings(simplify=options.simplify)
    if options.fp16:
        wanted["onnx_fp16"] = Fp16Settings()
    if options.int8:
        wanted["onnx_int8"] = Int8Settings(calibration=options.int8_calibration, method=options.int8_method,
                                           keep=tuple(options.int8_keep), min_agreement=options.int8_min_agreement,
                                           equalize=options.int8_equalize,
                                           bias_correction=options.int8_bias_correction,
                                           max_accuracy_drop=options.int8_max_accuracy_drop)
    if options.trt:
        wanted["engine"] = EngineSettings(max_batch=options.max_batch, timing_cache=options.timing_cache)
    if options.openvino:
        wanted["openvino"] = OpenVinoSettings()
        if options.int8:
            wanted["openvino_int8"] = OpenVinoInt8Settings()
    if options.executorch:
        wanted["pte"] = PteSettings()
    if options.litert:
        wanted["tflite"] = TfliteSettings()
    return check_requests(wanted)


@dataclass(frozen=True)
class LoadSettings:
    """How a checkpoint becomes a model: what builds it, at which input shape, with which outputs."""

    arch: str | None = None
    arch_kwargs: dict | None = None
    input_shape: tuple[int, ...] | None = None
    trust_pickle: bool = False
    outputs: str | None = None
    max_memory: int | None = None


@dataclass(frozen=True)
class RankSettings:
    """What --rank asks for (checked); each source turns it into what its truncation runs on."""

    rule: str
    multiple: int = 1
    cost: str = "flops"
    calibration: str | None = None
    data: str | None = None
    max_accuracy_drop: float | None = None


@dataclass
class ConvertSettings:
    load: LoadSettings
    dynamic_hw: bool
    allow_approximate: bool
    rank: RankSettings | None
    dynamic_batch: bool  # the PyTorch -> ONNX back-end's batch dimension
    targets: dict[str, Any] = field(default_factory=dict)  # target name -> its settings, in build order
    force: bool = False
    progress: bool = False
