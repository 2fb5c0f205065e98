"""torchvision (and so timm) imports beside a torch its extension was not built for."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

_PROBE = """
import importlib.util, sys
from compactify.models.torchvision_ops import declare_missing_torchvision_ops
declared = declare_missing_torchvision_ops()
assert declare_missing_torchvision_ops() is declared  # once per process
import torchvision
print(declared, "torchvision" in sys.modules)
"""


def test_torchvision_imports_after_the_declaration():
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    declared, imported = r.stdout.split()
    assert imported == "True"
    # Declared exactly when the installed extension cannot load here (the registry's CUDA build).
    loads = subprocess.run([sys.executable, "-c", "import torch, torchvision, pathlib; "
                            "torch.ops.load_library(str(next(pathlib.Path(torchvision.__file__).parent.glob('_C*.so'))))"],
                           capture_output=True, text=True, timeout=300).returncode == 0
    assert declared == str(not loads)
