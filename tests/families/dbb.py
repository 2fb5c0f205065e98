"""Diverse Branch Block (DingXiaoH/DiverseBranchBlock), reproduced from diversebranchblock.py,
dbb_transforms.py, convnet_utils.py, resnet.py and mobilenet.py.

Constructs kept as the public forward passes write them:

* ``DiverseBranchBlock.forward`` sums its branches in place: ``out = dbb_origin(x)``,
  ``out += dbb_1x1(x)``, ``out += dbb_avg(x)``, ``out += dbb_1x1_kxk(x)``, then ``nonlinear``
  (``nn.Identity`` or ``nn.ReLU``).
* ``BNAndPadLayer`` runs BN, ``F.pad``s by ``pad_pixels`` and writes the BN's shift for a zero
  input into the four borders by slice assignment, so that a following kxk conv with padding 0
  sees exactly what a BN-then-zero-pad-free kxk conv would.
* ``IdentityBasedConv1x1`` adds a constant identity tensor (a plain attribute, not a buffer) to its
  weight inside ``forward`` and calls ``F.conv2d``.
* The avg branch is ``1x1 conv -> BNAndPad -> AvgPool(k, stride, padding=0) -> BN`` when
  ``groups < out_channels``, else ``AvgPool(k, stride, padding) -> BN`` (count_include_pad).

Deploy conversion: the family's own ``get_equivalent_kernel_bias`` / ``switch_to_deploy`` (transI
fuse BN, transII add branches, transIII merge 1x1 then kxk, per group; transV avg as a conv kernel;
transVI pad a 1x1 to kxk) and convert.py's loop over every module with ``switch_to_deploy``
(``ConvBN`` included, so the 1x1 / 7x7 conv+BN of the networks are folded too).

One deliberate difference: public ``transV_avg`` builds the avg kernel with ``torch.zeros`` in the
default dtype (float32), so converting a float64 model the public way carries a ~1e-8 relative
error from rounding ``1/k**2`` to float32. Here the kernel is built in the dtype of the weights it
is added to; in float32 the result is the same as the public code's.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# --- dbb_transforms -----------------------------------------------------------------------------

def transI_fusebn(kernel, bn):
    gamma = bn.weight
    std = (bn.running_var + bn.eps).sqrt()
    return kernel * ((gamma / std).reshape(-1, 1, 1, 1)), bn.bias - bn.running_mean * gamma / std


def transII_addbranch(kernels, biases):
    return sum(kernels), sum(biases)


def transIII_1x1_kxk(k1, b1, k2, b2, groups):
    if groups == 1:
        k = F.conv2d(k2, k1.permute(1, 0, 2, 3))
        b_hat = (k2 * b1.reshape(1, -1, 1, 1)).sum((1, 2, 3))
    else:
        k_slices, b_slices = [], []
        k1_t = k1.permute(1, 0, 2, 3)
        k1_width = k1.size(0) // groups
        k2_width = k2.size(0) // groups
        for g in range(groups):
            k1_t_slice = k1_t[:, g * k1_width:(g + 1) * k1_width, :, :]
            k2_slice = k2[g * k2_width:(g + 1) * k2_width, :, :, :]
            k_slices.append(F.conv2d(k2_slice, k1_t_slice))
            b_slices.append((k2_slice * b1[g * k1_width:(g + 1) * k1_width].reshape(1, -1, 1, 1)).sum((1, 2, 3)))
        k, b_hat = transIV_depthconcat(k_slices, b_slices)
    return k, b_hat + b2


def transIV_depthconcat(kernels, biases):
    return torch.cat(kernels, dim=0), torch.cat(biases)


def transV_avg(channels, kernel_size, groups, dtype=None):
    input_dim = channels // groups
    k = torch.zeros((channels, input_dim, kernel_size, kernel_size), dtype=dtype)
    k[torch.arange(channels), torch.arange(input_dim).repeat(groups), :, :] = 1.0 / kernel_size ** 2
    return k


def transVI_multiscale(kernel, target_kernel_size):
    h_pad = (target_kernel_size - kernel.size(2)) // 2
    w_pad = (target_kernel_size - kernel.size(3)) // 2
    return F.pad(kernel, [h_pad, h_pad, w_pad, w_pad])


# --- diversebranchblock -------------------------------------------------------------------------

def conv_bn(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
            padding_mode="zeros"):
    se = nn.Sequential()
    se.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, bias=False, padding_mode=padding_mode))
    se.add_module("bn", nn.BatchNorm2d(out_channels, affine=True))
    return se


class IdentityBasedConv1x1(nn.Conv2d):
    def __init__(self, channels, groups=1):
        super().__init__(channels, channels, kernel_size=1, stride=1, padding=0, groups=groups, bias=False)
        assert channels % groups == 0
        input_dim = channels // groups
        id_value = torch.zeros(channels, input_dim, 1, 1)
        id_value[torch.arange(channels), torch.arange(channels) % input_dim, 0, 0] = 1
        self.id_tensor = id_value.type_as(self.weight)
        nn.init.zeros_(self.weight)

    def forward(self, input):
        kernel = self.weight + self.id_tensor.to(self.weight.device)
        return F.conv2d(input, kernel, None, stride=1, padding=0, dilation=self.dilation, groups=self.groups)

    def get_actual_kernel(self):
        return self.weight + self.id_tensor.to(self.weight.device)


class BNAndPadLayer(nn.Module):
    def __init__(self, pad_pixels, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)
        self.pad_pixels = pad_pixels

    def forward(self, input):
        output = self.bn(input)
        if self.pad_pixels > 0:
            if self.bn.affine:
                pad_values = self.bn.bias.detach() - self.bn.running_mean * self.bn.weight.detach() / torch.sqrt(
                    self.bn.running_var + self.bn.eps)
            else:
                pad_values = -self.bn.running_mean / torch.sqrt(self.bn.running_var + self.bn.eps)
            output = F.pad(output, [self.pad_pixels] * 4)
            pad_values = pad_values.view(1, -1, 1, 1)
            output[:, :, 0:self.pad_pixels, :] = pad_values
            output[:, :, -self.pad_pixels:, :] = pad_values
            output[:, :, :, 0:self.pad_pixels] = pad_values
            output[:, :, :, -self.pad_pixels:] = pad_values
        return output

    @property
    def weight(self):
        return self.bn.weight

    @property
    def bias(self):
        return self.bn.bias

    @property
    def running_mean(self):
        return self.bn.running_mean

    @property
    def running_var(self):
        return self.bn.running_var

    @property
    def eps(self):
        return self.bn.eps


class DiverseBranchBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 internal_channels_1x1_3x3=None, deploy=False, nonlinear=None, single_init=False):
        super().__init__()
        self.deploy = deploy
        self.nonlinear = nn.Identity() if nonlinear is None else nonlinear
        self.kernel_size = kernel_size
        self.out_channels = out_channels
        self.groups = groups
        assert padding == kernel_size // 2

        if deploy:
            self.dbb_reparam = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=groups, bias=True)
            return

        self.dbb_origin = conv_bn(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  dilation=dilation, groups=groups)

        self.dbb_avg = nn.Sequential()
        if groups < out_channels:
            self.dbb_avg.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0,
                                                      groups=groups, bias=False))
            self.dbb_avg.add_module("bn", BNAndPadLayer(pad_pixels=padding, num_features=out_channels))
            self.dbb_avg.add_module("avg", nn.AvgPool2d(kernel_size=kernel_size, stride=stride, padding=0))
            self.dbb_1x1 = conv_bn(in_channels, out_channels, kernel_size=1, stride=stride, padding=0, groups=groups)
        else:
            self.dbb_avg.add_module("avg", nn.AvgPool2d(kernel_size=kernel_size, stride=stride, padding=padding))
        self.dbb_avg.add_module("avgbn", nn.BatchNorm2d(out_channels))

        if internal_channels_1x1_3x3 is None:
            # For mobilenet (depthwise), the public code uses 2x internal channels.
            internal_channels_1x1_3x3 = in_channels if groups < out_channels else 2 * in_channels

        self.dbb_1x1_kxk = nn.Sequential()
        if internal_channels_1x1_3x3 == in_channels:
            self.dbb_1x1_kxk.add_module("idconv1", IdentityBasedConv1x1(channels=in_channels, groups=groups))
        else:
            self.dbb_1x1_kxk.add_module("conv1", nn.Conv2d(in_channels, internal_channels_1x1_3x3, kernel_size=1,
                                                           stride=1, padding=0, groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn1", BNAndPadLayer(pad_pixels=padding, num_features=internal_channels_1x1_3x3,
                                                         affine=True))
        self.dbb_1x1_kxk.add_module("conv2", nn.Conv2d(internal_channels_1x1_3x3, out_channels,
                                                       kernel_size=kernel_size, stride=stride, padding=0,
                                                       groups=groups, bias=False))
        self.dbb_1x1_kxk.add_module("bn2", nn.BatchNorm2d(out_channels))

        if single_init:
            self.single_init()

    def get_equivalent_kernel_bias(self):
        k_origin, b_origin = transI_fusebn(self.dbb_origin.conv.weight, self.dbb_origin.bn)

        if hasattr(self, "dbb_1x1"):
            k_1x1, b_1x1 = transI_fusebn(self.dbb_1x1.conv.weight, self.dbb_1x1.bn)
            k_1x1 = transVI_multiscale(k_1x1, self.kernel_size)
        else:
            k_1x1, b_1x1 = 0, 0

        if hasattr(self.dbb_1x1_kxk, "idconv1"):
            k_first = self.dbb_1x1_kxk.idconv1.get_actual_kernel()
        else:
            k_first = self.dbb_1x1_kxk.conv1.weight
        k_first, b_first = transI_fusebn(k_first, self.dbb_1x1_kxk.bn1)
        k_second, b_second = transI_fusebn(self.dbb_1x1_kxk.conv2.weight, self.dbb_1x1_kxk.bn2)
        k_1x1_kxk, b_1x1_kxk = transIII_1x1_kxk(k_first, b_first, k_second, b_second, groups=self.groups)

        avgbn = self.dbb_avg.avgbn
        k_avg = transV_avg(self.out_channels, self.kernel_size, self.groups, dtype=avgbn.weight.dtype)
        k_avg_second, b_avg_second = transI_fusebn(k_avg.to(avgbn.weight.device), avgbn)
        if hasattr(self.dbb_avg, "conv"):
            k_avg_first, b_avg_first = transI_fusebn(self.dbb_avg.conv.weight, self.dbb_avg.bn)
            k_avg_merged, b_avg_merged = transIII_1x1_kxk(k_avg_first, b_avg_first, k_avg_second, b_avg_second,
                                                          groups=self.groups)
        else:
            k_avg_merged, b_avg_merged = k_avg_second, b_avg_second

        return transII_addbranch((k_origin, k_1x1, k_1x1_kxk, k_avg_merged),
                                 (b_origin, b_1x1, b_1x1_kxk, b_avg_merged))

    def switch_to_deploy(self):
        if hasattr(self, "dbb_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        origin = self.dbb_origin.conv
        self.dbb_reparam = nn.Conv2d(origin.in_channels, origin.out_channels, kernel_size=origin.kernel_size,
                                     stride=origin.stride, padding=origin.padding, dilation=origin.dilation,
                                     groups=origin.groups, bias=True)
        self.dbb_reparam.weight.data = kernel
        self.dbb_reparam.bias.data = bias
        for para in self.parameters():
            para.detach_()
        self.__delattr__("dbb_origin")
        self.__delattr__("dbb_avg")
        if hasattr(self, "dbb_1x1"):
            self.__delattr__("dbb_1x1")
        self.__delattr__("dbb_1x1_kxk")

    def forward(self, inputs):
        if hasattr(self, "dbb_reparam"):
            return self.nonlinear(self.dbb_reparam(inputs))
        out = self.dbb_origin(inputs)
        if hasattr(self, "dbb_1x1"):
            out += self.dbb_1x1(inputs)
        out += self.dbb_avg(inputs)
        out += self.dbb_1x1_kxk(inputs)
        return self.nonlinear(out)

    def init_gamma(self, gamma_value):
        if hasattr(self, "dbb_origin"):
            nn.init.constant_(self.dbb_origin.bn.weight, gamma_value)
        if hasattr(self, "dbb_1x1"):
            nn.init.constant_(self.dbb_1x1.bn.weight, gamma_value)
        if hasattr(self, "dbb_avg"):
            nn.init.constant_(self.dbb_avg.avgbn.weight, gamma_value)
        if hasattr(self, "dbb_1x1_kxk"):
            nn.init.constant_(self.dbb_1x1_kxk.bn2.weight, gamma_value)

    def single_init(self):
        self.init_gamma(0.0)
        if hasattr(self, "dbb_origin"):
            nn.init.constant_(self.dbb_origin.bn.weight, 1.0)


# --- convnet_utils ------------------------------------------------------------------------------

class ConvBN(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, deploy=False,
                 nonlinear=None):
        super().__init__()
        self.nonlinear = nn.Identity() if nonlinear is None else nonlinear
        if deploy:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  dilation=dilation, groups=groups, bias=True)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                  dilation=dilation, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        if hasattr(self, "bn"):
            return self.nonlinear(self.bn(self.conv(x)))
        return self.nonlinear(self.conv(x))

    def switch_to_deploy(self):
        kernel, bias = transI_fusebn(self.conv.weight, self.bn)
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, kernel_size=self.conv.kernel_size,
                         stride=self.conv.stride, padding=self.conv.padding, dilation=self.conv.dilation,
                         groups=self.conv.groups, bias=True)
        conv.weight.data = kernel
        conv.bias.data = bias
        for para in self.parameters():
            para.detach_()
        self.__delattr__("conv")
        self.__delattr__("bn")
        self.conv = conv


# The public module switches the implementation with a global (switch_conv_bn_impl); here it is an
# argument threaded through the constructors so that builds do not leak state into each other.
def _block_type(impl, kernel_size):
    if impl == "base" or kernel_size == 1 or kernel_size >= 7:
        return ConvBN
    if impl == "DBB":
        return DiverseBranchBlock
    raise ValueError(impl)


def conv_bn_impl(impl, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    return _block_type(impl, kernel_size)(in_channels=in_channels, out_channels=out_channels,
                                          kernel_size=kernel_size, stride=stride, padding=padding,
                                          dilation=dilation, groups=groups, deploy=False)


def conv_bn_relu_impl(impl, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1):
    return _block_type(impl, kernel_size)(in_channels=in_channels, out_channels=out_channels,
                                          kernel_size=kernel_size, stride=stride, padding=padding,
                                          dilation=dilation, groups=groups, deploy=False, nonlinear=nn.ReLU())


# --- resnet.py ----------------------------------------------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, impl="DBB"):
        super().__init__()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = conv_bn_impl(impl, in_planes, self.expansion * planes, kernel_size=1, stride=stride)
        else:
            self.shortcut = nn.Identity()
        self.conv1 = conv_bn_relu_impl(impl, in_planes, planes, kernel_size=3, stride=stride, padding=1)
        self.conv2 = conv_bn_impl(impl, planes, self.expansion * planes, kernel_size=3, stride=1, padding=1)

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv2(out)
        out = out + self.shortcut(x)
        out = F.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=1000, width_multiplier=1.0, impl="DBB"):
        super().__init__()
        self.impl = impl
        self.in_planes = int(64 * width_multiplier)
        self.stage0 = nn.Sequential()
        self.stage0.add_module("conv1", conv_bn_relu_impl(impl, 3, self.in_planes, kernel_size=7, stride=2,
                                                          padding=3))
        self.stage0.add_module("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        self.stage1 = self._make_stage(block, int(64 * width_multiplier), num_blocks[0], stride=1)
        self.stage2 = self._make_stage(block, int(128 * width_multiplier), num_blocks[1], stride=2)
        self.stage3 = self._make_stage(block, int(256 * width_multiplier), num_blocks[2], stride=2)
        self.stage4 = self._make_stage(block, int(512 * width_multiplier), num_blocks[3], stride=2)
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(int(512 * block.expansion * width_multiplier), num_classes)

    def _make_stage(self, block, planes, num_blocks, stride):
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(block(in_planes=self.in_planes, planes=int(planes), stride=s, impl=self.impl))
            self.in_planes = int(planes * block.expansion)
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = self.stage0(x)
        out = self.stage1(out)
        out = self.stage2(out)
        out = self.stage3(out)
        out = self.stage4(out)
        out = self.gap(out)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def create_res18(width_multiplier=1.0, num_classes=1000):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, width_multiplier=width_multiplier, impl="DBB")


# --- mobilenet.py -------------------------------------------------------------------------------

MOBILE_CHANNELS = [32,
                   32, 64,
                   64, 128,
                   128, 128,
                   128, 256,
                   256, 256,
                   256, 512,
                   512, 512, 512, 512, 512, 512, 512, 512, 512, 512,
                   512, 1024,
                   1024, 1024]


class MobileV1Block(nn.Module):
    """Depthwise conv + pointwise conv."""

    def __init__(self, in_planes, out_planes, stride=1, impl="DBB"):
        super().__init__()
        self.depthwise = conv_bn_relu_impl(impl, in_planes, in_planes, kernel_size=3, stride=stride, padding=1,
                                           groups=in_planes)
        self.pointwise = conv_bn_relu_impl(impl, in_planes, out_planes, kernel_size=1, stride=1, padding=0)

    def forward(self, x):
        out = self.depthwise(x)
        out = self.pointwise(out)
        return out


class MobileV1(nn.Module):
    def __init__(self, num_classes, channels=None, impl="DBB"):
        super().__init__()
        channels = MOBILE_CHANNELS if channels is None else channels
        assert len(channels) == 27
        self.conv1 = conv_bn_relu_impl(impl, 3, channels[0], kernel_size=3, stride=2, padding=1)
        blocks = []
        for block_idx in range(13):
            depthwise_channels = int(channels[block_idx * 2 + 1])
            pointwise_channels = int(channels[block_idx * 2 + 2])
            stride = 2 if block_idx in [1, 3, 5, 11] else 1
            blocks.append(MobileV1Block(depthwise_channels, pointwise_channels, stride=stride, impl=impl))
        self.stem = nn.Sequential(*blocks)
        self.gap = nn.AdaptiveAvgPool2d(output_size=1)
        self.linear = nn.Linear(channels[-1], num_classes)

    def forward(self, x):
        out = self.conv1(x)
        out = self.stem(out)
        out = self.gap(out)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def create_mobilenet(width_divisor=1, num_classes=1000):
    return MobileV1(num_classes=num_classes, channels=[c // width_divisor for c in MOBILE_CHANNELS], impl="DBB")


def perturb_identity_convs(model: nn.Module, gen: torch.Generator) -> None:
    """The public init zeroes IdentityBasedConv1x1's weight (the kernel is identity + weight); give it
    a small random perturbation, as after training, so the branch is not a pure identity."""
    for module in model.modules():
        if isinstance(module, IdentityBasedConv1x1):
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.2)


def deploy(model: nn.Module) -> nn.Module:
    """convert.py: deepcopy, then ``switch_to_deploy()`` on every module that has it."""
    from ._common import switch_all_to_deploy

    return switch_all_to_deploy(model)
