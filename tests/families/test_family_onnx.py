"""The same public families as test_family_contraction, handed over as ONNX files (torch.onnx's
TorchScript exporter, BatchNorms left as nodes): the ONNX path, with no source code, reaches the
family's own deploy size exactly, judged against the exported graph evaluated in float64."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch

from compactify.converter.pipeline.contraction import contract_onnx
from compactify.targets.onnx_io import run_ort
from compactify.measure.onnx_float64 import run_float64

from ._common import param_count
from .catalog import FAMILIES
from .factories import TIMM_INPUT, timm_deploy, timm_model

REL = 1e-6
# DBB's BN-and-pad writes the BatchNorm's shift into the border in place; exported to ONNX that is
# hundreds of Slice/ScatterND-style nodes, which the ONNX front-end leaves as they are (exactly).
UNREAD_IN_ONNX = {n for n in FAMILIES if n.startswith("dbb-")}
SLOW = {"dbb-resnet18", "dbb-mobilenet"}  # 7k-15k nodes each: exactness is covered by the DBB blocks


def _export(model: torch.nn.Module, shape) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.randn(shape),), buffer, dynamo=False, input_names=["x"],
                          do_constant_folding=False, dynamic_axes={"x": {0: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


def _check(source: onnx.ModelProto, deploy_params: int | None, shape) -> None:
    result = contract_onnx(source)
    if deploy_params is not None:
        assert result.params_after <= deploy_params, [d.as_dict() for d in result.decisions if d.kind == "keep"]
    assert result.max_rel_error <= max(REL, 3 * result.source_rel_error)
    # Other inputs than the conversion's own check (at the traced batch: TorchScript export folds the
    # batch into the reshapes of DBB's and ShuffleNet's graphs, which then run at that batch only).
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    ref = run_float64(source, {"x": x})
    got, own = run_ort(result.compact, {"x": x}), run_ort(source, {"x": x})
    for g, o, r in zip(got, own, ref):
        scale = np.abs(r).max()
        assert np.abs(g - r).max() / scale <= max(REL, 3 * np.abs(o - r).max() / scale)
    assert [i.name for i in result.compact.graph.input] == ["x"]
    assert result.compact.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", sorted(set(FAMILIES) - SLOW))
def test_reproduced_family_as_onnx_contracts_to_its_deploy_size(name):
    family = FAMILIES[name]
    model = family.build()
    deploy = None if name in UNREAD_IN_ONNX else param_count(family.deploy(model))
    _check(_export(model, family.input_shape), deploy, family.input_shape)


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
def test_timm_family_as_onnx_contracts_to_timm_deploy_size(name):
    model = timm_model(name)
    _check(_export(model, TIMM_INPUT), param_count(timm_deploy(model)), TIMM_INPUT)
