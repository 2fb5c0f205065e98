"""Build the artifacts a conversion asked for, in dependency order, and say what each gave.

    requests = prepare_artifacts({"pt2": None, "onnx": OnnxSettings(), "onnx_int8": Int8Settings()},
                                 source_meta, input_shape)       # before the contraction: files read, options checked
    added = build_artifacts(compact, folder, requests)          # after it: report.json's entries

A request is a target name and its settings (None: the target's defaults). Targets are built after
those they are built from (``builds_from``), else in registry order; a target built from
another artifact takes the first of its ``builds_from`` this conversion builds (the engine: the
int8 model, else the fp16 one, else compact.onnx).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from compactify.errors import BadInputError, MissingRuntimeError
from compactify.targets.base import TARGETS, CompactModel, Target


def check_requests(requests: Mapping[str, Any]) -> dict[str, Any]:
    """The requests checked (names, settings, what each is built from, whether this machine can build
    each), in build order, with every target's settings filled in: what needs no source, so that a
    conversion refuses such a request before it loads anything."""
    unknown = [name for name in requests if name not in TARGETS]
    if unknown:
        raise BadInputError(f"no artifact kind {', '.join(map(repr, unknown))}; known: {', '.join(TARGETS)}")
    chosen = {name: _settings(TARGETS[name], requests[name]) for name in _build_order(requests)}
    for name in chosen:
        _check_sources(TARGETS[name], chosen)
    if "engine" in chosen and "onnx_int8" in chosen:  # TensorRT reads only symmetric Q/DQ with float biases
        chosen["onnx_int8"] = dataclasses.replace(chosen["onnx_int8"], tensorrt=True)
    for name in chosen:
        target = TARGETS[name]
        missing = target.missing()
        if missing and target.flag:
            raise MissingRuntimeError(f"{target.flag} {missing}" + (f"; {target.install_hint}" if target.install_hint
                                                                    else ""))
    return chosen


def prepare_artifacts(requests: Mapping[str, Any], source_meta: Mapping[str, Any],
                      input_shape: Sequence[int]) -> dict[str, Any]:
    """``check_requests``, then each target's settings prepared (its files read and checked), in build
    order. Safe to call again on its own result."""
    chosen = check_requests(requests)
    return {name: TARGETS[name].prepare(settings, source_meta, input_shape) for name, settings in chosen.items()}


def build_artifacts(compact: CompactModel, folder: Path, requests: Mapping[str, Any]) -> dict[str, Any]:
    """Write the requested artifacts into ``folder``; returns report.json's entries: ``artifacts`` (name ->
    file), each target's own entries ("onnx", "onnx_fp16", "int8", "engine") and ``warnings``."""
    prepared = prepare_artifacts(requests, compact.source_meta, compact.input_shape)
    folder = Path(folder)
    built: dict[str, Path] = {}
    added: dict[str, Any] = {}
    artifacts: dict[str, str] = {}
    warnings: list[str] = []
    for name, settings in prepared.items():
        result = TARGETS[name].build(compact, folder, built, settings)
        built[name] = folder / result.file
        artifacts[name] = result.file
        added.update(result.report)
        warnings.extend(result.warnings)
    return {"artifacts": artifacts, **added, "warnings": warnings}


def _build_order(names) -> list[str]:
    """Every target after those it is built from, else in registry order (which import order sets, so
    it must not decide what can be built)."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order:
            return
        for source in TARGETS[name].builds_from:
            if source in names:
                visit(source)
        order.append(name)

    for name in TARGETS:
        if name in names:
            visit(name)
    return order


def _settings(target: Target, settings: Any) -> Any:
    return target.settings_type() if settings is None else settings


def _check_sources(target: Target, chosen: Mapping[str, Any]) -> None:
    """A target built from other artifacts needs one of them in this conversion; one that would have a
    choice of several refuses it rather than pick silently."""
    if not target.builds_from:
        return
    sources = [TARGETS[name] for name in target.builds_from if name in chosen]
    fallback = TARGETS[target.builds_from[-1]]
    if not sources:
        fix = f"add {fallback.flag}" if fallback.flag else f"drop --no-{fallback.name}"
        raise BadInputError(f"{target.flag} writes {target.file} from {fallback.file}; {fix}")
    optional = [s for s in sources if s is not fallback]
    if len(optional) > 1:
        which = " or ".join(f"from {s.file} with {s.flag}" for s in optional)
        raise BadInputError(f"{target.flag} builds one {target.name}: {which}; drop one of them")
