"""Packaging: install_requires takes ranges (the exact pins live in requirements.txt), and one table
of file kinds serves bench, verify, the runners and the help."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from compactify.errors import BadInputError
from compactify.runtimes import guess_runtime
from compactify.runtimes.kinds import FILE_KINDS, kind_of

ROOT = Path(__file__).resolve().parents[2]


def _requirements() -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return [line.strip() for line in cfg["options"]["install_requires"].splitlines() if line.strip()]


def test_install_requires_takes_ranges_and_requirements_txt_pins():
    reqs = _requirements()
    assert reqs and not [r for r in reqs if "==" in r], reqs
    torch_req = next(r for r in reqs if re.match(r"torch\b", r))
    low = re.search(r">=\s*(\d+)\.(\d+)", torch_req)
    assert low and (int(low.group(1)), int(low.group(2))) <= (2, 13)  # the tested version is inside the range
    pinned = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^torch==\d", pinned, re.M)


def test_one_table_of_file_kinds(tmp_path):
    from compactify.harness.bench import resolve_models

    suffixes = [s for k in FILE_KINDS for s in k.suffixes]
    assert len(suffixes) == len(set(suffixes))
    assert kind_of("x.bin").name == kind_of("x.pt").name == "checkpoint"  # .bin is a checkpoint everywhere
    for kind in FILE_KINDS:
        if kind.name != "checkpoint":
            assert guess_runtime(f"m{kind.suffixes[0]}") == kind.runtime
    ckpt = tmp_path / "pytorch_model.bin"
    ckpt.write_bytes(b"x")
    assert resolve_models([ckpt])[0].runtime == "torch"
    with pytest.raises(BadInputError, match="cannot benchmark notes.txt"):
        (tmp_path / "notes.txt").write_text("hi")
        resolve_models([tmp_path / "notes.txt"])


def test_an_unknown_suffix_is_read_by_content(tmp_path):
    import torch

    src = tmp_path / "a.pt2"
    torch.export.save(torch.export.export(torch.nn.Linear(2, 2), (torch.randn(2, 2),)), src)
    odd = tmp_path / "model.weights"
    odd.write_bytes(src.read_bytes())
    assert kind_of(odd).name == "pt2"


def test_help_shows_the_table():
    from clihelp import run

    for command in ("bench", "verify"):
        r = run(command, "--help", env={"COLUMNS": "80"})
        assert r.exit_code == 0
        text = " ".join(r.stdout.split())
        for kind in FILE_KINDS:
            assert " ".join(kind.suffixes) in text and kind.description.split()[0] in text
        assert max(len(line) for line in r.stdout.splitlines()) <= 80
