"""Builders the CLI can name with ``--arch tests.families.factories:NAME``, for tests that run
the public families through ``compactify convert`` as a user would: a checkpoint on disk, the
architecture named, nothing else."""

from __future__ import annotations

import copy

import torch.nn as nn

from ._common import randomize_batchnorm
from .catalog import FAMILIES
from .public import timm as _timm
from .public import torchvision_models
from .public import ultralytics_nn as _ultralytics

# timm's own model names; LeViT and its attention biases need the input size up front.
TIMM_FAMILIES = ("repvgg_a0", "mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4",
                 "repghostnet_050", "fastvit_t8", "repvit_m0_9", "levit_128s")
TIMM_INPUT = (1, 3, 32, 32)


def catalog(name: str) -> nn.Module:
    """A family reproduced in tests/families (DBB, ACNet, RepLKNet, YOLOv6, ExpandNets)."""
    return FAMILIES[name].build()


def timm_model(name: str, size: int = TIMM_INPUT[-1], seed: int = 0, **model_kwargs) -> nn.Module:
    """A timm model with random weights and BatchNorm statistics far from the identity;
    ``model_kwargs`` go to timm's constructor (Next-ViT's ``depths``, to keep a test small)."""
    import torch

    kwargs = {"num_classes": 10, **model_kwargs}
    if name.startswith("levit"):
        kwargs["img_size"] = size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _timm().create_model(name, **kwargs)
    return randomize_batchnorm(model, seed).eval()


def timm_deploy(model: nn.Module) -> nn.Module:
    """timm's own deploy conversion (``reparameterize`` / ``fuse`` on every module that has one)."""
    _timm()
    from timm.utils.model import reparameterize_model

    return reparameterize_model(copy.deepcopy(model)).eval()


def torchvision_shufflenet(seed: int = 0) -> nn.Module:
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision_models().shufflenet_v2_x0_5(num_classes=10)
    return randomize_batchnorm(model, seed).eval()


def ultralytics_model(cfg: str = "yolov8n.yaml", seed: int = 0) -> nn.Module:
    """An ultralytics model built from its yaml (a "-seg" yaml makes a SegmentationModel, any other a
    DetectionModel) with random weights and BatchNorm statistics far from the identity."""
    import torch

    tasks = _ultralytics().tasks
    cls = tasks.SegmentationModel if "-seg" in cfg else tasks.DetectionModel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(cfg, verbose=False)
    return randomize_batchnorm(model, seed).eval()
