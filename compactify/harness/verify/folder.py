"""A `compactify convert` folder as verify reads it: report.json checked, and the source network rebuilt
exactly as the conversion saw it (a PyTorch checkpoint or an ONNX file, with its --outputs selection),
refused when it moved or changed since, since a changed reference would prove nothing."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
import torch

from compactify.arguments import CONVERT_FOLDER_HINT, existing_path
from compactify.converter.frontends.fx.capture import select_outputs
from compactify.converter.frontends.fx.check import example_input
from compactify.converter.frontends.onnx.prepare import (
    select_outputs as select_onnx_outputs,
)
from compactify.converter.frontends.onnx.read import read_onnx
from compactify.converter.load.checkpoint import load_checkpoint
from compactify.converter.load.ingest import build_source
from compactify.errors import BadInputError

REQUIRED_KEYS = ("source", "input_shape", "output_names")


def load_report(outdir: str | Path) -> dict:
    outdir = Path(outdir)
    existing_path(outdir, "folder", CONVERT_FOLDER_HINT)
    if not outdir.is_dir():
        beside = outdir.with_suffix(".report.json")
        if outdir.suffix.lower() == ".onnx" and beside.is_file():  # `convert MODEL.onnx -o FILE.onnx` wrote it
            raise BadInputError(f"{outdir} is a compact model written as a file ({beside.name} beside it); "
                                f"{_file_form_advice(beside, outdir)}")
        raise BadInputError(f"{outdir} is not a folder; give the output folder of `compactify convert`")
    path = outdir / "report.json"
    if not path.is_file():
        raise BadInputError(f"{outdir} has no report.json: is it the output folder of `compactify convert`?")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not valid JSON ({exc}); convert again") from None
    for key in REQUIRED_KEYS:
        if key not in report:
            raise BadInputError(f"{path} lacks {key!r}; it was not written by `compactify convert` (convert again)")
    if not isinstance(report["source"], dict) or not report["source"].get("checkpoint"):
        raise BadInputError(f"{path} does not name its source checkpoint; convert again")
    return report


def _file_form_advice(report_file: Path, model: Path) -> str:
    """How to verify a model that `convert` wrote as a file: against its source directly, when the
    source as a whole is the reference (no --outputs, no --rank), else through the folder form."""
    try:
        report = json.loads(report_file.read_text())
        source = report["source"]
        whole = not source.get("outputs") and report.get("truncation") is None
        checkpoint = source["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        whole, checkpoint = False, None
    if whole and checkpoint:
        return f"verify it with `compactify verify --reference {checkpoint} --candidate {model}`"
    return "verify needs the folder form: convert again with -o FOLDER, then `compactify verify FOLDER`"


def rebuild_source(report: dict) -> tuple[torch.nn.Module, tuple[int, ...], dict[str, Any]]:
    """The PyTorch source model (eval, float32) exactly as the conversion saw it, its input shape and metadata."""
    src = report["source"]
    path = Path(src["checkpoint"])
    if not path.exists():
        raise BadInputError(f"the source checkpoint {path} named in report.json no longer exists; "
                            "verification needs it as the reference")
    ckpt = load_checkpoint(path, trust_pickle=bool(src.get("trust_pickle")))
    if src.get("sha256") and ckpt.sha256 != src["sha256"]:
        raise BadInputError(f"the source checkpoint {path} changed since the conversion (sha256 differs); "
                            "convert it again before verifying")
    if ckpt.format in ("state_dict", "safetensors") and isinstance(src.get("meta"), dict) and src["meta"].get("arch"):
        ckpt.meta = dict(src["meta"])  # what the conversion used, --arch/--arch-kwargs included
    shape = tuple(int(d) for d in report["input_shape"])
    source = build_source(ckpt, None, None, shape)
    model = select_outputs(source.model, src.get("outputs"), example_input(shape))
    return model.eval(), shape, source.meta


def read_onnx_source(report: dict) -> tuple[onnx.ModelProto, Path]:
    """The ONNX source model with the outputs the conversion kept, and where it lies."""
    src = report["source"]
    path = Path(src["checkpoint"])
    if not path.is_file():
        raise BadInputError(f"the source model {path} named in report.json no longer exists; verification needs it "
                            "as the reference")
    if src.get("sha256") and hashlib.sha256(path.read_bytes()).hexdigest() != src["sha256"]:
        raise BadInputError(f"the source model {path} changed since the conversion (sha256 differs); convert it "
                            "again before verifying")
    model = read_onnx(path)
    select_onnx_outputs(model, src.get("outputs"))
    return model, path
