"""What a file really is, from its bytes: the loader never trusts the suffix.

``detect(path)`` reads the first 64 KiB (and, for a zip, its directory) and names the format:
a ``torch.save`` zip archive or legacy pickle, a ``torch.export`` .pt2 archive, safetensors,
ONNX (protobuf), a git-lfs pointer, a NumPy .npz/.npy, HDF5, gzip, tar, an HTML page, JSON or
other text, or unrecognised bytes. ``describe`` gives the one sentence an error message needs.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

HEAD = 1 << 16
# torch.save's legacy (non-zip) format opens with this pickled magic number.
_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
CHECKPOINT_KINDS = ("torch", "pt2", "safetensors")


@dataclasses.dataclass(frozen=True)
class Content:
    kind: str  # torch, pt2, safetensors, pickle, onnx, npz, zip, git-lfs, html, json, text, hdf5, npy, gzip, tar, empty, binary
    what: str  # "a torch.save zip archive", ... (for messages)
    damaged: str | None = None  # why the archive cannot be read, when it is recognisably one but broken
    members: tuple[str, ...] = ()

    @property
    def is_checkpoint(self) -> bool:
        return self.kind in CHECKPOINT_KINDS


def detect(path: str | Path) -> Content:
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(HEAD)
    if not head:
        return Content("empty", "an empty file")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _zip(path, head)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        if head[2:14] == _LEGACY_MAGIC:
            return Content("torch", "a torch.save file in the legacy (pre-1.6) format")
        return Content("pickle", "a plain Python pickle (not written by torch.save)")
    st = _safetensors(head, size)
    if st is not None:
        return st
    if head.startswith(b"version https://git-lfs.github.com/spec/"):
        return _lfs(head)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return Content("hdf5", "an HDF5 file (Keras/TensorFlow weights)")
    if head.startswith(b"\x93NUMPY"):
        return Content("npy", "a NumPy .npy array")
    if head.startswith(b"\x1f\x8b"):
        return Content("gzip", "a gzip-compressed file (unpack it first)")
    if len(head) > 262 and head[257:262] == b"ustar":
        return Content("tar", "a tar archive (unpack it first)")
    if _looks_onnx(head, size):
        return Content("onnx", "an ONNX model (protobuf)")
    text = _text(head)
    if text is not None:
        stripped = text.lstrip().lower()
        if stripped.startswith(("<!doctype html", "<html", "<head")):
            return Content("html", "an HTML web page")
        if stripped.startswith(("{", "[")) and _json(text, size):
            return Content("json", "a JSON text file")
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
        snippet = first[:40] + ("..." if len(first) > 40 else "")
        return Content("text", f"a text file (it starts with {snippet!r})")
    return Content("binary", f"unrecognised binary data (it starts with bytes {head[:8].hex(' ')})")


def _zip(path: Path, head: bytes) -> Content:
    damaged = None
    try:
        with zipfile.ZipFile(path) as zf:
            names = tuple(zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        damaged = f"it is truncated or damaged (its zip directory is unreadable: {exc})"
        names = _first_member(head)
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        kind, what = "torch", "a torch.save zip archive"
    elif any(n.endswith(("/archive_format", "/models/model.json")) or "/data/weights/" in n
             or "/serialized_exported_program" in n or n.endswith("/archive_version") for n in names):
        kind, what = "pt2", "a torch.export program (.pt2 archive)"
    elif names and all(n.endswith(".npy") for n in names):
        kind, what = "npz", "a NumPy .npz archive of arrays"
    else:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        kind, what = "zip", f"a zip archive that is not a PyTorch checkpoint (it holds {shown or 'nothing'})"
    return Content(kind, what, damaged, names)


def _first_member(head: bytes) -> tuple[str, ...]:
    """The name in the first local file header, when the zip directory at the end is missing."""
    if len(head) < 30 or not head.startswith(b"PK\x03\x04"):
        return ()
    n = int.from_bytes(head[26:28], "little")
    return (head[30:30 + n].decode("utf-8", "replace"),) if n else ()


def _safetensors(head: bytes, size: int) -> Content | None:
    if len(head) < 10:
        return None
    n = int.from_bytes(head[:8], "little")
    if not (2 <= n <= size - 8) or head[8:9] != b"{":
        return None
    if n + 8 <= len(head):
        try:
            header = json.loads(head[8:8 + n].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return Content("safetensors", "a safetensors file", "its JSON header is damaged")
        if not isinstance(header, dict):
            return Content("safetensors", "a safetensors file", "its header is not a JSON object")
        end = max((v.get("data_offsets", [0, 0])[1] for k, v in header.items()
                   if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("data_offsets"), list)
                   and len(v["data_offsets"]) == 2 and isinstance(v["data_offsets"][1], int)), default=0)
        if 8 + n + end > size:
            return Content("safetensors", "a safetensors file",
                           f"it is truncated: the header promises {8 + n + end:,} bytes, the file has {size:,}")
    return Content("safetensors", "a safetensors file")


def _lfs(head: bytes) -> Content:
    size = None
    for line in head.decode("utf-8", "replace").splitlines():
        if line.startswith("size "):
            size = line[5:].strip()
    real = f" to a {int(size):,}-byte file" if size and size.isdigit() else ""
    return Content("git-lfs", f"a git-lfs pointer{real} that was never downloaded")


def _varint(data: bytes, i: int) -> tuple[int, int] | None:
    value = shift = 0
    while i < len(data) and shift < 64:
        b = data[i]
        value |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return value, i
        shift += 7
    return None


# ModelProto's top-level fields and their wire types (0 varint, 2 length-delimited).
_ONNX_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}


def _looks_onnx(head: bytes, size: int) -> bool:
    """ONNX models open with ir_version (field 1) and a few more ModelProto fields that parse."""
    if len(head) < 4 or head[0] != 0x08:
        return False
    i, fields = 0, 0
    while i < len(head) and fields < 6:
        tag = _varint(head, i)
        if tag is None:
            return False
        key, i = tag
        number, wire = key >> 3, key & 7
        if _ONNX_FIELDS.get(number) != wire:
            return False
        value = _varint(head, i)
        if value is None:
            return False
        v, i = value
        if fields == 0 and not (number == 1 and 1 <= v <= 64):
            return False
        if wire == 2:
            if v > size:
                return False
            if number == 7:  # the graph: enough evidence
                return True
            i += v
        fields += 1
    return fields >= 2


def _text(head: bytes) -> str | None:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut at the end of the read is fine
            return None
        text = head[:exc.start].decode("utf-8")
    if not text:
        return None
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    return text if printable / len(text) > 0.97 else None


def _json(text: str, size: int) -> bool:
    if size > HEAD:
        return True  # too long to parse here; it opens like JSON
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def is_onnx(path: str | Path) -> bool:
    """An ONNX model by its content, or by its name when its content is too damaged to tell (so
    that a truncated model.onnx is reported as a broken ONNX file, not as a bad checkpoint)."""
    path = Path(path)
    if not path.is_file():
        return path.suffix.lower() == ".onnx"
    return detect(path).kind == "onnx" or path.suffix.lower() == ".onnx"
