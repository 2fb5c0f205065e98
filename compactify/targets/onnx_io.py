"""Small ONNX utilities shared by the exporters and the ONNX front-end: check, run, save, and a
short form of the errors the libraries raise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from compactify.errors import CompactifyError
from compactify.outputs import atomic_file


def short_error(exc: BaseException) -> str:
    """The innermost cause's first line: torch wraps export errors in pages of generic advice."""
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:  # "... of node:" names the node on the next line
        text = f"{text} {lines[1]}"
    text = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def check_onnx(proto: onnx.ModelProto, what: str) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx raises ValidationError / InferenceError / others
        raise CompactifyError(f"the {what} ONNX model fails onnx.checker: {short_error(exc)}") from exc


def run_ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return run_ort_feeds(proto, [feeds])[0]


def run_ort_feeds(proto: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Each feed through one session (making a session costs more than running these small feeds)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1  # check inputs are tiny; extra threads only spin on a busy machine
    # The arena keeps its largest activations after the run, beside the next copy of the model.
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [session.run(None, f) for f in feeds]


def save_onnx(proto: onnx.ModelProto, path: Path, force: bool) -> None:
    with atomic_file(path, force=force) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
