"""Read and write checkpoints: state_dicts (.pt/.pth, .safetensors), torch.export programs (.pt2).

Loading never runs pickled code unless the caller says the file is trusted: ``.pt`` files
go through ``torch.load(weights_only=True)`` and a refusal becomes a clear error that
names ``--trust-pickle``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import re
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from compactify.converter.load.sniff import detect
from compactify.errors import BadInputError, first_line
from compactify.models.metadata import PT2_META_FILE, CheckpointMeta, validate_meta
from compactify.outputs import atomic_file

META_KEY = "compactify"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


@dataclass
class Checkpoint:
    path: Path
    format: str  # "state_dict", "safetensors", "pt2" or "module"
    digest: "str | FileDigest"  # the file's sha256, or the hashing of it still under way
    state_dict: dict[str, torch.Tensor] | None = None
    exported: Any = None  # torch.export.ExportedProgram
    module: nn.Module | None = None
    meta: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return digest_value(self.digest)


class FileDigest:
    """A file's sha256, hashed by a thread of its own: hashlib lets go of the GIL while it hashes, so a
    large checkpoint's digest (0.6 s a GB here) is made on the other core while the conversion starts."""

    def __init__(self, path: Path):
        self._value: str | None = None
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, args=(path,), daemon=True, name="sha256")
        self._thread.start()

    def _run(self, path: Path) -> None:
        try:
            self._value = sha256_of(path)
        except OSError as exc:
            self._error = exc

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise BadInputError(f"checkpoint {self._error.filename} cannot be read ({self._error.strerror})")
        return self._value


def digest_value(digest: "str | FileDigest | None") -> str | None:
    """A sha256 as text, once its hashing (a ``FileDigest``) has finished."""
    return digest.result() if isinstance(digest, FileDigest) else digest


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_HINTS = {
    "onnx": "compactify converts PyTorch checkpoints and torch.export programs; to check an ONNX model against "
            "one, use `compactify verify --reference CHECKPOINT --candidate FILE.onnx`",
    "git-lfs": "run `git lfs pull` in its repository (or download the file itself) and try again",
    "html": "the download saved a web page instead of the file (on Hugging Face use the /resolve/ link, not /blob/)",
    "npz": "save the weights with torch.save(model.state_dict(), FILE) or safetensors",
    "npy": "save the weights with torch.save(model.state_dict(), FILE) or safetensors",
    "hdf5": "compactify reads PyTorch checkpoints: .pt/.pth/.bin (torch.save), .safetensors or .pt2",
}
_DEFAULT_HINT = "expected a torch.save file (.pt/.pth/.bin), a .safetensors file or a torch.export .pt2 program"


def load_checkpoint(path: str | Path, trust_pickle: bool = False) -> Checkpoint:
    """Load a checkpoint, choosing the reader from the file's content (never its suffix)."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise BadInputError(f"checkpoint {path} is a folder, not a file")
    try:
        content = detect(path)
    except OSError as exc:
        raise BadInputError(f"checkpoint {path} cannot be read ({exc.strerror or exc})") from None
    if content.kind == "empty":
        raise BadInputError(f"checkpoint {path} is empty (0 bytes); save or download it again")
    if content.damaged:
        raise BadInputError(f"checkpoint {path} is {content.what}, but {content.damaged}; save or download it again")
    digest = FileDigest(path)
    if content.kind in ("torch", "pt2") and content.members:  # a zip archive (not the legacy pickle format)
        _check_zip_crc(path, content)
    if content.kind == "safetensors":
        ckpt = _load_safetensors(path)
    elif content.kind == "pt2":
        ckpt = _load_pt2(path)
    elif content.kind == "torch":
        ckpt = _load_torch(path, trust_pickle, content.what)
    elif content.kind == "pickle":
        if not trust_pickle:
            raise BadInputError(f"checkpoint {path} is {content.what}; unpickling it can run code: re-save the weights "
                                "with torch.save(model.state_dict(), FILE), or pass --trust-pickle if you trust its source")
        ckpt = _unwrap(_load_trusted(path), path)
    else:
        hint = _HINTS.get(content.kind, _DEFAULT_HINT)
        raise BadInputError(f"checkpoint {path} is {content.what}, not a PyTorch checkpoint; {hint}")
    ckpt.digest = digest
    return ckpt


def _check_zip_crc(path: Path, content) -> None:
    """Every member's CRC-32: torch does not check them, so a flipped bit in the weights would load."""
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except Exception as exc:  # zipfile raises several kinds for a damaged archive
        raise BadInputError(f"checkpoint {path} is {content.what}, but it is damaged ({first_line(exc)}); "
                            "save or download it again") from None
    if bad is not None:
        raise BadInputError(f"checkpoint {path} is {content.what}, but its member {bad} fails its CRC check: the file "
                            "is damaged; save or download it again")


