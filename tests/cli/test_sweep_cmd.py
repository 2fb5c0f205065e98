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
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not read: the folder is refused first")
    result = _run("sweep", ckpt, "-o", out)
    assert result.exit_code == 2 and "not a sweep's folder" in result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_a_checkpoint_that_is_not_one_is_refused(tmp_path):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"not a checkpoint")
    result = _run("sweep", ckpt, "-o", tmp_path / "out")
    assert result.exit_code == 2 and result.output.startswith("error:")
    assert not (tmp_path / "out").exists()


def test_an_unreachable_cluster_is_one_line_and_leaves_no_folder(tmp_path):
    import socket

    import torch

    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import create_model

    kwargs = {"num_classes": 10, "in_chans": 1, "input_size": 8, "width": 4, "blocks": [1, 1]}
    ckpt = save_checkpoint(tmp_path / "w.pt", create_model("widevgg", **kwargs).state_dict(),
                           {"arch": "widevgg", "arch_kwargs": kwargs, "input_shape": [1, 1, 8, 8],
                            "training": {"dataset": "digits"}})
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.set_num_threads(1)
    result = _run("sweep", ckpt, "-o", tmp_path / "out", "--ray-address", f"127.0.0.1:{port}")
    assert result.exit_code == 2 and "cannot reach the Ray cluster" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_input_shape_that_does_not_fit_is_refused_before_ray_starts(tmp_path):
    """--input-shape against each checkpoint's network (issue 22): one line naming what it takes."""
    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import create_model

    kwargs = {"num_classes": 10, "in_chans": 1, "input_size": 8, "width": 4, "blocks": [1, 1]}
    ckpt = save_checkpoint(tmp_path / "w.pt", create_model("widevgg", **kwargs).state_dict(),
                           {"arch": "widevgg", "arch_kwargs": kwargs, "input_shape": [1, 1, 8, 8],
                            "training": {"dataset": "digits"}})
    result = _run("sweep", ckpt, "-o", tmp_path / "out", "--input-shape", "1,3,8,8")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "--input-shape 1,3,8,8: the first layer" in result.output and "takes 1 channel, got 3" in result.output
    assert not (tmp_path / "out").exists()
