"""Self-consistency of the reproduced re-parameterization families in tests/families/catalog.py.

For every family: the family's own deploy conversion computes the same function as the
training-time model (float64: to 1e-9 of the output scale; float32: to 1e-4), it has no more
parameters, it leaves its input untouched, and every re-parameterizable block really was switched.
These tests validate the fixtures, not compactify.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ._common import param_count
from .catalog import FAMILIES

NAMES = sorted(FAMILIES)

# Attributes that exist only on a training-time block of each family.
TRAINING_ONLY = ("dbb_origin", "dbb_avg", "dbb_1x1_kxk", "square_conv", "ver_conv", "hor_conv", "lkb_origin",
                 "small_conv", "rbr_dense", "rbr_1x1", "rbr_identity")

# Families whose own deploy leaves no BatchNorm behind (DBB folds ConvBN too; YOLOv6 fuse_model
# folds every ConvModule). ACNet and RepLKNet keep non-reparam BNs; QARepVGG keeps its post BN;
# ExpandNets' compact nets have BN.
NO_BN_AFTER_DEPLOY = [n for n in NAMES
                      if n.startswith("dbb-") or (n.startswith("yolov6-") and "qa" not in n) or n.endswith("-layer")
                      or n in {"acnet-pad", "acnet-crop", "acnet-pad-k5-s2-g2", "acnet-crop-k5-s2", "acnet-overpad",
                               "acnet-noaffine", "acnet-reduce-gamma", "acnet-gamma-init", "acnet-cfqk",
                               "replknet-lk", "replknet-lk-dense-s2"}]

REQUIRED = {
    "dbb-block", "dbb-block-groups", "dbb-block-dw", "dbb-resnet18", "dbb-mobilenet",
    "acnet-pad", "acnet-crop", "acnet-noaffine", "acnet-reduce-gamma", "acnet-cfqk", "acnet-rc",
    "replknet-lk", "replknet-stage", "replknet-net",
    "yolov6-repvgg", "yolov6-qarepvgg", "yolov6-qarepvggv2", "yolov6-repblock", "yolov6-bottlerep",
    "yolov6-bepc3",
    "expandnets-cl-layer", "expandnets-ck-layer", "expandnets-fc-layer",
    "expandnets-cl", "expandnets-ck", "expandnets-fc", "expandnets-shufflenet-cl",
}


def _inputs(shape, dtype, count=2):
    gen = torch.Generator().manual_seed(1234)
    return [torch.randn(shape, generator=gen, dtype=dtype) * 1.5 for _ in range(count)]


def _snapshot(model: nn.Module):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, repr(model)


def test_catalog_covers_the_required_families():
    assert REQUIRED <= set(FAMILIES), sorted(REQUIRED - set(FAMILIES))
    for name, family in FAMILIES.items():
        assert family.name == name


@pytest.mark.parametrize("name", NAMES)
def test_deploy_matches_training_in_float64(name):
    family = FAMILIES[name]
    model = family.build().double()
    before = _snapshot(model)
    deployed = family.deploy(model)
    assert deployed is not model
    after = _snapshot(model)
    assert before[1] == after[1], "deploy changed the training-time module structure"
    assert before[0].keys() == after[0].keys()
    for key in before[0]:
        assert torch.equal(before[0][key], after[0][key]), f"deploy mutated {key}"

    assert not deployed.training
    with torch.no_grad():
        for x in _inputs(family.input_shape, torch.float64):
            expected = model(x)
            got = deployed(x)
            assert got.shape == expected.shape
            assert got.dtype == torch.float64
            scale = max(1.0, expected.abs().max().item())
            err = (got - expected).abs().max().item()
            assert err <= 1e-9 * scale, f"{name}: max abs diff {err:.3e} at output scale {scale:.3f}"

    assert param_count(deployed) <= param_count(model)


@pytest.mark.parametrize("name", NAMES)
def test_deploy_matches_training_in_float32(name):
    family = FAMILIES[name]
    model = family.build()
    deployed = family.deploy(model)
    with torch.no_grad():
        x = _inputs(family.input_shape, torch.float32, count=1)[0]
        expected = model(x)
        got = deployed(x)
    assert got.dtype == torch.float32
    scale = max(1.0, expected.abs().max().item())
    assert (got - expected).abs().max().item() <= 1e-4 * scale


@pytest.mark.parametrize("name", NAMES)
def test_deploy_switched_every_block(name):
    family = FAMILIES[name]
    deployed = family.deploy(family.build())
    for mod_name, module in deployed.named_modules():
        for attr in TRAINING_ONLY:
            value = getattr(module, attr, None)
            assert not isinstance(value, nn.Module), f"{mod_name}.{attr} survived deploy"
    if name in NO_BN_AFTER_DEPLOY:
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in deployed.modules())


@pytest.mark.parametrize("name", ["dbb-block", "acnet-crop", "replknet-stage", "yolov6-bepc3", "expandnets-cl"])
def test_build_is_seeded_and_batchnorm_far_from_identity(name):
    family = FAMILIES[name]
    first, second = family.build(), family.build()
    assert not first.training
    a, b = first.state_dict(), second.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bns = [m for m in first.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns
    for bn in bns:
        assert 0.5 <= bn.running_var.min().item() and bn.running_var.max().item() <= 2.0
        assert bn.running_mean.abs().max().item() > 0.05
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
