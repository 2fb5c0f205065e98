"""What a conversion is asked to do: ``ConvertOptions`` holds the flags of ``compactify convert`` as
the user gives them, and ``check`` refuses the flags that do not go together or do not apply to the
source's format. Nothing here imports torch: the CLI runs these checks before it pays for it
(``pipeline.settings`` turns checked options into each pass's own settings)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from compactify.converter.lowrank.rule_syntax import CALIBRATIONS, COSTS, parse_rank_rule
from compactify.arguments import needs_torch_graph
from compactify.errors import BadInputError


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
    openvino: bool = False  # also write compact.xml + compact.bin, an OpenVINO IR
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
    int8_min_agreement: float | None = None  # --int8-min-agreement: keep layers in float until int8 agrees this much
    int8_max_accuracy_drop: float | None = None  # --int8-max-accuracy-drop: the same bar as accuracy points lost
    int8_equalize: bool = False  # --int8-equalize: cross-layer equalization before quantizing
    int8_bias_correction: bool = False  # --int8-bias-correction: each layer's measured mean shift off its bias
    progress: bool = False  # a line per stage on stderr once a conversion has taken a few seconds
    rank_data: str | None = None  # --data FILE.npz: held-out inputs and labels on which --rank's accuracy is judged
    max_accuracy_drop: float | None = None  # --max-accuracy-drop D: fail (nothing written) when --rank loses more
    max_memory: int | None = None  # --max-memory: refuse shapes whose estimate exceeds it (None: what is available)

    def check(self, source_format: str) -> None:
        """A BadInputError for flags that do not go together or do not apply to a source of
        ``source_format`` ("pytorch" or "onnx"), before any work."""
        if source_format == "onnx":
            _refuse_for_onnx(self)
        self._check_rank()
        int8_flags = {"--calibration": self.int8_calibration is not None,
                      "--calibration-method": self.int8_method != "minmax",
                      "--int8-keep": bool(self.int8_keep), "--int8-min-agreement": self.int8_min_agreement is not None,
                      "--int8-max-accuracy-drop": self.int8_max_accuracy_drop is not None,
                      "--int8-equalize": self.int8_equalize,
                      "--int8-bias-correction": self.int8_bias_correction}
        used = [k for k, v in int8_flags.items() if v]
        if used and not self.int8:
            raise BadInputError(f"{', '.join(used)} appl{'y' if len(used) > 1 else 'ies'} only with --int8; add --int8")

    def inputs(self) -> list[str | None]:
        """The files a conversion reads besides its source: a folder holding one is never replaced."""
        return [self.timing_cache, self.int8_calibration, self.rank_data]

    def _check_rank(self) -> None:
        if not self.rank:
            if self.rank_multiple != 1 or self.cost != "flops":
                raise BadInputError("--rank-multiple and --cost choose how ranks are cut; add --rank RULE, e.g. "
                                    "--rank energy:0.99")
            if self.rank_data is not None or self.max_accuracy_drop is not None:
                raise BadInputError("--data and --max-accuracy-drop judge what --rank costs; add --rank RULE, e.g. "
                                    "--rank flops:0.5")
            return
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
    for flag, file in (("--executorch", "compact.pte"), ("--litert", "compact.tflite")):
        if getattr(options, flag[2:]):
            raise BadInputError(needs_torch_graph(flag, file))
    if not options.onnx:
        raise BadInputError("--no-onnx: an ONNX source converts to compact.onnx; drop --no-onnx")
    if options.static:
        raise BadInputError("--static: an ONNX source keeps the batch dimension its file states; drop --static")
