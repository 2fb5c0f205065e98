"""The model files bench and verify take: every registered artifact kind, plus checkpoints, which
they rebuild from their metadata and run on PyTorch (checkpoints are the converter's input, no target)."""

from __future__ import annotations

from pathlib import Path

from compactify.converter.load.sniff import detect
from compactify.errors import BadInputError
from compactify.targets import TARGETS, FileKind, Target, kinds_help, kinds_table, mismatch, target_for

CHECKPOINT = FileKind((".pt", ".pth", ".bin", ".ckpt", ".safetensors"), "checkpoint (rebuilt from its metadata)",
                      "torch")
CHECKPOINT_CONTENT = ("torch", "safetensors")  # what converter.load.sniff finds in a checkpoint


def model_kinds_help() -> str:
    return kinds_help(also=[CHECKPOINT])


def model_kinds_table(indent: str = "") -> str:
    return kinds_table(indent=indent, also=[CHECKPOINT])


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a checkpoint: by suffix, else (under a suffix no target claims) by content; never
    a file an artifact beside it needs (compact.bin of compact.xml)."""
    path = Path(path)
    name = path.name.lower()
    if any(name.endswith(s) for t in TARGETS.values() for s in t.suffixes) or artifact_needing(path):
        return False
    if path.suffix.lower() in CHECKPOINT.suffixes:
        return True
    return path.is_file() and detect(path).kind in CHECKPOINT_CONTENT


def model_target(path: str | Path, what: str | None = None) -> Target:
    """The target of an artifact file; BadInputError naming every kind (checkpoints too) when none is.
    ``what`` starts the message ("cannot benchmark x.txt"; default "cannot tell what x.txt is")."""
    owner = artifact_needing(Path(path))
    if owner is not None:
        raise BadInputError(f"{Path(path).name} is a file that {owner[1].name} beside it needs (an {owner[0].description}): "
                            f"give {owner[1].name}")
    try:
        return target_for(path)
    except BadInputError:
        what = what or f"cannot tell what {Path(path).name} is"
        raise BadInputError(f"{what}: expected one of {model_kinds_help()}") from None


def artifact_needing(path: Path) -> tuple[Target, Path] | None:
    """The artifact beside ``path`` that needs it (an OpenVINO IR's weights), and its target; None when none does."""
    for target in TARGETS.values():
        for suffix in target.suffixes:
            main = path.parent / (path.stem + suffix)
            if main != path and main.is_file() and path in target.companions(main):
                return target, main
    return None


def runtime_mismatch(path: str | Path, runtime: str) -> str:
    """The message for a model file asked to run on a runtime that cannot run it."""
    if not is_checkpoint(path):
        return mismatch(path, runtime)
    return (f"{Path(path).name} is a {CHECKPOINT.description} and runs on --runtime {CHECKPOINT.runtime}, not "
            f"--runtime {runtime}; convert it first (`compactify convert` writes its .pt2, .onnx and engine)")
