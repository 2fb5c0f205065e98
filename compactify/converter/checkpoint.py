"""Read and write checkpoints: state_dicts (.pt/.pth, .safetensors), torch.export programs (.pt2).

Loading never runs pickled code unless the caller says the file is trusted: ``.pt`` files
go through ``torch.load(weights_only=True)`` and a refusal becomes a clear error that
names ``--trust-pickle``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compactify.errors import BadInputError, first_line
from compactify.outputs import atomic_file

META_KEY = "compactify"
PT2_META_FILE = "compactify.json"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


@dataclass
class Checkpoint:
    path: Path
    format: str  # "state_dict", "safetensors", "pt2" or "module"
    sha256: str
    state_dict: dict[str, torch.Tensor] | None = None
    exported: Any = None  # torch.export.ExportedProgram
    module: nn.Module | None = None
    meta: dict = field(default_factory=dict)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise BadInputError(f"checkpoint {path} is a folder, not a file")
    if path.stat().st_size == 0:
        raise BadInputError(f"checkpoint {path} is empty")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        ckpt = _load_safetensors(path)
    elif suffix == ".pt2":
        ckpt = _load_pt2(path)
    else:
        ckpt = _load_torch(path, trust_pickle)
    ckpt.sha256 = sha256_of(path)
    return ckpt


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise BadInputError(f"checkpoint {path} is not a readable safetensors file ({first_line(exc)})") from None
    meta = _parse_meta(header.get(META_KEY), path)
    return Checkpoint(path, "safetensors", "", state_dict=strip_prefix(state), meta=meta)


def _load_pt2(path: Path) -> Checkpoint:
    extra = {PT2_META_FILE: ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # torch raises many kinds for a damaged archive
        raise BadInputError(f"checkpoint {path} is not a readable torch.export program ({first_line(exc)})") from None
    meta = _parse_meta(extra.get(PT2_META_FILE) or None, path)
    return Checkpoint(path, "pt2", "", exported=program, meta=meta)


def _load_torch(path: Path, trust_pickle: bool) -> Checkpoint:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise BadInputError(f"checkpoint {path} is truncated or corrupt ({first_line(exc)})") from None
        if not trust_pickle:
            raise BadInputError(
                f"checkpoint {path} contains pickled Python objects (for example a whole nn.Module) that can run "
                "code when loaded; re-save it as a state_dict, or pass --trust-pickle if you trust its source"
            ) from None
        obj = _load_trusted(path)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError) as exc:
        raise BadInputError(f"checkpoint {path} is truncated or corrupt ({first_line(exc)})") from None
    return _unwrap(obj, path)


def _load_trusted(path: Path) -> Any:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling: anything can go wrong, report it in one line
        raise BadInputError(f"checkpoint {path} could not be unpickled ({first_line(exc)})") from None


def _unwrap(obj: Any, path: Path) -> Checkpoint:
    meta: dict = {}
    if isinstance(obj, nn.Module):
        return Checkpoint(path, "module", "", module=obj)
    if not isinstance(obj, dict):
        raise BadInputError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or a model")
    if isinstance(obj.get(META_KEY), dict):
        meta = obj[META_KEY]
    inner = obj
    for key in _WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], (dict, nn.Module)):
            inner = obj[key]
            break
    if isinstance(inner, nn.Module):
        return Checkpoint(path, "module", "", module=inner, meta=meta)
    state = {k: v for k, v in inner.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise BadInputError(f"checkpoint {path} holds no tensors: expected a state_dict")
    return Checkpoint(path, "state_dict", "", state_dict=strip_prefix(state), meta=meta)


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix when every key has it."""
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _parse_meta(text: str | None, path: Path) -> dict:
    if not text:
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise BadInputError(f"checkpoint {path} carries unreadable compactify metadata") from None
    return meta if isinstance(meta, dict) else {}


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict, force: bool = True) -> Path:
    """Write a state_dict with its metadata, atomically (.safetensors, else a torch .pt file)."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_file(path, force=force) as tmp:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
        else:
            torch.save({"state_dict": state, META_KEY: meta}, str(tmp))
    return path
