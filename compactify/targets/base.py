"""The target registry: one module per artifact kind, each saying how its artifact is built from a
compact network, how it is recognised, run and judged.

A target is a class registered with ``@register_target``. ``convert`` builds the targets the user
asked for (``build_artifacts``), ``verify`` and ``bench`` open every artifact a folder lists
through its target, ``sweep`` picks its precisions from them: adding a target is one module.

The seam with the converter is ``CompactModel``: whatever the source format, the pipeline hands
every target the same object, so no target imports the converter.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping, Protocol, Sequence

import numpy as np

from compactify.registry import Registry
from compactify.runtimes import Runner, open_runner


@dataclass
class OnnxGraph:
    """The compact network as an ONNX model, and how it was made (report.json's ``onnx`` entry)."""

    model: Any  # onnx.ModelProto
    info: dict[str, Any] = field(default_factory=dict)  # a "warnings" list in it goes to the report's warnings


class CompactModel(Protocol):
    """What every target builds from: one conversion's compact network, whatever the source format."""

    input_names: list[str]
    output_names: list[str]
    input_shape: tuple[int, ...]  # the shape it was planned and checked at, batch first
    metadata: dict[str, str]  # compactify.* keys stamped into every file that carries metadata
    source_meta: dict[str, Any]  # the source's metadata (architecture, what it was trained on)
    check_feeds: list[dict[str, np.ndarray]]  # seeded inputs at the planned shape, for the targets' own checks
    regions: list[dict[str, Any]]  # report.json's regions: what was merged, from which ops and layers

    def program(self) -> Any:
        """The compact torch.export program (dynamic where the conversion was), or None when the
        source has no PyTorch graph (an ONNX source)."""

    def onnx(self) -> OnnxGraph:
        """The compact network as ONNX, unsimplified (built once, then cached)."""

    def reference(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The source network run in float64 on ``feeds``: what every artifact is judged against."""


@dataclass
class Built:
    """What building one target gave: its file (relative to the folder), the report.json entries it
    adds (keyed by the target's name unless it says otherwise), and warnings for the user."""

    file: str
    report: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Target(abc.ABC):
    """One artifact kind. Subclasses set the class attributes and implement ``build``."""

    name: ClassVar[str]  # the key in report.json's "artifacts": "pt2", "onnx", "onnx_fp16", ...
    file: ClassVar[str]  # what convert writes: "compact.pt2"
    suffixes: ClassVar[tuple[str, ...]]
    description: ClassVar[str]
    runtime: ClassVar[str]  # the runner that runs it: "torch", "ort", "trt" (a key of compactify.runtimes.RUNNERS)
    flag: ClassVar[str | None] = None  # the convert option that asks for it, None: written by default
    install_hint: ClassVar[str] = ""  # what to do when missing() says it cannot be built here
    builds_from: ClassVar[tuple[str, ...]] = ()  # artifacts it is built from, in order of preference
    settings_type: ClassVar[type]  # its settings: a frozen dataclass that checks itself, defaults for every field
    precision: ClassVar[str] = "fp32"  # the precision of its numbers (fp32, fp16, int8): a sweep's point
    # Compute precisions its runtime runs it at on request (verify/bench --bf16), each with the (atol, rtol)
    # a run at it is judged with; the runtime's own default is the target's ``precision``.
    extra_precisions: ClassVar[Mapping[str, tuple[float, float]]] = {}
    # The ConvertOptions fields that ask for it, all together (default: the one its flag names).
    options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def asked_by(cls) -> tuple[str, ...]:
        return cls.options or ((cls.flag.removeprefix("--").replace("-", "_"),) if cls.flag else ())

    def sniff(self, path: Path) -> bool:
        """Whether ``path``'s content is this kind of artifact (for files under another suffix)."""
        return False

    def companions(self, path: Path) -> list[Path]:
        """The files the artifact at ``path`` needs beside it (an OpenVINO IR's weights): written with it,
        listed and checked with it, and carried with it."""
        return []

    def missing(self) -> str | None:
        """Why this artifact cannot be built or run here (a one-line reason naming what to install)."""
        return None

    def prepare(self, settings: Any, source_meta: Mapping[str, Any], input_shape: Sequence[int]) -> Any:
        """Check ``settings`` before any work (read and check its files); returns the settings to build with."""
        return settings

    @abc.abstractmethod
    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: Any) -> Built:
        """Write this artifact into ``folder`` from ``compact`` (or from the files in ``built``, keyed by
        target name, for a target built from another artifact), with the settings ``prepare`` returned."""

    def open(self, path: str | Path, device: str = "cpu", **opts: Any) -> Runner:
        """A loaded Runner for the artifact at ``path`` (options as ``compactify.runtimes.open_runner``)."""
        return open_runner(path, runtime=self.runtime, device=device, **opts)

    def tolerance(self, atol: float, rtol: float, artifacts: Mapping[str, str]) -> tuple[float, float] | None:
        """The (atol, rtol) this artifact is judged with given the float32 ones; None: judged apart (int8)."""
        return atol, rtol


TARGETS: Registry[Target] = Registry("target")


def register_target(cls: type[Target]) -> type[Target]:
    TARGETS.add(cls.name, cls())
    return cls
