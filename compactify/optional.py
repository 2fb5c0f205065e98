"""The one way to import an optional heavy dependency (TensorRT, Ray, the edge runtimes).

Everything else is imported at the top of its module; these are imported here, when a command
needs them, so that compactify installs and runs without them and a missing one is one line
naming the package to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from compactify.errors import MissingRuntimeError

EDGE_INSTALL = "pip install compactify[edge]"  # the extra that installs the edge runtimes


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


def missing_package(module: str, package: str) -> str | None:
    """Why ``module`` cannot be imported here ("needs the Python package <package>, ..."), or None when it is
    installed; found without importing it (the edge runtimes take seconds to import)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is missing, or a module set to None
        found = False
    return None if found else f"needs the Python package {package}, which is not installed here"
