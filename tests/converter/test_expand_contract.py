"""Expand any registry model, contract it back: the compact architecture returns, exactly,
and runs the same on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from compactify.converter.pipeline.contraction import contract

from compactify.converter.frontends.fx.check import example_input, reference_float64
from compactify.converter.backends.onnx_export import export_onnx
from compactify.models import applicable_modes, create_model

TINY = {"num_classes": 10, "input_size": 32}
WIDTH = {"mobilenetv1": 0.25, "mobilenetv2": 0.25, "shufflenetv2": 0.5, "resnet18": 0.125, "repvgg": 0.25}
SHAPE = (1, 3, 32, 32)


def _tiny(name: str, mode: str | None = None) -> nn.Module:
    base = name.split("-")[0]
    kwargs = dict(TINY)
    if base in WIDTH:
        kwargs["width"] = WIDTH[base]
    if base == "repvgg":
        kwargs["num_blocks"] = (1, 1, 2, 1)
    torch.manual_seed(0)
    model = create_model(f"{name}-{mode}" if mode else name, **kwargs)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding is really tested
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


_BASE_CACHE: dict[str, tuple[int, int]] = {}


def _compact_params(name: str) -> tuple[int, int]:
    """The base model contracted, and the count with every BatchNorm folded into one bias."""
    if name not in _BASE_CACHE:
        base = _tiny(name)
        bn = sum(m.num_features for m in base.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        folded = sum(p.numel() for p in base.parameters()) - bn
        _BASE_CACHE[name] = (contract(base, SHAPE).params_after, folded)
    return _BASE_CACHE[name]


CASES = [("smallnet3", "cl+fc"), ("mobilenetv1", "cl+fc"), ("mobilenetv2", "cl+fc"), ("shufflenetv2", "cl+fc"),
         ("resnet18", "ck+fc"), ("resnet18", "cl"), ("repvgg", "cl+fc")]


@pytest.mark.slow
@pytest.mark.parametrize("name,mode", CASES)
def test_expand_then_contract_gives_back_the_compact_architecture(tmp_path, name, mode):
    assert mode in applicable_modes(name, **({"width": WIDTH[name]} if name in WIDTH else {}))
    expanded = _tiny(name, mode)
    r = contract(expanded, SHAPE)
    contracted_base, folded_base = _compact_params(name)
    # No larger than the compact net with BatchNorm folded. The expanded chains carry biases
    # everywhere, so where the base conv had none the result may keep one bias vector more
    # than the base net contracted (whose BN shift could ride into the next layer).
    assert contracted_base <= r.params_after <= folded_base
    assert r.params_after < r.params_before
    x = example_input((2, *SHAPE[1:]), seed=7)
    ref = reference_float64(expanded)(x.double())
    out = r.compact(x)
    assert out.shape == ref.shape
    rel = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel <= 1e-6, rel

    # The contracted model on ONNX Runtime (dynamic batch), at batch 1 and 7, within 1e-5 of the
    # output scale of the expanded model in float64.
    onnx_path = export_onnx(r.compact, example_input(SHAPE), tmp_path / "c.onnx").path
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        x = example_input((n, *SHAPE[1:]), seed=n)
        truth = reference_float64(expanded)(x.double()).detach().numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        assert np.abs(got - truth).max() <= 1e-5 * np.abs(truth).max()
