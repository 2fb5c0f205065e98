"""Write output folders and files so that nothing the user had is ever lost.

The guarantee: compactify never deletes, moves or changes a file it did not create.

- A folder is written into a temporary sibling (``.NAME.tmp-*``) and renamed into place only
  when everything in it is complete. Any failure or interrupt removes the temporary folder and
  every parent folder the run created; the target is untouched.
- ``force`` replaces an existing folder only if it is a previous compactify output: it has a
  ``report.json`` written by compactify and holds nothing but the files compactify writes, and
  none of the run's inputs lies inside it. Any other existing folder (the folder that holds the
  checkpoint, ``.``, a folder of your own) is refused, with or without ``force``. An existing
  empty folder is written into without ``force``: there is nothing in it to lose.
- Two runs into one target: a lock file beside the target (``.NAME.compactify-lock``, held with
  ``flock`` and removed at the end) refuses the second at once, and the final rename never
  replaces a folder that appeared meanwhile, so exactly one complete output wins.
- Folders and files get the permissions the user's umask gives (not ``mkdtemp``'s 0700).
- Files (``atomic_file``) are written the same way: a temporary sibling renamed over the target;
  without ``force`` the rename never replaces a file that appeared meanwhile, and a target that
  is one of the run's inputs is refused.
- A set of files side by side (``atomic_files``: a model and its report) is written into a
  temporary sibling folder, then each file is renamed to its target under the same lock and rules;
  a target that appeared meanwhile refuses the set and the new files already placed are removed.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from compactify.errors import BadInputError

# Every file `compactify convert` writes into its output folder (artifacts listed in report.json count too).
OUTPUT_FILES = frozenset({"compact.pt2", "compact.onnx", "compact.fp16.onnx", "compact.int8.onnx", "compact.engine",
                          "compact.xml", "compact.bin",
                          "report.json", "report.md"})
_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def folder_mode() -> int:
    return 0o777 & ~current_umask()


def file_mode() -> int:
    return 0o666 & ~current_umask()


class _Deferral:
    depth = 0  # signals_deferred blocks running now (they nest)
    pending = False  # a signal arrived during one


def defer_interrupt() -> bool:
    """For a SIGINT/SIGTERM handler: True when a commit or a clean-up is running, which the signal must
    not cut; the signal is then remembered, and the outermost ``signals_deferred`` raises
    KeyboardInterrupt as it ends."""
    if _Deferral.depth:
        _Deferral.pending = True
        return True
    return False


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so that a commit or a clean-up is never cut in half.

    The signal mask holds a signal sent to the main thread; one the kernel hands to another thread
    (torch's worker threads leave the mask of their own) still runs the Python handler in the main
    thread, at once, so the handler asks ``defer_interrupt`` first."""
    blocked = False
    if hasattr(signal, "pthread_sigmask") and _SIGNALS:
        try:
            signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
            blocked = True
        except (OSError, ValueError):  # pragma: no cover - not blockable here
            pass
    _Deferral.depth += 1
    try:
        yield
    finally:
        _Deferral.depth -= 1
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # a held signal's handler runs here
        if _Deferral.depth == 0 and _Deferral.pending:
            _Deferral.pending = False
            raise KeyboardInterrupt


def _absolute(path: str | os.PathLike) -> Path:
    """An absolute, normalised path that keeps a final symlink as it is (``.`` becomes the folder's name)."""
    return Path(os.path.abspath(os.fspath(path)))


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def previous_output_problem(folder: str | os.PathLike) -> str | None:
    """None when ``folder`` is a previous compactify output (which ``force`` may replace), else why it is not."""
    folder = Path(folder)
    report = folder / "report.json"
    if not report.is_file() or report.is_symlink():
        return "it has no report.json written by compactify"
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its report.json is not one compactify wrote"
    if not isinstance(data, dict) or "compactify_version" not in data or not isinstance(data.get("source"), dict):
        return "its report.json is not one compactify wrote"
    artifacts = data.get("artifacts") if isinstance(data.get("artifacts"), dict) else {}
    allowed = OUTPUT_FILES | {v for v in artifacts.values() if isinstance(v, str) and "/" not in v}
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed or p.is_symlink() or not p.is_file())
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"it holds {shown}, which compactify did not write"
    return None


