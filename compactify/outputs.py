"""Write output folders and files atomically: a temporary sibling renamed at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from compactify.errors import BadInputError


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes ``target`` only if the block succeeds."""
    target = Path(target)
    if target.exists() and not force:
        raise BadInputError(f"output folder {target} already exists; pass --force to overwrite it")
    if target.exists() and not target.is_dir():
        raise BadInputError(f"output path {target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; it replaces ``target`` only on success."""
    target = Path(target)
    if target.exists() and not force:
        raise BadInputError(f"output file {target} already exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
