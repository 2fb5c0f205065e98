"""Which device a runtime runs on when the user names one for a whole command (--device)."""

from __future__ import annotations

from compactify.runtimes import RUNNERS


def only_device(runtime: str) -> str | None:
    """The one device other than cpu ``runtime`` runs on, when it runs there only (TensorRT: cuda), else
    None: a command with such a model runs on that device."""
    devices = RUNNERS[runtime].devices
    return devices[0] if devices != ("cpu",) and len(devices) == 1 else None


def device_for(runtime: str, device: str) -> str:
    """``device`` (the command's --device), unless ``runtime`` does not run there: then its own (TensorRT:
    cuda, OpenVINO: cpu)."""
    runner = RUNNERS[runtime]
    return device if device in runner.devices else runner.default_device