def check_output_folder(target: str | os.PathLike, force: bool = False,
                        inputs: Iterable[str | os.PathLike | None] = ()) -> str:
    """Decide whether ``target`` may be written: "new", "empty" (an existing empty folder) or "replace"
    (a previous compactify output, with ``force``). Raises BadInputError, naming the fix, otherwise."""
    target = _absolute(target)
    if target.name in ("", "..") or target == Path(target.anchor):
        raise BadInputError(f"-o {target} cannot be an output folder; give a folder of its own, such as ./out")
    if target.is_symlink():
        raise BadInputError(f"-o {target} is a symbolic link; give the folder it points to, or another -o")
    if not target.exists():
        return "new"
    if not target.is_dir():
        raise BadInputError(f"output path {target} is a file, not a folder; choose another -o")
    real = _real(target)
    for item in inputs:
        if item is None:
            continue
        path = _real(item)
        if _inside(path, real):
            raise BadInputError(
                f"output folder {target} holds the input {item}; writing there would delete it: choose another -o"
            )
    try:
        empty = not any(target.iterdir())
    except PermissionError:
        raise BadInputError(f"output folder {target} cannot be read (permission denied); choose another -o") from None
    if empty:
        return "empty"
    problem = previous_output_problem(target)
    if problem is not None:
        raise BadInputError(
            f"output folder {target} already exists and is not a compactify output ({problem}); "
            "compactify never replaces files it did not write: choose another -o, or empty the folder yourself"
        )
    if not force:
        raise BadInputError(
            f"output folder {target} already exists (a previous compactify output); pass --force to replace it"
        )
    return "replace"


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns those created, deepest last."""
    missing = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise BadInputError(f"cannot create {folder}: {probe} is a file, not a folder")
    created = []
    try:
        for path in reversed(missing):
            try:
                os.mkdir(path, folder_mode())
            except FileExistsError:  # another process made it first: not ours to remove
                continue
            created.append(path)
    except OSError as exc:
        _remove_created(created)
        raise _write_error(path, exc) from None
    return created


def _remove_created(created: Sequence[Path]) -> None:
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:  # not empty (someone else's files landed there) or already gone: leave it
            pass


def _write_error(path: Path, exc: OSError) -> BadInputError:
    reasons = {errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EROFS: "read-only file system",
               errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
    reason = reasons.get(exc.errno, exc.strerror or type(exc).__name__)
    fix = "free some space or choose another -o" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another -o"
    return BadInputError(f"cannot write in {path}: {reason}; {fix}")


class _TargetLock:
    """An exclusive ``flock`` on ``.NAME.compactify-lock`` beside the target, removed on release."""

    def __init__(self, target: Path):
        self.path = target.parent / f".{target.name}.compactify-lock"
        self.target = target
        self.fd: int | None = None

    def acquire(self) -> "_TargetLock":
        import fcntl

        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
            except OSError as exc:
                raise _write_error(self.target.parent, exc) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise BadInputError(
                    f"another compactify process{who} is writing {self.target}; wait for it to finish or choose "
                    "another -o"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the holder removed the file between our open and our lock: take the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self.fd = fd
            return self
        raise BadInputError(f"could not lock {self.path}: other processes keep replacing it")  # pragma: no cover

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        os.close(self.fd)
        self.fd = None


def _remove_stale(target: Path) -> None:
    """The temporary siblings a killed run into ``target`` left behind (``.NAME.tmp-*``, ``.NAME.old-*``).
    Only runs into this target make them, and each holds the target's lock while it works: with the
    lock held here, any that remain belong to no live run."""
    for pattern in (f".{glob.escape(target.name)}.tmp-*", f".{glob.escape(target.name)}.old-*"):
        for stale in target.parent.glob(pattern):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_EXCHANGE:
        return False
    raise OSError(err, os.strerror(err), str(b))


_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, getattr(errno, "ENOTSUP", errno.EINVAL), getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def _commit(tmp: Path, target: Path, force: bool, inputs: Sequence) -> None:
    try:  # again: a process that ignores the lock may have written the target meanwhile
        plan = check_output_folder(target, force, inputs)
    except BadInputError as exc:
        raise BadInputError(f"{target} changed while this run worked ({exc}); it is kept as it is and this run's "
                            "output is discarded") from None
    if plan == "replace":
        if _exchange(tmp, target):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the previous output
            return
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)  # onto a missing or empty folder only: a non-empty one makes this fail
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise BadInputError(
                f"{target} was written by another process while this run worked; it is kept as it is and this "
                "run's output is discarded"
            ) from None
        raise


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, force: bool = False,
               inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a fresh temporary folder that becomes ``target`` only if the block succeeds.

    ``inputs`` are the files the run reads: a target holding one of them is refused. See the
    module docstring for what ``force`` may replace."""
    target = _absolute(target)
    inputs = [i for i in inputs if i is not None]
    check_output_folder(target, force, inputs)
    with _staged(target, lambda: check_output_folder(target, force, inputs),
                 lambda tmp: _commit(tmp, target, force, inputs)) as tmp:
        yield tmp


