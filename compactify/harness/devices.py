"""Which device a runtime runs on when the user names one for a whole command (--device)."""

from __future__ import annotations

from compactify.runtimes import RUNNERS


def only_device(runtime: str) -> str | None:
    """The one device ``runtime`` runs on, when it runs on one only (TensorRT: cuda), else None.
    A runner that does not default to cpu runs nowhere else; the others run on cpu and cuda."""
    default = RUNNERS[runtime].default_device
    return None if default == "cpu" else default


def device_for(runtime: str, device: str) -> str:
    """``device`` (the command's --device), unless ``runtime`` runs on one device only."""
    return only_device(runtime) or device
