"""The one way to import an optional heavy dependency (TensorRT, Ray, the edge runtimes).

Everything else is imported at the top of its module; these are imported here, when a command
needs them, so that compactify installs and runs without them and a missing one is one line
naming the package to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from compactify.errors import MissingRuntimeError


def optional_import(module: str, *, package: str | None = None, what: str = "this", hint: str = "") -> ModuleType:
    """``module`` imported, or MissingRuntimeError: "<what> needs <package>: pip install <package>".
    ``hint`` replaces the install advice where pip cannot give it (TensorRT's own wheels)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = package or module.split(".")[0]
        advice = hint or f"pip install {package}"
        raise MissingRuntimeError(f"{what} needs the Python package {package}, which is not installed here "
                                  f"({advice})") from exc


def available(module: str) -> bool:
    """Whether ``module`` imports here (without raising)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
