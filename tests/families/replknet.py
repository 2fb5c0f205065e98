"""RepLKNet (DingXiaoH/RepLKNet-pytorch), reproduced from replknet.py.

``ReparamLargeKernelConv.forward`` as public: ``out = self.lkb_origin(inputs)`` then, with a small
kernel, ``out += self.small_conv(inputs)`` (in place). Both branches are conv+BN with padding k//2
and share stride and groups (depthwise in RepLKNet). ``RepLKBlock`` and ``ConvFFN`` are pre-BN
residual blocks returning ``x + self.drop_path(out)``, with timm's ``DropPath`` (identity in eval)
where the drop-path rate is positive and ``nn.Identity`` otherwise.

Deploy: ``RepLKNet.structural_reparam`` -- ``merge_kernel()`` on every ReparamLargeKernelConv (BN
fused into each branch, the small kernel zero-padded into the centre of the large one). Nothing
else is folded: the public ``deep_fuse_BN`` is a TODO, so the deployed network keeps the pre-BNs,
the conv+BN pairs of pw1/pw2/stem/transitions and the final norm.

The public module keeps ``use_sync_bn`` in a module global that ``RepLKNet(use_sync_bn=True)``
(the default of its constructors) turns on for everything built afterwards; here the flag is an
argument. ``replknet-net`` uses SyncBatchNorm as the public default does (in eval it is a plain
batch_norm); the block-level families use BatchNorm2d.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from . import public


def _drop_path(rate):
    if rate > 0.0:
        return public.timm().layers.DropPath(rate)
    return nn.Identity()


def get_conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias):
    # The public helper switches to an external implicit-GEMM depthwise kernel when the
    # LARGE_KERNEL_CONV_IMPL environment variable is set; without it, plain nn.Conv2d.
    return nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                     dilation=dilation, groups=groups, bias=bias)


def get_bn(channels, sync=False):
    return nn.SyncBatchNorm(channels) if sync else nn.BatchNorm2d(channels)


def conv_bn(in_channels, out_channels, kernel_size, stride, padding, groups, dilation=1, sync=False):
    if padding is None:
        padding = kernel_size // 2
    result = nn.Sequential()
    result.add_module("conv", get_conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=False))
    result.add_module("bn", get_bn(out_channels, sync))
    return result


def conv_bn_relu(in_channels, out_channels, kernel_size, stride, padding, groups, dilation=1, sync=False):
    result = conv_bn(in_channels, out_channels, kernel_size, stride=stride,
                     padding=kernel_size // 2 if padding is None else padding, groups=groups, dilation=dilation,
                     sync=sync)
    result.add_module("nonlinear", nn.ReLU())
    return result


def fuse_bn(conv, bn):
    kernel = conv.weight
    std = (bn.running_var + bn.eps).sqrt()
    t = (bn.weight / std).reshape(-1, 1, 1, 1)
    return kernel * t, bn.bias - bn.running_mean * bn.weight / std


class ReparamLargeKernelConv(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, groups, small_kernel,
                 small_kernel_merged=False, sync=False):
        super().__init__()
        self.kernel_size = kernel_size
        self.small_kernel = small_kernel
        padding = kernel_size // 2  # the public code assumes the conv keeps the feature-map size
        if small_kernel_merged:
            self.lkb_reparam = get_conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                          dilation=1, groups=groups, bias=True)
        else:
            self.lkb_origin = conv_bn(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                      dilation=1, groups=groups, sync=sync)
            if small_kernel is not None:
                assert small_kernel <= kernel_size, "The kernel size for re-param cannot be larger than the large kernel!"
                self.small_conv = conv_bn(in_channels, out_channels, small_kernel, stride=stride,
                                          padding=small_kernel // 2, groups=groups, dilation=1, sync=sync)

    def forward(self, inputs):
        if hasattr(self, "lkb_reparam"):
            out = self.lkb_reparam(inputs)
        else:
            out = self.lkb_origin(inputs)
            if hasattr(self, "small_conv"):
                out += self.small_conv(inputs)
        return out

    def get_equivalent_kernel_bias(self):
        eq_k, eq_b = fuse_bn(self.lkb_origin.conv, self.lkb_origin.bn)
        if hasattr(self, "small_conv"):
            small_k, small_b = fuse_bn(self.small_conv.conv, self.small_conv.bn)
            eq_b += small_b
            eq_k += nn.functional.pad(small_k, [(self.kernel_size - self.small_kernel) // 2] * 4)
        return eq_k, eq_b

    def merge_kernel(self):
        eq_k, eq_b = self.get_equivalent_kernel_bias()
        origin = self.lkb_origin.conv
        self.lkb_reparam = get_conv2d(origin.in_channels, origin.out_channels, origin.kernel_size,
                                      stride=origin.stride, padding=origin.padding, dilation=origin.dilation,
                                      groups=origin.groups, bias=True)
        self.lkb_reparam.weight.data = eq_k.detach()
        self.lkb_reparam.bias.data = eq_b.detach()
        self.__delattr__("lkb_origin")
        if hasattr(self, "small_conv"):
            self.__delattr__("small_conv")


class ConvFFN(nn.Module):
    def __init__(self, in_channels, internal_channels, out_channels, drop_path, sync=False):
        super().__init__()
        self.drop_path = _drop_path(drop_path)
        self.preffn_bn = get_bn(in_channels, sync)
        self.pw1 = conv_bn(in_channels, internal_channels, kernel_size=1, stride=1, padding=0, groups=1, sync=sync)
        self.pw2 = conv_bn(internal_channels, out_channels, kernel_size=1, stride=1, padding=0, groups=1, sync=sync)
        self.nonlinear = nn.GELU()

    def forward(self, x):
        out = self.preffn_bn(x)
        out = self.pw1(out)
        out = self.nonlinear(out)
        out = self.pw2(out)
        return x + self.drop_path(out)


class RepLKBlock(nn.Module):
    def __init__(self, in_channels, dw_channels, block_lk_size, small_kernel, drop_path, small_kernel_merged=False,
                 sync=False):
        super().__init__()
        self.pw1 = conv_bn_relu(in_channels, dw_channels, 1, 1, 0, groups=1, sync=sync)
        self.pw2 = conv_bn(dw_channels, in_channels, 1, 1, 0, groups=1, sync=sync)
        self.large_kernel = ReparamLargeKernelConv(dw_channels, dw_channels, kernel_size=block_lk_size, stride=1,
                                                   groups=dw_channels, small_kernel=small_kernel,
                                                   small_kernel_merged=small_kernel_merged, sync=sync)
        self.lk_nonlinear = nn.ReLU()
        self.prelkb_bn = get_bn(in_channels, sync)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x):
        out = self.prelkb_bn(x)
        out = self.pw1(out)
        out = self.large_kernel(out)
        out = self.lk_nonlinear(out)
        out = self.pw2(out)
        return x + self.drop_path(out)


class RepLKNetStage(nn.Module):
    def __init__(self, channels, num_blocks, stage_lk_size, drop_path, small_kernel, dw_ratio=1, ffn_ratio=4,
                 small_kernel_merged=False, norm_intermediate_features=False, sync=False):
        super().__init__()
        blks = []
        for i in range(num_blocks):
            block_drop_path = drop_path[i] if isinstance(drop_path, list) else drop_path
            blks.append(RepLKBlock(channels, int(channels * dw_ratio), stage_lk_size, small_kernel, block_drop_path,
                                   small_kernel_merged=small_kernel_merged, sync=sync))
            blks.append(ConvFFN(channels, int(channels * ffn_ratio), channels, block_drop_path, sync=sync))
        self.blocks = nn.ModuleList(blks)
        self.norm = get_bn(channels, sync) if norm_intermediate_features else nn.Identity()

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return x


class RepLKNet(nn.Module):
    def __init__(self, large_kernel_sizes, layers, channels, drop_path_rate, small_kernel, dw_ratio=1, ffn_ratio=4,
                 in_channels=3, num_classes=1000, small_kernel_merged=False, use_sync_bn=True):
        super().__init__()
        sync = use_sync_bn
        base_width = channels[0]
        self.num_stages = len(layers)
        self.stem = nn.ModuleList([
            conv_bn_relu(in_channels, base_width, kernel_size=3, stride=2, padding=1, groups=1, sync=sync),
            conv_bn_relu(base_width, base_width, kernel_size=3, stride=1, padding=1, groups=base_width, sync=sync),
            conv_bn_relu(base_width, base_width, kernel_size=1, stride=1, padding=0, groups=1, sync=sync),
            conv_bn_relu(base_width, base_width, kernel_size=3, stride=2, padding=1, groups=base_width, sync=sync)])
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(layers))]
        self.stages = nn.ModuleList()
        self.transitions = nn.ModuleList()
        for stage_idx in range(self.num_stages):
            self.stages.append(RepLKNetStage(channels[stage_idx], layers[stage_idx], large_kernel_sizes[stage_idx],
                                             drop_path=dpr[sum(layers[:stage_idx]):sum(layers[:stage_idx + 1])],
                                             small_kernel=small_kernel, dw_ratio=dw_ratio, ffn_ratio=ffn_ratio,
                                             small_kernel_merged=small_kernel_merged, sync=sync))
            if stage_idx < len(layers) - 1:
                self.transitions.append(nn.Sequential(
                    conv_bn_relu(channels[stage_idx], channels[stage_idx + 1], 1, 1, 0, groups=1, sync=sync),
                    conv_bn_relu(channels[stage_idx + 1], channels[stage_idx + 1], 3, stride=2, padding=1,
                                 groups=channels[stage_idx + 1], sync=sync)))
        self.norm = get_bn(channels[-1], sync)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels[-1], num_classes)

    def forward_features(self, x):
        x = self.stem[0](x)
        for stem_layer in self.stem[1:]:
            x = stem_layer(x)
        for stage_idx in range(self.num_stages):
            x = self.stages[stage_idx](x)
            if stage_idx < self.num_stages - 1:
                x = self.transitions[stage_idx](x)
        return x

    def forward(self, x):
        x = self.forward_features(x)
        x = self.norm(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.head(x)
        return x

    def structural_reparam(self):
        for m in self.modules():
            if hasattr(m, "merge_kernel"):
                m.merge_kernel()


def deploy(model: nn.Module) -> nn.Module:
    """``structural_reparam``: ``merge_kernel()`` on every module that has it (the public method
    lives on RepLKNet; for block-level builds the same loop runs on the block)."""
    deployed = copy.deepcopy(model)
    for m in deployed.modules():
        if hasattr(m, "merge_kernel"):
            m.merge_kernel()
    return deployed.eval()
