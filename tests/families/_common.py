"""Helpers shared by the family reproductions: seeded builds and BatchNorm statistics far from identity.

The reproductions in this folder are written from reading the public code of each family; none of
that code is a pip package here. Each module keeps the public module structure and attribute names
so that a captured graph shows the same constructs (in-place sums, slice assignment, crops, cat,
channel shuffle ...) as the real thing.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn as nn


def randomize_batchnorm(model: nn.Module, seed: int, *, keep_gamma: bool = False) -> nn.Module:
    """Give every BatchNorm statistics and affine parameters that are far from the identity.

    running_var in [0.5, 2], running_mean ~ N(0, 0.5), gamma in [0.5, 1.5] (left as initialised with
    ``keep_gamma``: ACNet's reduce_gamma / gamma_init variants are about that value), beta ~ N(0, 0.5).
    BatchNorms without running stats or without affine parameters keep what they lack.
    """
    gen = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            n = module.num_features
            if module.track_running_stats:
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            if module.affine:
                if not keep_gamma:
                    module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.5)
    return model


def seeded_build(
    factory: Callable[[], nn.Module],
    seed: int,
    *,
    keep_gamma: bool = False,
    after: Callable[[nn.Module, torch.Generator], None] | None = None,
) -> Callable[[], nn.Module]:
    """A ``build()`` that constructs ``factory()`` under ``seed`` without touching the global RNG.

    ``after(model, generator)`` may randomize what the public init leaves constant (DBB's zero
    IdentityBasedConv1x1 weights, YOLOv6's BottleRep alpha) so that every parameter carries signal.
    """

    def build() -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = factory()
        randomize_batchnorm(model, seed, keep_gamma=keep_gamma)
        if after is not None:
            with torch.no_grad():
                after(model, torch.Generator().manual_seed(20_000 + seed))
        return model.eval()

    return build


def switch_all_to_deploy(model: nn.Module) -> nn.Module:
    """What DBB's convert.py, RepVGG-style repos and ACNet's acb.py self-test do: deepcopy, then call
    ``switch_to_deploy()`` on every module that has one (iterating ``model.modules()`` while they
    replace their own children, as the public loops do)."""
    deployed = copy.deepcopy(model)
    for module in deployed.modules():
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return deployed.eval()


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
