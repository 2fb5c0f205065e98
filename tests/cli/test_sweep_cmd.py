"""``compactify sweep`` on the command line: bad input is one line and exit 2, before Ray starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from compactify.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sweep_is_a_command():
    result = _run("sweep", "--help")
    assert result.exit_code == 0
    for option in ("--rank", "--int8", "--fp16", "--data", "--runtime", "--batch", "--max-accuracy-drop",
                   "--ray-address", "--bench-resource"):
        assert option in result.output


@pytest.mark.parametrize("args, message", [
    (["missing.pt"], "does not exist"),
    (["CKPT", "--rank", "flops:7"], "fraction"),
    (["CKPT", "--runtime", "torch", "--int8"], "use --runtime ort"),
    (["CKPT", "--batch", "0"], "positive integers"),
    (["CKPT", "--max-accuracy-drop", "-1"], "max-accuracy-drop"),
    (["CKPT", "--num-cpus", "2", "--ray-address", "auto"], "local Ray"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not a checkpoint")
    args = [str(ckpt) if a == "CKPT" else a for a in args]
    result = _run("sweep", *args, "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_folder_of_someone_elses_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    result = _run("sweep", tmp_path / "c.pt", "-o", out)
    assert result.exit_code == 2 and "not a sweep's folder" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_checkpoint_that_is_not_one_is_refused(tmp_path):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not a checkpoint")
    result = _run("sweep", ckpt, "-o", tmp_path / "out")
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert not (tmp_path / "out").exists()
