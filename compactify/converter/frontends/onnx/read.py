"""Read an ONNX file a user hands over, and refuse with one line what cannot be converted:
damaged or truncated protobuf, missing external data, a graph that fails onnx.checker, an
opset older than 11, non-finite weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from compactify.targets.onnx_io import short_error
from compactify.converter.load.sniff import detect
from compactify.errors import BadInputError

MIN_OPSET = 11


def read_onnx(path: str | Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    content = detect(path)
    if content.kind != "onnx":
        hint = " (truncated or damaged, for a file named .onnx)" if path.suffix.lower() == ".onnx" and \
            content.kind in ("binary", "empty") else ""
        raise BadInputError(f"{path} is {content.what}, not an ONNX model{hint}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except FileNotFoundError as exc:
        raise BadInputError(f"{path}: an external data file is missing ({exc.filename or exc}); keep the files "
                            "it names next to the model") from exc
    except Exception as exc:  # protobuf DecodeError, truncated files, bad external data offsets
        raise BadInputError(f"{path} is not a readable ONNX model: {short_error(exc)}") from exc
    check_model(model, str(path))
    return model


def check_model(model: onnx.ModelProto, where: str) -> None:
    if not model.graph.node:
        raise BadInputError(f"{where}: the ONNX graph has no nodes")
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise BadInputError(f"{where}: opset {opset} is older than {MIN_OPSET}, the oldest compactify reads; "
                            f"upgrade it with onnx.version_converter.convert_version(model, {MIN_OPSET})")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError and friends
        raise BadInputError(f"{where}: the ONNX model fails onnx.checker: {short_error(exc)}") from exc
    for init in model.graph.initializer:
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                              onnx.TensorProto.BFLOAT16):
            values = numpy_helper.to_array(init)
            if not np.all(np.isfinite(values)):
                bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
                raise BadInputError(f"{where}: initializer {init.name!r} holds {bad} NaN or infinite values")


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 0