@contextlib.contextmanager
def _staged(target: Path, recheck: Callable[[], object], commit: Callable[[Path], None]) -> Iterator[Path]:
    """What atomic_dir and atomic_files share: the missing parents made, ``target`` locked, ``recheck``
    run under the lock, a temporary sibling folder yielded, and ``commit(folder)`` (which moves or removes
    it) run on success; on any failure the folder and the parents this made are removed."""
    created: list[Path] = []
    lock: _TargetLock | None = None
    tmp: Path | None = None
    try:
        with signals_deferred():
            created = _make_parents(target.parent)
            lock = _TargetLock(target).acquire()  # a second run into the same target is refused at once
            _remove_stale(target)
            recheck()  # again: a process that ignores the lock may have written the target meanwhile
            try:
                tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
                os.chmod(tmp, folder_mode())
            except OSError as exc:
                raise _write_error(target.parent, exc) from None
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _write_error(target, exc) from None
            raise
        with signals_deferred():
            commit(tmp)
            tmp = None
            created = []
    finally:
        with signals_deferred():
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if lock is not None:
                lock.release()
            _remove_created(created)


def check_output_file(target: str | os.PathLike, force: bool = True,
                      inputs: Iterable[str | os.PathLike | None] = (), what: str = "output file") -> Path:
    """Refuse a file target that is a folder, one of the inputs, or (without ``force``) exists."""
    target = _absolute(target)
    if target.is_dir():
        raise BadInputError(f"{what} {target} is a folder; give a file name")
    for item in inputs:
        if item is None:
            continue
        if _real(item) == _real(target):
            raise BadInputError(f"{what} {target} is also an input of this command; writing it would destroy the "
                                "input: choose another name")
    if target.exists() and not force:
        raise BadInputError(f"{what} {target} already exists; pass --force to overwrite it")
    return target


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, force: bool = True,
                inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; it replaces ``target`` only on success."""
    target = check_output_file(target, force, inputs)
    created: list[Path] = []
    tmp: Path | None = None
    try:
        with signals_deferred():
            created = _make_parents(target.parent)
            try:
                fd, name = tempfile.mkstemp(prefix=f".{target.name}.tmp-", suffix=target.suffix, dir=target.parent)
                os.fchmod(fd, file_mode())
                os.close(fd)
            except OSError as exc:
                raise _write_error(target.parent, exc) from None
            tmp = Path(name)
        yield tmp
        with signals_deferred():
            # Again: a writer that replaces the file (safetensors does) leaves its own mode, not ours.
            os.chmod(tmp, file_mode())
            if force:
                os.replace(tmp, target)
            else:
                _link_new(tmp, target)
            tmp = None
            created = []
    finally:
        with signals_deferred():
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            _remove_created(created)


def _link_new(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` only if ``target`` does not exist (a hard link never replaces)."""
    taken = BadInputError(f"output file {target} was written by another process meanwhile; it is kept as it is")
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise taken from None
    except OSError:  # a file system without hard links: check, then rename
        if os.path.lexists(target):
            raise taken from None
        os.replace(tmp, target)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_files(targets: Mapping[str, str | os.PathLike], force: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside the targets (one folder for all); on success its file NAME becomes
    ``targets[NAME]``, each by one rename, so that no target is ever half-written."""
    inputs = [i for i in inputs if i is not None]
    paths = {name: check_output_file(t, force, inputs) for name, t in targets.items()}
    first = next(iter(paths.values()))
    if any(p.parent != first.parent for p in paths.values()):
        raise ValueError("atomic_files writes files of one folder")  # a caller's mistake, not the user's

    def recheck() -> None:
        for path in paths.values():
            check_output_file(path, force, inputs)

    with _staged(first, recheck, lambda tmp: _place_files(tmp, paths, force)) as tmp:
        yield tmp


def _place_files(tmp: Path, paths: Mapping[str, Path], force: bool) -> None:
    """Rename each ``tmp/NAME`` to its target; without ``force`` a target that appeared meanwhile is kept
    and the files this call already placed (new ones, ours) are removed: the set lands whole or not at all."""
    placed: list[Path] = []
    try:
        for name, target in paths.items():
            if force:
                os.replace(tmp / name, target)
            else:
                _link_new(tmp / name, target)
                placed.append(target)
    except BadInputError:
        for path in placed:
            path.unlink(missing_ok=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # empty now: every file was moved out
