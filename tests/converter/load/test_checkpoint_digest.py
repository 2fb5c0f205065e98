"""A checkpoint's sha256 is hashed on a thread of its own while the conversion starts, and is the file's."""

from __future__ import annotations

import hashlib

import pytest
import torch

from compactify.converter.load.checkpoint import FileDigest, load_checkpoint, save_checkpoint
from compactify.errors import BadInputError


def test_the_digest_is_the_files_sha256_whenever_it_is_read(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.randn(256, 256)}, {"arch": "smallnet7"})
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.digest, FileDigest)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert ckpt.sha256 == expected and ckpt.sha256 == expected  # read twice: the same


def test_a_file_that_cannot_be_read_when_hashed_is_one_clear_error(tmp_path):
    folder = tmp_path / "replaced-by-a-folder.pt"  # what a file swapped for a folder meanwhile reads as
    folder.mkdir()
    with pytest.raises(BadInputError, match="cannot be read"):
        FileDigest(folder).result()
