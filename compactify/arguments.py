"""The values users type, parsed and checked without importing torch or ONNX: the CLI answers a
mistake in them before it pays seconds for those, and the Python API parses the same text the same way.
What needs the model (does the shape fit its first layer?) is checked where the model is built
(``converter.load.input_fit``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

from compactify.errors import BadInputError

# What verify's OUTDIR must be, said when it is missing (by the CLI before torch, and by the API).
CONVERT_FOLDER_HINT = "give the output folder of `compactify convert`"

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
          "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}


def parse_input_shape(text: str | Sequence[int] | None, option: str = "--input-shape",
                      empty_ok: bool = True) -> tuple[int, ...] | None:
    """``"1,3,32,32"`` (or ``1x3x32x32``, or a sequence of ints) -> ``(1, 3, 32, 32)``: N,C,H,W, the
    batch first, in every command; None for no shape (and, unless ``empty_ok``, a refusal of an empty
    string: an option given empty is a mistake where leaving it out has a meaning)."""
    if isinstance(text, str) and not text.strip() and not empty_ok:
        raise BadInputError(f"{option} is empty; give N,C,H,W such as 1,3,32,32")
    if text is None or text == "":
        return None
    try:
        dims = tuple(int(d) for d in (str(text).replace("x", ",").split(",") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        raise BadInputError(f"{option} {text!r} is not a list of integers such as 1,3,32,32 (N,C,H,W)") from None
    if len(dims) < 2 or any(d <= 0 for d in dims):
        raise BadInputError(f"{option} {text!r} needs at least two positive sizes, the batch first, such as "
                            "1,3,32,32 (N,C,H,W)")
    return dims


def parse_batches(text: str | Sequence[int]) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``: positive integers, no duplicates."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise BadInputError(f"--batch must be a comma-separated list of positive integers like 1,8,32; got {text!r}") from None
    else:
        values = [int(v) for v in text]
    if not values or any(v < 1 for v in values):
        raise BadInputError(f"--batch must list positive integers like 1,8,32; got {text!r}")
    if len(set(values)) != len(values):
        raise BadInputError(f"--batch lists a size twice: {text!r}")
    return values


def parse_arch_kwargs(text: str | dict | None) -> dict:
    """The JSON object of --arch-kwargs (a dict passes through); {} for none."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInputError(f"--arch-kwargs is not valid JSON ({exc.msg} at column {exc.colno}): {text!r}") from None
    if not isinstance(value, dict):
        raise BadInputError(f"--arch-kwargs must be a JSON object such as '{{\"num_classes\": 10}}', got {text!r}")
    return value


def parse_size(text: str, option: str = "--max-memory") -> int:
    """``"8GB"``, ``"512M"``, ``"1.5g"`` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        raise BadInputError(f"{option} {text!r} is not a size such as 8GB, 512MB or 1.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def existing_file(path: str | Path | None, what: str) -> Path | None:
    """``path`` as a Path, or BadInputError when it is missing or not a file (``what``: "checkpoint",
    "calibration file", ...); None passes through, for an option not given."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} {path} does not exist" if not path.exists() else f"{what} {path} is not a file")
    return path


def existing_path(path: str | Path | None, what: str, hint: str = "") -> Path | None:
    """Like ``existing_file``, for an argument that may be a file or a folder; ``hint`` ends the
    message (what to give instead)."""
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{what} {path} does not exist" + (f"; {hint}" if hint else ""))
    return path


def needs_torch_graph(flag: str, file: str) -> str:
    """The one line for an artifact lowered from torch.export (--executorch, --litert) asked of an ONNX source."""
    return (f"{flag}: {file} is lowered from a torch.export program, and an ONNX source has no PyTorch graph; "
            "convert the PyTorch checkpoint instead")
