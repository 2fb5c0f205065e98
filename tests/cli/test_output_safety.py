"""Output safety: a conversion never deletes, moves or changes a file it did not create.

Refusals of dangerous ``-o`` folders, one winner between concurrent runs, interrupts that leave
nothing behind (real processes, real signals), read-only parents, and permissions from the umask.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from compactify.errors import BadInputError
from compactify.outputs import atomic_dir, atomic_file

from clihelp import error_line, process, run, snapshot, tiny_checkpoint


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A checkpoint and a previous compactify output of it."""
    root = tmp_path_factory.mktemp("safety")
    ckpt = tiny_checkpoint(root / "ckpts" / "model.safetensors")
    out = root / "prev"
    r = run("convert", ckpt, "-o", out, "--no-onnx")
    assert r.exit_code == 0, r.output
    return ckpt, out


@pytest.fixture
def ckpts(tmp_path, converted):
    """A user's folder: the checkpoint and notes of their own, copied fresh for each test."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    ckpt = folder / "model.safetensors"
    ckpt.write_bytes(converted[0].read_bytes())
    (folder / "notes.txt").write_text("mine\n")
    return ckpt


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".compactify-lock")
                  or ".old-" in p.name)


@pytest.mark.parametrize("where,needle", [
    ("input_folder", "holds the input"),       # -o is the folder of the checkpoint
    ("parent_of_input_folder", "holds the input"),  # -o contains the checkpoint's folder
    ("cwd", "holds the input"),                # -o . where . holds the checkpoint
    ("user_folder_inside", "not a compactify output"),  # -o lies inside the input's folder, a folder of the user's
])
def test_force_never_replaces_a_folder_holding_inputs_or_user_files(ckpts, tmp_path, monkeypatch, where, needle):
    folder = ckpts.parent
    (folder / "mine").mkdir()
    (folder / "mine" / "data.csv").write_text("1,2\n")
    target = {"input_folder": folder, "parent_of_input_folder": tmp_path, "cwd": Path("."),
              "user_folder_inside": folder / "mine"}[where]
    monkeypatch.chdir(folder)
    before = snapshot(tmp_path)
    r = run("convert", ckpts, "-o", target, "--force", "--no-onnx")
    error_line(r, needle, "choose another -o")
    assert snapshot(tmp_path) == before


def test_force_replaces_a_previous_output_inside_the_input_folder(ckpts):
    out = ckpts.parent / "out"
    assert run("convert", ckpts, "-o", out, "--no-onnx").exit_code == 0
    first = json.loads((out / "report.json").read_text())
    r = run("convert", ckpts, "-o", out, "--force")  # now with compact.onnx too
    assert r.exit_code == 0, r.output
    assert (out / "compact.onnx").is_file() and json.loads((out / "report.json").read_text())["source"] == first["source"]
    assert _leftovers(ckpts.parent) == [] and (ckpts.parent / "notes.txt").read_text() == "mine\n"


def test_a_previous_output_that_holds_the_input_is_refused(converted, tmp_path):
    out = tmp_path / "out"
    assert run("convert", converted[0], "-o", out, "--no-onnx").exit_code == 0
    before = snapshot(tmp_path)
    error_line(run("convert", out / "compact.pt2", "-o", out, "--force", "--no-onnx"), "holds the input")
    assert snapshot(tmp_path) == before


def test_previous_output_with_a_user_file_added_is_refused(converted, tmp_path):
    out = tmp_path / "out"
    assert run("convert", converted[0], "-o", out, "--no-onnx").exit_code == 0
    (out / "my_notes.md").write_text("keep me\n")
    before = snapshot(tmp_path)
    error_line(run("convert", converted[0], "-o", out, "--force", "--no-onnx"), "my_notes.md",
               "which compactify did not write")
    assert snapshot(tmp_path) == before


def test_existing_output_without_force_is_refused_and_says_force(converted, tmp_path):
    out = tmp_path / "out"
    assert run("convert", converted[0], "-o", out, "--no-onnx").exit_code == 0
    before = snapshot(tmp_path)
    error_line(run("convert", converted[0], "-o", out, "--no-onnx"), "already exists", "--force")
    assert snapshot(tmp_path) == before


def test_an_existing_empty_folder_is_written_without_force(converted, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    r = run("convert", converted[0], "-o", out, "--no-onnx")
    assert r.exit_code == 0, r.output
    assert (out / "report.json").is_file() and _leftovers(tmp_path) == []


def test_output_that_is_a_file_or_a_symlink_is_refused(converted, tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    before = snapshot(tmp_path)
    error_line(run("convert", converted[0], "-o", tmp_path / "file", "--force", "--no-onnx"), "is a file")
    error_line(run("convert", converted[0], "-o", tmp_path / "link", "--force", "--no-onnx"), "symbolic link")
    assert snapshot(tmp_path) == before


def test_failure_leaves_no_temporary_folder_and_no_created_parent(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    before = snapshot(tmp_path)
    error_line(run("convert", bad, "-o", tmp_path / "new" / "deeper" / "out"), "bad.pt")
    assert snapshot(tmp_path) == before


def test_read_only_parent_is_one_line_and_writes_nothing(converted, tmp_path):
    if os.geteuid() != 0:
        parent = tmp_path / "ro"
        parent.mkdir()
        parent.chmod(0o555)
        target = parent / "out"
    elif not os.access("/sys", os.W_OK) or _cannot_create_in("/sys"):
        parent, target = Path("/sys"), Path("/sys/compactify-out")  # root ignores modes; sysfs refuses new files
    else:  # pragma: no cover
        pytest.skip("running as root and no read-only folder to write into")
    try:
        error_line(run("convert", converted[0], "-o", target, "--no-onnx"), "cannot write in", "permission denied")
        assert not target.exists()
        error_line(run("convert", converted[0], "-o", target / "a" / "b", "--no-onnx"), "permission denied")
    finally:
        if parent != Path("/sys"):
            parent.chmod(0o755)


def _cannot_create_in(folder: str) -> bool:
    try:
        fd = os.open(os.path.join(folder, ".compactify-probe"), os.O_CREAT | os.O_WRONLY, 0o600)
    except OSError:
        return True
    os.close(fd)
    os.unlink(os.path.join(folder, ".compactify-probe"))
    return False


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_permissions_follow_the_umask(converted, tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "made" / "out"
        r = run("convert", converted[0], "-o", out, "--no-onnx")
        assert r.exit_code == 0, r.output
        with atomic_file(tmp_path / "file.json") as tmp:
            tmp.write_text("{}")
        # safetensors writes a file of its own in place of the temporary one (mode 0600)
        r = run("expand", "smallnet3", "--mode", "fc", "-o", tmp_path / "e.safetensors")
        assert r.exit_code == 0, r.output
    finally:
        os.umask(old)
    for folder in (tmp_path / "made", out):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~mask
    for f in [*out.iterdir(), tmp_path / "file.json", tmp_path / "e.safetensors"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f


def test_a_second_run_into_a_target_being_written_is_refused(converted, tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "report.json").write_text("{}")
        error_line(run("convert", converted[0], "-o", target, "--no-onnx"), "another compactify process",
                   str(os.getpid()))
        error_line(run("convert", converted[0], "-o", target, "--no-onnx", "--force"), "another compactify process")
    assert sorted(p.name for p in target.iterdir()) == ["report.json"] and _leftovers(tmp_path) == []


def test_a_target_written_by_someone_else_meanwhile_is_kept(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(BadInputError, match="changed while this run worked"):
        with atomic_dir(target) as tmp:
            (tmp / "report.json").write_text("{}")
            target.mkdir()
            (target / "theirs.txt").write_text("theirs")
    assert [p.name for p in target.iterdir()] == ["theirs.txt"] and _leftovers(tmp_path) == []


def test_atomic_file_never_overwrites_an_input_or_without_force(tmp_path):
    src = tmp_path / "model.onnx"
    src.write_bytes(b"onnx")
    with pytest.raises(BadInputError, match="also an input"):
        with atomic_file(src, force=True, inputs=[src]) as tmp:
            tmp.write_bytes(b"json")
    with pytest.raises(BadInputError, match="already exists"):
        with atomic_file(src, force=False) as tmp:
            tmp.write_bytes(b"json")
    with pytest.raises(BadInputError, match="another process"):
        with atomic_file(tmp_path / "new.json", force=False) as tmp:
            tmp.write_text("mine")
            (tmp_path / "new.json").write_text("theirs")
    assert src.read_bytes() == b"onnx" and (tmp_path / "new.json").read_text() == "theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "new.json"]


# ---------------------------------------------------------------------------------------
# Real processes


def test_two_concurrent_conversions_have_one_winner_and_one_refusal(converted, tmp_path):
    target = tmp_path / "out"
    procs = [process("convert", converted[0], "-o", target, "--no-onnx") for _ in range(2)]
    results = [(p.wait(timeout=240), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert len(loser.splitlines()) == 1 and loser.startswith("error: "), loser
    assert "another compactify process" in loser or "already exists" in loser, loser
    report = json.loads((target / "report.json").read_text())
    assert sorted(p.name for p in target.iterdir()) == ["compact.pt2", "report.json", "report.md"]
    assert report["artifacts"] == {"pt2": "compact.pt2"} and _leftovers(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupt_mid_conversion_leaves_nothing_behind(converted, tmp_path, sig):
    target = tmp_path / "new" / "out"
    before = snapshot(tmp_path)
    proc = process("convert", converted[0], "-o", target)
    # The temporary folder is made once the target is claimed and before any of the work, so a signal
    # sent as soon as it appears lands inside the conversion however fast the machine is (a fixed sleep
    # after the lock let a quick CI machine finish first).
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("new/.out.tmp-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    _, err = proc.communicate()
    assert code == 128 + sig, (code, err)
    assert err.splitlines() == [f"error: interrupted ({signal.Signals(sig).name})"], err
    assert snapshot(tmp_path) == before  # no temporary folder, no lock file, no created parent


@pytest.mark.parametrize("target", [".", ".."])
def test_demo_never_takes_the_current_folder_or_its_parents(tmp_path, monkeypatch, target):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    error_line(run("demo", "-o", target, "--force"), "needs a folder of its own")
    assert snapshot(tmp_path) == before


def test_engine_never_overwrites_its_onnx_input(tmp_path):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"not really onnx")
    before = snapshot(tmp_path)
    error_line(run("engine", onnx_file, "-o", onnx_file, "--force"), "also an input")
    error_line(run("engine", onnx_file, "--max-batch", "0"), "'--max-batch'")
    assert snapshot(tmp_path) == before


def test_what_a_killed_run_left_behind_is_cleaned_by_the_next_run_into_the_same_target(tmp_path):
    """A run killed mid-conversion (the OOM killer) leaves its lock file and temporary folder; the lock
    dies with the process, and the next run into the same target removes the folder."""
    out = tmp_path / "out"
    stale = tmp_path / ".out.tmp-killed"
    stale.mkdir()
    (stale / "compact.pt2").write_bytes(b"half written")
    (tmp_path / ".out.compactify-lock").write_text("99999999")  # no process holds its flock
    other = tmp_path / ".other.tmp-keep"  # another target's: not this run's to remove
    other.mkdir()
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    r = run("convert", ckpt, "-o", out, "--no-onnx")
    assert r.exit_code == 0, r.output
    assert (out / "compact.pt2").is_file() and not stale.exists() and other.is_dir()
    assert not (tmp_path / ".out.compactify-lock").exists()


def test_an_input_shape_whose_input_alone_is_huge_is_refused_before_it_is_allocated(tmp_path):
    """1,3,16000,16000 on an 8x8 net: the input alone is 11 GB; it is refused in one line from a run on
    the meta device (the capture would have allocated it, and an eager run to name the rejection far more)."""
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors")
    before = snapshot(tmp_path)
    r = run("convert", ckpt, "-o", tmp_path / "out", "--input-shape", "1,3,16000,16000", "--max-memory", "20GB")
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "16000" in r.stderr and "built for 8x8 inputs" in r.stderr and snapshot(tmp_path) == before


def test_a_signal_handed_to_another_thread_waits_for_the_commit_too():
    """The kernel may give a process-directed signal to any thread whose mask lets it in (torch's
    workers): the handler then runs in the main thread at once, inside the deferred block."""
    from compactify.cli import Interrupted
    from compactify.outputs import signals_deferred

    go, done = threading.Event(), threading.Event()

    def worker():  # started before the block, so its mask lets SIGINT in
        go.wait(10)
        signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        done.set()

    steps = []
    with Interrupted.handled():
        thread = threading.Thread(target=worker)
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                go.set()
                assert done.wait(10)
                for _ in range(1000):  # bytecodes for the handler to run on, had it not been deferred
                    time.sleep(0)
                steps.append("committed")
        thread.join()
    assert steps == ["committed"] and Interrupted.received == signal.SIGINT
