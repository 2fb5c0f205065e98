"""Shared helpers of the CLI tests: run the command in-process or as a real process, check the
one-line error contract, and snapshot folders to prove that nothing pre-existing changed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.load.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
# A tiny registry net with its metadata: convert needs no --arch, and it contracts in about a second.
TINY_META = {"arch": "smallnet7", "arch_kwargs": {"input_size": 8, "width": 0.25, "hidden": 8}, "expand": "ck+fc",
             "rate": 2, "input_shape": [1, 3, 8, 8]}


def tiny_checkpoint(path: Path) -> Path:
    from compactify.models import build_model

    torch.manual_seed(0)
    return save_checkpoint(path, build_model(TINY_META).state_dict(), TINY_META)


def run(*args, env: dict | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def error_line(result, *needles: str, code: int = 2) -> str:
    """The result failed with ``code`` and printed exactly one line, ``error: ...``, on stderr and nothing else."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(*folders: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``folders``, with the bytes of each file (None for a folder)."""
    out: dict[str, bytes | None] = {}
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            for d in dirnames:
                out[os.path.join(dirpath, d)] = None
            for f in filenames:
                p = os.path.join(dirpath, f)
                out[p] = Path(p).read_bytes()
    return out


def process(*args: str, cwd: Path | None = None) -> subprocess.Popen:
    """``python -m compactify ARGS`` as a real process (for signals and concurrency)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", COLUMNS="100")
    return subprocess.Popen([sys.executable, "-m", "compactify", *map(str, args)], cwd=cwd or ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
