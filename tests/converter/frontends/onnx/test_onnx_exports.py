"""ONNX files from torch.onnx (the TorchScript exporter and the dynamo exporter) of the registry's
expansions, converted by contract_onnx: compared with the source file run in float64, and with the
parameter count the PyTorch path (compactify.converter.pipeline.contraction.contract) gives for the same model.

What runs by default fits the suite's time budget on 2 cores: the TorchScript exporter for every
expansion, the dynamo exporter (3-20 s an export) for one expansion of every base model, and the
PyTorch-path comparison where torch.export of the model takes a second or two. Set
COMPACTIFY_ONNX_EXPORTS=all for both exporters of every expansion and the comparison everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compactify.converter.pipeline.contraction import contract
from compactify.converter.pipeline.contraction import contract_onnx
from compactify.measure.onnx_float64 import Float64Reference
from compactify.models.registry import create_model, list_models, model_entry

from models.tiny import TINY_KWARGS
from .test_onnx_constructs import ort_run

FULL = os.environ.get("COMPACTIFY_ONNX_EXPORTS") == "all"
TINY = {**TINY_KWARGS, "widevgg": {"width": 16, "blocks": (1, 1), "input_size": 16}}
EXPANSIONS = [n for n in list_models(expanded=True) if "-" in n]
# One expansion per base for the dynamo exporter: the first CK one where there is one, else CL.
DYNAMO = sorted({n.split("-")[0]: n for n in reversed(EXPANSIONS) if n.split("-")[1] in ("ck", "cl")}.values())
# Where the PyTorch-path contraction (torch.export) takes a second or two here.
QUICK_TORCH = {n for n in EXPANSIONS if n.split("-")[0] in ("smallnet3", "smallnet7", "repvgg", "widevgg")} | {"resnet18-ck"}


def _tiny(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    base = name.split("-")[0]
    if base not in TINY:
        pytest.fail(f"no small kwargs for {base!r}: add them to tests/models/tiny.py")
    torch.manual_seed(0)
    model = create_model(name, rate=2, **TINY[base])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # BatchNorms far from the identity, as after training
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model.eval(), model_entry(name).input_shape(**TINY[base])


def export(model: nn.Module, shape, *, dynamo: bool) -> onnx.ModelProto:
    """The model exported with a symbolic batch, as users export it (constant folding on)."""
    x = torch.randn(shape)
    f = io.BytesIO()
    with warnings.catch_warnings(), open(os.devnull, "w") as null, \
            contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(model, (x,), f, dynamo=True, input_names=["x"], output_names=["logits"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        else:
            # opset 13: ShuffleNet's unflatten has no opset-11 form in the TorchScript exporter
            torch.onnx.export(model, (x,), f, dynamo=False, opset_version=13, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_from_string(f.getvalue())


def fresh_runs(src: onnx.ModelProto, compact: onnx.ModelProto, shape):
    """Independently of the converter's own check: fresh inputs at batches other than planned, each
    with the source's float64 outputs (onnx.reference) and the compact model's on ONNX Runtime."""
    ref = Float64Reference(src)
    rng = np.random.default_rng(7)
    for batch in (1, 3):
        x = rng.standard_normal((batch, *shape[1:])).astype(np.float32)
        (truth,) = ref.run({"x": x})
        (got,) = ort_run(compact, {"x": x})
        yield x, truth, got


_TORCH_PARAMS: dict[str, int] = {}


def torch_params_after(name: str) -> int:
    if name not in _TORCH_PARAMS:
        model, shape = _tiny(name)
        _TORCH_PARAMS[name] = contract(model, shape).params_after
    return _TORCH_PARAMS[name]


def _run(name: str, dynamo: bool):
    model, shape = _tiny(name)
    src = export(model, shape, dynamo=dynamo)
    r = contract_onnx(src)
    onnx.checker.check_model(r.compact)
    assert r.params_after < r.params_before
    assert len(r.compact.graph.node) < len(src.graph.node)
    assert r.max_rel_error <= 1e-6, r.max_rel_error
    for x, truth, got in fresh_runs(src, r.compact, shape):
        assert got.shape == truth.shape
        assert np.abs(got - truth).max() <= 1e-6 * np.abs(truth).max()
        with torch.no_grad():  # and the file is the model: torch in float64 within float32 folding
            t64 = _double(model)(torch.from_numpy(x).double()).numpy()
        assert np.abs(truth - t64).max() <= 1e-5 * np.abs(t64).max()
    assert r.compact.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    if FULL or name in QUICK_TORCH:
        assert r.params_after == torch_params_after(name), [d["name"] for d in r.regions if d["decision"] != "dense"]
    return r


def _double(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).double().eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPANSIONS)
def test_torchscript_export(name):
    _run(name, dynamo=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPANSIONS if FULL else DYNAMO)
def test_dynamo_export(name):
    _run(name, dynamo=True)
