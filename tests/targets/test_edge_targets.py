"""What every edge target (compact.pte, compact.tflite) answers alike: an ONNX source has no program to
lower, and a network the exporter cannot take is one line with nothing written."""

from __future__ import annotations

import pytest
import torch
from torch_compact import TorchCompact

from compactify.converter.pipeline.convert import convert_checkpoint
from compactify.converter.pipeline.settings import ConvertOptions
from compactify.errors import BadInputError
from compactify.targets import build_artifacts

SHAPE = (1, 1, 8, 8)
EDGE = [  # option, target, its file, the module it needs, how its failure starts
    ("executorch", "pte", "compact.pte", "executorch.exir", "ExecuTorch cannot lower the compact network for XNNPACK"),
    ("litert", "tflite", "compact.tflite", "litert_torch", "litert-torch cannot convert the compact network"),
]


@pytest.mark.parametrize("option, target, file, module, failure", EDGE)
def test_an_onnx_source_has_no_program_to_lower(tmp_path, option, target, file, module, failure):
    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Conv2d(1, 2, 3), (torch.randn(SHAPE),), str(path), dynamo=False)
    with pytest.raises(BadInputError, match=f"^--{option}: {file} is lowered from a torch.export program, and an ONNX "
                                            "source has no PyTorch graph; convert the PyTorch checkpoint instead$"):
        convert_checkpoint(path, tmp_path / "out", ConvertOptions(**{option: True}))
    assert not (tmp_path / "out").exists()


class _DataDependent(torch.nn.Module):
    """nonzero's output size depends on the data: neither exporter gives it a static shape."""

    def forward(self, x):
        return torch.nonzero(x > 0).float().sum(0)


@pytest.mark.parametrize("option, target, file, module, failure", EDGE)
def test_a_network_the_exporter_cannot_take_is_one_line_and_writes_nothing(tmp_path, option, target, file, module,
                                                                          failure):
    pytest.importorskip(module, reason=f"needs {module.split('.')[0]} (pip install compactify[edge])")
    model = _DataDependent()
    with pytest.raises(BadInputError, match=rf"^--{option}: {failure}: [^\n]+$"):
        build_artifacts(TorchCompact(model, model, SHAPE, dynamic_batch=False), tmp_path, {target: None})
    assert list(tmp_path.iterdir()) == []
