"""Registry of public structural re-parameterization families reproduced as test fixtures.

Each :class:`Family` builds a training-time model (seeded random weights, BatchNorm statistics and
affine parameters far from identity, ``eval()``) and knows the family's *own* deploy conversion,
written from the public code (see the docstrings of :mod:`.dbb`, :mod:`.acnet`, :mod:`.replknet`,
:mod:`.yolov6`, :mod:`.expandnets` for what is reproduced and which public quirks were found).

``deploy`` never mutates its argument (it deep-copies). Widths and inputs are reduced so that a
build plus a forward pass stays well under a second on CPU.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from . import acnet, dbb, expandnets, replknet, yolov6
from ._common import seeded_build


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], nn.Module]
    deploy: Callable[[nn.Module], nn.Module]
    input_shape: tuple[int, ...]


BLOCK_INPUT = (2, 8, 16, 16)
FAMILIES: dict[str, Family] = {}


def _register(name, factory, deploy, input_shape=BLOCK_INPUT, **build_kwargs):
    assert name not in FAMILIES, name
    seed = zlib.crc32(name.encode()) % 100_000  # stable per name, independent of registration order
    FAMILIES[name] = Family(name, seeded_build(factory, seed, **build_kwargs), deploy, tuple(input_shape))


# --- DiverseBranchBlock -------------------------------------------------------------------------

_dbb = dict(deploy=dbb.deploy, after=dbb.perturb_identity_convs)
# groups < out: origin kxk, 1x1, 1x1-avg (BNAndPad), identity-based 1x1 -> BNAndPad -> kxk.
_register("dbb-block", lambda: dbb.DiverseBranchBlock(8, 8, 3, padding=1), **_dbb)
# explicit internal width: a real conv1 in the 1x1-kxk branch; stride 2, in != out.
_register("dbb-block-conv1-s2",
          lambda: dbb.DiverseBranchBlock(8, 16, 3, stride=2, padding=1, internal_channels_1x1_3x3=12,
                                         nonlinear=nn.ReLU()), **_dbb)
# groups=2: grouped identity-based 1x1, per-group transIII merges.
_register("dbb-block-groups",
          lambda: dbb.DiverseBranchBlock(8, 16, 3, padding=1, groups=2, nonlinear=nn.ReLU()), **_dbb)
# depthwise: no 1x1 branch, padded AvgPool branch, 2x internal channels in the 1x1-kxk branch.
_register("dbb-block-dw", lambda: dbb.DiverseBranchBlock(8, 8, 3, padding=1, groups=8), **_dbb)
# 5x5: BNAndPad writes a 2-pixel border.
_register("dbb-block-k5", lambda: dbb.DiverseBranchBlock(8, 8, 5, padding=2), **_dbb)
_register("dbb-resnet18", lambda: dbb.create_res18(width_multiplier=0.125, num_classes=10),
          input_shape=(2, 3, 64, 64), **_dbb)
_register("dbb-mobilenet", lambda: dbb.create_mobilenet(width_divisor=8, num_classes=10),
          input_shape=(2, 3, 64, 64), **_dbb)

# --- ACNet --------------------------------------------------------------------------------------

_register("acnet-pad", lambda: acnet.ACBlock(8, 8, 3, padding=1), acnet.deploy)
_register("acnet-pad-k5-s2-g2", lambda: acnet.ACBlock(8, 16, 5, stride=2, padding=2, groups=2), acnet.deploy)
_register("acnet-crop", lambda: acnet.ACBlock(8, 8, 3, padding=0), acnet.deploy)
_register("acnet-crop-k5-s2", lambda: acnet.ACBlock(8, 8, 5, stride=2, padding=1), acnet.deploy)
_register("acnet-overpad", lambda: acnet.ACBlock(8, 8, 5, padding=3), acnet.deploy)
_register("acnet-noaffine", lambda: acnet.ACBlock(8, 8, 3, padding=1, use_affine=False), acnet.deploy)
_register("acnet-reduce-gamma", lambda: acnet.ACBlock(8, 8, 3, padding=1, reduce_gamma=True), acnet.deploy,
          keep_gamma=True)
_register("acnet-gamma-init", lambda: acnet.ACBlock(8, 8, 3, padding=1, gamma_init=0.6), acnet.deploy,
          keep_gamma=True)
_register("acnet-cfqk", lambda: acnet.CFQKBN(10, acnet.ACNetBuilder(), deps=[8, 8, 16]), acnet.deploy,
          input_shape=(2, 3, 32, 32))
_register("acnet-rc", lambda: acnet.RCNet([1, 1, 1], 10, acnet.ACNetBuilder(), widths=(8, 16, 32)), acnet.deploy,
          input_shape=(2, 3, 32, 32))

# --- RepLKNet -----------------------------------------------------------------------------------

_register("replknet-lk",
          lambda: replknet.ReparamLargeKernelConv(8, 8, 13, stride=1, groups=8, small_kernel=5), replknet.deploy)
_register("replknet-lk-dense-s2",
          lambda: replknet.ReparamLargeKernelConv(8, 16, 7, stride=2, groups=1, small_kernel=3), replknet.deploy)
_register("replknet-stage",
          lambda: replknet.RepLKNetStage(8, num_blocks=2, stage_lk_size=13, drop_path=[0.1, 0.2], small_kernel=5),
          replknet.deploy)
_register("replknet-net",
          lambda: replknet.RepLKNet([13, 7], [1, 1], [8, 16], drop_path_rate=0.1, small_kernel=5, num_classes=10,
                                    use_sync_bn=True),
          replknet.deploy, input_shape=(2, 3, 64, 64))

# --- YOLOv6 -------------------------------------------------------------------------------------


def _yolo(factory):
    return lambda: yolov6.initialize_weights(factory())


_y6 = dict(deploy=yolov6.deploy, after=yolov6.randomize_alpha)
_register("yolov6-repvgg", _yolo(lambda: yolov6.RepVGGBlock(8, 8)), **_y6)
_register("yolov6-repvgg-s2", _yolo(lambda: yolov6.RepVGGBlock(8, 16, stride=2)), **_y6)
_register("yolov6-qarepvgg", _yolo(lambda: yolov6.QARepVGGBlock(8, 8)), **_y6)
_register("yolov6-qarepvgg-s2", _yolo(lambda: yolov6.QARepVGGBlock(8, 16, stride=2)), **_y6)
_register("yolov6-qarepvggv2", _yolo(lambda: yolov6.QARepVGGBlockV2(8, 8)), **_y6)
_register("yolov6-repblock", _yolo(lambda: yolov6.RepBlock(8, 16, n=3)), **_y6)
_register("yolov6-bottlerep", _yolo(lambda: yolov6.BottleRep(8, 8, weight=True)), **_y6)
_register("yolov6-bepc3", _yolo(lambda: yolov6.BepC3(8, 16, n=4, e=0.5, block=yolov6.RepVGGBlock)), **_y6)
_register("yolov6-bepc3-qa", _yolo(lambda: yolov6.BepC3(8, 16, n=4, e=0.5, block=yolov6.QARepVGGBlock)), **_y6)

# --- ExpandNets ---------------------------------------------------------------------------------

_register("expandnets-cl-layer", lambda: expandnets.expanded_layer("cl"), expandnets.deploy_expanded_layer)
_register("expandnets-ck-layer", lambda: expandnets.expanded_layer("ck"), expandnets.deploy_expanded_layer)
_register("expandnets-fc-layer", lambda: expandnets.expanded_layer("fc", 64, 32), expandnets.deploy_expanded_layer,
          input_shape=(2, 64))
_cifar = dict(deploy=expandnets.deploy_cifar_tiny, input_shape=(2, 3, 32, 32))
_register("expandnets-cl", lambda: expandnets.Cifar_Tiny_ExpandNet(conv="cl"), **_cifar)
_register("expandnets-ck", lambda: expandnets.Cifar_Tiny_ExpandNet(conv="ck"), **_cifar)
_register("expandnets-fc", lambda: expandnets.Cifar_Tiny_ExpandNet(conv=None, fc=True), **_cifar)
_register("expandnets-cl-fc", lambda: expandnets.Cifar_Tiny_ExpandNet(conv="cl", fc=True), **_cifar)
_register("expandnets-ck-fc", lambda: expandnets.Cifar_Tiny_ExpandNet(conv="ck", fc=True), **_cifar)
_register("expandnets-shufflenet-cl", expandnets.shufflenet_v2_x0_5_expand, expandnets.deploy_shufflenet,
          input_shape=(2, 3, 64, 64))
