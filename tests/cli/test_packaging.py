"""Packaging: install_requires takes ranges (the exact pins live in requirements.txt), and one table
of file kinds serves bench, verify, the runners and the help."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from compactify.errors import BadInputError
from compactify.harness.model_files import CHECKPOINT, is_checkpoint
from compactify.targets import TARGETS, runtime_for, target_for

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


def test_the_readme_installs_the_pinned_torch_from_the_cpu_index_on_any_machine():
    """The Makefile's plain pin finds the CPU wheel only where it lies on disk: the README gives the
    install that works anywhere, for the version requirements.txt pins."""
    version = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.MULTILINE).group(1)
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"pip install torch=={version} --index-url https://download.pytorch.org/whl/cpu" in readme
    assert "-r requirements.txt" in (ROOT / "Makefile").read_text()  # the plain pin, as the README says


def test_one_table_of_file_kinds(tmp_path):
    from compactify.harness.bench import resolve_models

    suffixes = [s for t in TARGETS.values() for s in t.suffixes] + list(CHECKPOINT.suffixes)
    assert len(suffixes) == len(set(suffixes))
    assert is_checkpoint("x.bin") and is_checkpoint("x.pt")  # .bin is a checkpoint everywhere
    for target in TARGETS.values():
        assert target_for(f"m{target.suffixes[0]}") is target
        assert runtime_for(f"m{target.suffixes[0]}") == target.runtime
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
    assert target_for(odd).name == "pt2"


def test_help_shows_the_table():
    from clihelp import run

    for command in ("bench", "verify"):
        r = run(command, "--help", env={"COLUMNS": "80"})
        assert r.exit_code == 0
        text = " ".join(r.stdout.split())
        for kind in [*TARGETS.values(), CHECKPOINT]:
            assert " ".join(kind.suffixes) in text and kind.description.split()[0] in text
        assert max(len(line) for line in r.stdout.splitlines()) <= 80


def test_the_command_list_is_each_commands_own_help_and_imports_no_command():
    """`compactify --help` lists the commands from cli.SHORT_HELP, so that it imports none of them (they
    import torch and ONNX); each line is what the command's own help would give at 80 columns."""
    import subprocess
    import sys

    import click

    from compactify.cli import COMMANDS, SHORT_HELP, main

    code = ("import sys; from compactify.cli import main; main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in ('torch', 'onnx', 'compactify.harness') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert set(SHORT_HELP) == set(COMMANDS)
    ctx = click.Context(main)
    width = 80 - 6 - max(map(len, COMMANDS))  # what click's help formatter leaves for the text at 80 columns
    for name in COMMANDS:
        assert main.get_command(ctx, name).get_short_help_str(width) == SHORT_HELP[name], name
