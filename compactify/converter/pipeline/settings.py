"""What a conversion is asked to do: ``ConvertOptions`` holds the flags of ``compactify convert`` as
the user gives them, and ``ConvertOptions.split`` turns them, once and with every check of how they
combine, into each pass's own settings. No pass reads the options object."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from compactify.converter.lowrank.rank_rules import parse_rank_rule
from compactify.converter.lowrank.rank_request import CALIBRATIONS, COSTS
from compactify.errors import BadInputError
from compactify.targets import (TARGETS, EngineSettings, Fp16Settings, Int8Settings, OnnxSettings, Pt2Settings,
                                PteSettings, TfliteSettings, check_requests)
from compactify.targets.edge_program import needs_torch_graph


@dataclass
class ConvertOptions:
    """The flags of ``compactify convert``, as the user gives them (the Python API takes the same)."""

    arch: str | None = None
    arch_kwargs: dict | None = None
    input_shape: tuple[int, ...] | None = None
    allow_approximate: bool = False
    dynamic_hw: bool = False  # merge only what is exact at every input size
    force: bool = False
    trust_pickle: bool = False
    outputs: str | None = None
    onnx: bool = True
    static: bool = False  # fixed batch in the ONNX model instead of a dynamic one
    simplify: bool = True
    fp16: bool = False
    trt: bool = False
    executorch: bool = False  # also write compact.pte (ExecuTorch, XNNPACK)
    litert: bool = False  # also write compact.tflite (LiteRT)
    max_batch: int = 32  # TensorRT optimization profile: batch 1 .. max_batch
    timing_cache: str | None = None
    rank: str | None = None  # --rank RULE: prune and truncate (compactify.converter.lowrank.truncate)
    rank_multiple: int = 1
    cost: str = "flops"  # or "latency": keep a factored layer only if it measures faster
    calibration: str | None = None  # inputs for the truncation error: "random", "digits" (None: auto)
    int8: bool = False  # also write compact.int8.onnx
    int8_calibration: str | None = None  # --calibration FILE.npz (None: digits, for checkpoints trained on them)
    int8_method: str = "minmax"  # --calibration-method: minmax, entropy or percentile
    int8_keep: tuple[str, ...] = ()  # --int8-keep: layers left in float
    int8_min_agreement: float | None = None  # --int8-min-agreement: fail below this top-1 agreement with fp32
    progress: bool = False  # a line per stage on stderr once a conversion has taken a few seconds
    rank_data: str | None = None  # --data FILE.npz: held-out inputs and labels on which --rank's accuracy is judged
    max_accuracy_drop: float | None = None  # --max-accuracy-drop D: fail (nothing written) when --rank loses more
    max_memory: int | None = None  # --max-memory: refuse shapes whose estimate exceeds it (None: what is available)

    def split(self, source_format: str) -> "ConvertSettings":
        """Each pass's settings for a source of ``source_format`` ("pytorch" or "onnx"); a BadInputError
        for flags that do not go together or do not apply to that source, before any work."""
        if source_format == "onnx":
            _refuse_for_onnx(self)
        rank = self._rank()
        return ConvertSettings(
            load=LoadSettings(self.arch, self.arch_kwargs, self.input_shape, self.trust_pickle, self.outputs,
                              self.max_memory),
            dynamic_hw=self.dynamic_hw,
            allow_approximate=self.allow_approximate,
            rank=rank,
            dynamic_batch=not self.static,
            targets=self._targets(source_format),
            force=self.force,
            progress=self.progress,
        )

    def inputs(self) -> list[str | None]:
        """The files a conversion reads besides its source: a folder holding one is never replaced."""
        return [self.timing_cache, self.int8_calibration, self.rank_data]

    def _rank(self) -> "RankSettings | None":
        if not self.rank:
            if self.rank_multiple != 1 or self.cost != "flops":
                raise BadInputError("--rank-multiple and --cost choose how ranks are cut; add --rank RULE, e.g. "
                                    "--rank energy:0.99")
            if self.rank_data is not None or self.max_accuracy_drop is not None:
                raise BadInputError("--data and --max-accuracy-drop judge what --rank costs; add --rank RULE, e.g. "
                                    "--rank flops:0.5")
            return None
        drop = self.max_accuracy_drop
        if drop is not None and not (isinstance(drop, (int, float)) and math.isfinite(drop) and drop >= 0):
            raise BadInputError(f"--max-accuracy-drop must be a number of percentage points >= 0, got {drop!r}")
        parse_rank_rule(self.rank)
        multiple = self.rank_multiple
        if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
            raise BadInputError(f"--rank-multiple must be a whole number >= 1, got {multiple!r}")
        if self.cost not in COSTS:
            raise BadInputError(f"--cost must be flops or latency, got {self.cost!r}")
        if self.calibration is not None and self.calibration not in CALIBRATIONS:
            raise BadInputError(f"calibration must be random or digits, got {self.calibration!r}")
        return RankSettings(self.rank, multiple, self.cost, self.calibration, self.rank_data, drop)

    def _targets(self, source_format: str) -> dict[str, Any]:
        """The artifacts asked for, checked by the targets themselves (what each is built from, whether
        this machine can build it) before any work."""
        int8_flags = {"--calibration": self.int8_calibration is not None,
                      "--calibration-method": self.int8_method != "minmax",
                      "--int8-keep": bool(self.int8_keep), "--int8-min-agreement": self.int8_min_agreement is not None}
        used = [k for k, v in int8_flags.items() if v]
        if used and not self.int8:
            raise BadInputError(f"{', '.join(used)} appl{'y' if len(used) > 1 else 'ies'} only with --int8; add --int8")
        wanted: dict[str, Any] = {}
        if source_format != "onnx":
            wanted["pt2"] = Pt2Settings()
        if self.onnx:
            wanted["onnx"] = OnnxSettings(simplify=self.simplify)
        if self.fp16:
            wanted["onnx_fp16"] = Fp16Settings()
        if self.int8:
            wanted["onnx_int8"] = Int8Settings(calibration=self.int8_calibration, method=self.int8_method,
                                               keep=tuple(self.int8_keep), min_agreement=self.int8_min_agreement)
        if self.executorch:
            wanted["pte"] = PteSettings()
        if self.litert:
            wanted["tflite"] = TfliteSettings()
        if self.trt:
            wanted["engine"] = EngineSettings(max_batch=self.max_batch, timing_cache=self.timing_cache)
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


# Flags that choose how Python code is built or captured, or that this source cannot do.
_NOT_FOR_ONNX = {
    "arch": "--arch (the graph is in the file)",
    "arch_kwargs": "--arch-kwargs (the graph is in the file)",
    "trust_pickle": "--trust-pickle (an ONNX file runs no code when loaded)",
    "dynamic_hw": "--dynamic-hw (a symbolic H and W in the file already mean every size)",
    "rank_data": "--data (judging --rank on labelled data is done for PyTorch sources)",
    "max_accuracy_drop": "--max-accuracy-drop (judging --rank on labelled data is done for PyTorch sources)",
}


def _refuse_for_onnx(options: ConvertOptions) -> None:
    for name, what in _NOT_FOR_ONNX.items():
        if getattr(options, name):
            raise BadInputError(f"{what} does not apply to an ONNX source")
    if options.rank and options.cost != "flops":
        raise BadInputError("--cost latency times factored layers in PyTorch, for PyTorch sources only; an ONNX "
                            "source is factored by FLOPs (--cost flops)")
    for flag, target in (("--executorch", "pte"), ("--litert", "tflite")):
        if getattr(options, flag[2:]):
            raise BadInputError(needs_torch_graph(flag, TARGETS[target].file))
    if not options.onnx:
        raise BadInputError("--no-onnx: an ONNX source converts to compact.onnx; drop --no-onnx")
    if options.static:
        raise BadInputError("--static: an ONNX source keeps the batch dimension its file states; drop --static")
