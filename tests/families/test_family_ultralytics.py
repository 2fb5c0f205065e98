"""ultralytics as it ships: its ConvTranspose block (``bn(conv_transpose(x))``) and a YOLOv8
segmentation model, whose Proto head upsamples with a transposed conv, contract exactly and to
at most what ultralytics' own ``fuse()`` deploys."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compactify.converter.frontends.fx.check import reference_float64
from compactify.converter.pipeline.contraction import contract
from compactify.tensors import flatten_outputs

from ._common import param_count, seeded_build
from .public import ultralytics_nn

REL = 1e-6


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _check_outputs(model: nn.Module, compact: nn.Module, shape: tuple[int, ...]) -> None:
    """Every output within REL of the source in float64, or within 3x the source's own float32 error."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        refs = flatten_outputs(reference_float64(model)(x.double()))
        own, got = flatten_outputs(model(x)), flatten_outputs(compact(x))
    assert len(got) == len(refs)
    for g, o, r in zip(got, own, refs):
        scale = r.abs().max()
        assert float((g.double() - r).abs().max() / scale) <= max(REL, 3 * float((o.double() - r).abs().max() / scale))


@pytest.mark.parametrize("k,s,p", [(2, 2, 0), (4, 2, 1)])
def test_ultralytics_conv_transpose_block_folds_its_batchnorm(k, s, p):
    U = ultralytics_nn()
    # What ultralytics' fuse() calls for this block.
    from ultralytics.utils.torch_utils import fuse_deconv_and_bn

    model = seeded_build(lambda: U.modules.ConvTranspose(8, 4, k, s, p, bn=True), seed=k)()
    deploy = copy.deepcopy(model)
    deploy.conv_transpose = fuse_deconv_and_bn(deploy.conv_transpose, deploy.bn)
    del deploy.bn
    shape = (2, 8, 5, 6)
    r = contract(model, shape)
    assert r.params_after <= param_count(deploy) and not _batchnorms(r.compact)
    assert [type(m).__name__ for m in r.compact.modules() if isinstance(m, nn.ConvTranspose2d)] == ["ConvTranspose2d"]
    _check_outputs(model, r.compact, shape)


def test_yolov8_segmentation_contracts_to_its_fused_size():
    U = ultralytics_nn()
    model = seeded_build(lambda: U.tasks.SegmentationModel("yolov8n-seg.yaml", verbose=False), seed=8)()
    fused = copy.deepcopy(model).fuse(verbose=False)
    shape = (1, 3, 64, 64)
    r = contract(model, shape)
    assert r.params_after <= param_count(fused)
    assert _batchnorms(r.compact) <= _batchnorms(fused)
    # The Proto's upsampling ConvTranspose2d has a bias, and the 3x3 conv after it pads: merged, its
    # bias would reach the border pixels, so it stays, and that conv folds only its own BatchNorm.
    upsample = next(d for d in r.decisions if d.region.name == "model.22.proto.upsample")
    assert upsample.kind == "keep" and upsample.stopped_by == "not exact"
    _check_outputs(model, r.compact, shape)