def _load_safetensors(path: Path) -> Checkpoint:
    try:
        state = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error, OSError, ValueError or a Rust panic
        raise BadInputError(f"checkpoint {path} is a damaged safetensors file ({first_line(exc)}); "
                            "save or download it again") from None
    meta = _parse_meta(header.get(META_KEY), path)
    return Checkpoint(path, "safetensors", "", state_dict=strip_prefix(state), meta=meta)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export.load logs a traceback of a failed attempt before raising; the user gets one line instead."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _load_pt2(path: Path) -> Checkpoint:
    extra = {PT2_META_FILE: ""}
    try:
        with _quiet_torch_logs():
            program = torch.export.load(str(path), extra_files=extra)
    except Exception as exc:  # torch raises many kinds for a damaged archive
        raise BadInputError(f"checkpoint {path} is a torch.export archive that cannot be read ({first_line(exc)}); "
                            "export or download it again") from None
    meta = _parse_meta(extra.get(PT2_META_FILE) or None, path)
    return Checkpoint(path, "pt2", "", exported=program, meta=meta)


def _load_torch(path: Path, trust_pickle: bool, what: str = "a torch.save file") -> Checkpoint:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as fh:  # a file object: torch.load would pick a reader by the name's suffix
                obj = torch.load(fh, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsupported = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if unsupported is None:
            raise BadInputError(f"checkpoint {path} is {what}, but its data is damaged ({_weights_only_reason(exc)}); "
                                "save or download it again") from None
        if not trust_pickle:
            raise BadInputError(
                f"checkpoint {path} contains pickled Python objects ({unsupported.group(1)}, for example a whole "
                "nn.Module) that can run code when loaded; re-save it as a state_dict, or pass --trust-pickle if you "
                "trust its source"
            ) from None
        obj = _load_trusted(path)
    except Exception as exc:  # the weights-only unpickler runs no code: any failure is the file's content
        raise BadInputError(f"checkpoint {path} is {what}, but it cannot be read ({first_line(exc)}); "
                            "save or download it again") from None
    return _unwrap(obj, path)


def _weights_only_reason(exc: Exception) -> str:
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        rest = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
        if rest:
            return rest[0]
    return first_line(exc)


def _load_trusted(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(path, "rb") as fh:
                return torch.load(fh, map_location="cpu", weights_only=False)
    except Exception as exc:  # arbitrary unpickling: anything can go wrong, report it in one line
        raise BadInputError(f"checkpoint {path} could not be unpickled ({type(exc).__name__}: {first_line(exc)})") from None


def _unwrap(obj: Any, path: Path) -> Checkpoint:
    meta: dict = {}
    if isinstance(obj, nn.Module):
        return Checkpoint(path, "module", "", module=obj)
    if not isinstance(obj, dict):
        raise BadInputError(f"checkpoint {path} holds a {type(obj).__name__}, not a state_dict or a model")
    if isinstance(obj.get(META_KEY), dict):
        meta = _checked_meta(obj[META_KEY], path)
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
        raise BadInputError(f"checkpoint {path} carries unreadable compactify metadata (not JSON)") from None
    return _checked_meta(meta, path)


def _checked_meta(meta: Any, path: Path) -> dict:
    """The metadata checked against the schema (compactify.models.metadata); a bad field is bad input."""
    if not isinstance(meta, dict):
        raise BadInputError(f"checkpoint {path} carries compactify metadata that is a {type(meta).__name__}, "
                            "not a JSON object")
    return validate_meta(meta, where=f"checkpoint {path} metadata")


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor], meta: dict, force: bool = True) -> Path:
    """Write a state_dict with its metadata (checked against the schema), atomically (.safetensors, else a
    torch .pt file)."""
    path = Path(path)
    if not isinstance(meta, CheckpointMeta):
        meta = CheckpointMeta.from_dict(meta, where=f"metadata for {path}")
    meta = meta.to_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic_file(path, force=force) as tmp:
        if path.suffix.lower() == ".safetensors":
            save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
        else:
            torch.save({"state_dict": state, META_KEY: meta}, str(tmp))
    return path
