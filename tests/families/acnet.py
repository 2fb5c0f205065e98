"""ACNet (DingXiaoH/ACNet), reproduced from acnet/acb.py, acnet/acnet_builder.py, builder.py,
base_model/cfqk.py and base_model/resnet.py (RCNet, the ResNet-56 family for CIFAR).

``ACBlock.forward`` as public: square kxk conv + BN, vertical kx1 conv + BN and horizontal 1xk conv
+ BN, summed as ``square_outputs + vertical_outputs + horizontal_outputs``. Their paddings are
shifted so that the windows line up (``hor_padding = [padding - k//2, padding]``,
``ver_padding = [padding, padding - k//2]``); when ``padding < k//2`` the asymmetric convs get
``[0, padding]`` / ``[padding, 0]`` and their input is cropped by ``crop = k//2 - padding`` with
``input[:, :, :, crop:-crop]`` (vertical) and ``input[:, :, crop:-crop, :]`` (horizontal).

Deploy: ``ACBlock.switch_to_deploy`` (``_fuse_bn_tensor`` + ``_add_to_square_kernel`` into the
centre of the square kernel), applied to every ACBlock. ACNet folds nothing else: the 1x1 and the
plain ``Conv2dBN`` layers that ``ACNetBuilder`` leaves to ``ConvBuilder`` keep their BN in the
deployed model (its deploy builder builds them the same way).

Limitations of the public code, noted as found:

* ``use_affine=False``: the BNs have no weight/bias, and the public ``_fuse_bn_tensor`` computes
  ``bn.weight / std`` -- a TypeError, the public conversion cannot deploy that variant. Here gamma=1,
  beta=0 are used for the missing affine parameters (what the BN computes), so the variant can be
  compared at all.
* The crop variants (``padding < k//2``) are exact: the crop moves the asymmetric kernels' centre
  onto the square kernel's centre row/column, for any stride. (DBB's repository has an older
  ACBlock whose ``CropLayer`` asserts ``rows_to_crop >= 0`` with ``rows_to_crop = -padding``: there
  a crop only works for ``padding == 0``; that variant is not reproduced.)
* ``acnet_builder.py`` passes ``use_last_bn=`` to ``ACBlock``, which the ``acb.py`` it imports does
  not accept (two revisions out of step); the builder here passes ``gamma_init`` only.
* ``reduce_gamma`` / ``gamma_init`` only set the three BN gammas at init (to 1/3 or the given
  value); the builds keep those gammas and randomize the running stats and betas.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F
import torch.nn.init as init

from ._common import switch_all_to_deploy


class ACBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros", deploy=False, use_affine=True, reduce_gamma=False, gamma_init=None):
        super().__init__()
        self.deploy = deploy
        if deploy:
            self.fused_conv = nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, kernel_size),
                                        stride=stride, padding=padding, dilation=dilation, groups=groups,
                                        bias=True, padding_mode=padding_mode)
            return
        self.square_conv = nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, kernel_size),
                                     stride=stride, padding=padding, dilation=dilation, groups=groups, bias=False,
                                     padding_mode=padding_mode)
        self.square_bn = nn.BatchNorm2d(num_features=out_channels, affine=use_affine)

        if padding - kernel_size // 2 >= 0:
            # Common case (k=3, p=1 or k=5, p=2): shift the asymmetric convs' padding to align windows.
            self.crop = 0
            hor_padding = [padding - kernel_size // 2, padding]
            ver_padding = [padding, padding - kernel_size // 2]
        else:
            # A "negative padding" is a crop; nn.Conv2d cannot pad negatively, so crop by hand.
            self.crop = kernel_size // 2 - padding
            hor_padding = [0, padding]
            ver_padding = [padding, 0]

        self.ver_conv = nn.Conv2d(in_channels, out_channels, kernel_size=(kernel_size, 1), stride=stride,
                                  padding=ver_padding, dilation=dilation, groups=groups, bias=False,
                                  padding_mode=padding_mode)
        self.hor_conv = nn.Conv2d(in_channels, out_channels, kernel_size=(1, kernel_size), stride=stride,
                                  padding=hor_padding, dilation=dilation, groups=groups, bias=False,
                                  padding_mode=padding_mode)
        self.ver_bn = nn.BatchNorm2d(num_features=out_channels, affine=use_affine)
        self.hor_bn = nn.BatchNorm2d(num_features=out_channels, affine=use_affine)

        if reduce_gamma:
            self.init_gamma(1.0 / 3)
        if gamma_init is not None:
            assert not reduce_gamma
            self.init_gamma(gamma_init)

    def _fuse_bn_tensor(self, conv, bn):
        std = (bn.running_var + bn.eps).sqrt()
        # Public: bn.weight / std and bn.bias (TypeError when use_affine=False); see module docstring.
        gamma = bn.weight if bn.weight is not None else 1.0
        beta = bn.bias if bn.bias is not None else 0.0
        t = (gamma / std).reshape(-1, 1, 1, 1)
        return conv.weight * t, beta - bn.running_mean * gamma / std

    def _add_to_square_kernel(self, square_kernel, asym_kernel):
        asym_h, asym_w = asym_kernel.size(2), asym_kernel.size(3)
        square_h, square_w = square_kernel.size(2), square_kernel.size(3)
        square_kernel[:, :, square_h // 2 - asym_h // 2: square_h // 2 - asym_h // 2 + asym_h,
                      square_w // 2 - asym_w // 2: square_w // 2 - asym_w // 2 + asym_w] += asym_kernel

    def get_equivalent_kernel_bias(self):
        hor_k, hor_b = self._fuse_bn_tensor(self.hor_conv, self.hor_bn)
        ver_k, ver_b = self._fuse_bn_tensor(self.ver_conv, self.ver_bn)
        square_k, square_b = self._fuse_bn_tensor(self.square_conv, self.square_bn)
        self._add_to_square_kernel(square_k, hor_k)
        self._add_to_square_kernel(square_k, ver_k)
        return square_k, hor_b + ver_b + square_b

    def switch_to_deploy(self):
        deploy_k, deploy_b = self.get_equivalent_kernel_bias()
        self.deploy = True
        sq = self.square_conv
        self.fused_conv = nn.Conv2d(sq.in_channels, sq.out_channels, kernel_size=sq.kernel_size, stride=sq.stride,
                                    padding=sq.padding, dilation=sq.dilation, groups=sq.groups, bias=True,
                                    padding_mode=sq.padding_mode)
        for name in ("square_conv", "square_bn", "hor_conv", "hor_bn", "ver_conv", "ver_bn"):
            self.__delattr__(name)
        self.fused_conv.weight.data = deploy_k.detach()
        self.fused_conv.bias.data = deploy_b.detach()

    def init_gamma(self, gamma_value):
        init.constant_(self.square_bn.weight, gamma_value)
        init.constant_(self.ver_bn.weight, gamma_value)
        init.constant_(self.hor_bn.weight, gamma_value)

    def single_init(self):
        init.constant_(self.square_bn.weight, 1.0)
        init.constant_(self.ver_bn.weight, 0.0)
        init.constant_(self.hor_bn.weight, 0.0)

    def forward(self, input):
        if self.deploy:
            return self.fused_conv(input)
        square_outputs = self.square_conv(input)
        square_outputs = self.square_bn(square_outputs)
        if self.crop > 0:
            ver_input = input[:, :, :, self.crop:-self.crop]
            hor_input = input[:, :, self.crop:-self.crop, :]
        else:
            ver_input = input
            hor_input = input
        vertical_outputs = self.ver_conv(ver_input)
        vertical_outputs = self.ver_bn(vertical_outputs)
        horizontal_outputs = self.hor_conv(hor_input)
        horizontal_outputs = self.hor_bn(horizontal_outputs)
        result = square_outputs + vertical_outputs + horizontal_outputs
        return result


# --- builder.py / acnet_builder.py --------------------------------------------------------------

class ConvBuilder(nn.Module):
    """The public builder is an nn.Module that every network stores as ``self.bd`` (one shared
    instance, so it appears as a parameterless submodule of the network and of each block)."""

    def __init__(self):
        super().__init__()
        self.BN_eps = 1e-5
        self.BN_momentum = 0.1
        self.BN_affine = True
        self.BN_track_running_stats = True

    def Conv2d(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
               padding_mode="zeros", use_original_conv=False):
        return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=groups, bias=bias, padding_mode=padding_mode)

    def BatchNorm2d(self, num_features, eps=None, momentum=None, affine=None, track_running_stats=None):
        return nn.BatchNorm2d(num_features,
                              eps=self.BN_eps if eps is None else eps,
                              momentum=self.BN_momentum if momentum is None else momentum,
                              affine=self.BN_affine if affine is None else affine,
                              track_running_stats=(self.BN_track_running_stats if track_running_stats is None
                                                   else track_running_stats))

    def Sequential(self, *args):
        return nn.Sequential(*args)

    def ReLU(self):
        return nn.ReLU()

    def Conv2dBN(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros", use_original_conv=False):
        se = self.Sequential()
        se.add_module("conv", self.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                          dilation=dilation, groups=groups, bias=False, padding_mode=padding_mode,
                                          use_original_conv=use_original_conv))
        se.add_module("bn", self.BatchNorm2d(num_features=out_channels))
        return se

    def Conv2dBNReLU(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     padding_mode="zeros", use_original_conv=False):
        conv = self.Conv2dBN(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                             dilation=dilation, groups=groups, padding_mode=padding_mode,
                             use_original_conv=use_original_conv)
        conv.add_module("relu", self.ReLU())
        return conv

    def Linear(self, in_features, out_features, bias=True):
        return nn.Linear(in_features=in_features, out_features=out_features, bias=bias)

    def Identity(self):
        return nn.Identity()

    def relu(self, in_features):
        return F.relu(in_features)

    def max_pool2d(self, in_features, kernel_size, stride, padding):
        return F.max_pool2d(in_features, kernel_size=kernel_size, stride=stride, padding=padding)

    def avg_pool2d(self, in_features, kernel_size, stride, padding):
        return F.avg_pool2d(in_features, kernel_size=kernel_size, stride=stride, padding=padding)

    def flatten(self, in_features):
        return in_features.view(in_features.size(0), -1)


class ACNetBuilder(ConvBuilder):
    def __init__(self, deploy=False, gamma_init=None):
        super().__init__()
        self.deploy = deploy
        self.gamma_init = gamma_init

    def switch_to_deploy(self):
        self.deploy = True

    def _is_plain(self, kernel_size, use_original_conv):
        return use_original_conv or kernel_size == 1 or kernel_size == (1, 1) or kernel_size >= 7

    def Conv2dBN(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 padding_mode="zeros", use_original_conv=False):
        if self._is_plain(kernel_size, use_original_conv):
            return super().Conv2dBN(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                    dilation=dilation, groups=groups, padding_mode=padding_mode,
                                    use_original_conv=True)
        return ACBlock(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                       dilation=dilation, groups=groups, padding_mode=padding_mode, deploy=self.deploy,
                       gamma_init=self.gamma_init)

    def Conv2dBNReLU(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                     padding_mode="zeros", use_original_conv=False):
        if self._is_plain(kernel_size, use_original_conv):
            return super().Conv2dBNReLU(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                                        dilation=dilation, groups=groups, padding_mode=padding_mode,
                                        use_original_conv=True)
        se = nn.Sequential()
        se.add_module("acb", ACBlock(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, groups=groups, padding_mode=padding_mode,
                                     deploy=self.deploy, gamma_init=self.gamma_init))
        se.add_module("relu", self.ReLU())
        return se


# --- base_model/cfqk.py ---------------------------------------------------------------------------

class CFQKBN(nn.Module):
    """Cifar-quick with BN: three 5x5 Conv2dBNReLU (ACBlocks under ACNetBuilder), pools, two FCs."""

    def __init__(self, num_classes, builder, deps):
        super().__init__()
        self.bd = builder
        self.conv1 = self.bd.Conv2dBNReLU(3, deps[0], kernel_size=5, stride=1, padding=2)
        self.conv2 = self.bd.Conv2dBNReLU(deps[0], deps[1], kernel_size=5, stride=1, padding=2)
        self.conv3 = self.bd.Conv2dBNReLU(deps[1], deps[2], kernel_size=5, stride=1, padding=2)
        self.fc1 = self.bd.Linear(in_features=3 * 3 * deps[2], out_features=64)
        self.fc2 = self.bd.Linear(in_features=64, out_features=num_classes)

    def forward(self, x):
        x = self.conv1(x)  # 32
        x = self.bd.max_pool2d(x, kernel_size=3, stride=2, padding=0)  # 15
        x = self.conv2(x)
        x = self.bd.avg_pool2d(x, kernel_size=3, stride=2, padding=0)  # 7
        x = self.conv3(x)
        x = self.bd.avg_pool2d(x, kernel_size=3, stride=2, padding=0)  # 3
        x = self.bd.flatten(x)
        x = self.fc1(x)
        x = self.bd.relu(x)
        x = self.fc2(x)
        return x


# --- base_model/resnet.py (RCNet) -----------------------------------------------------------------

class RCBlock(nn.Module):
    def __init__(self, in_channels, out_channels, stride=1, builder=None):
        super().__init__()
        self.bd = builder
        self.conv1 = self.bd.Conv2dBNReLU(in_channels, out_channels, kernel_size=3, stride=stride, padding=1)
        self.conv2 = self.bd.Conv2dBN(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.shortcut = self.bd.Sequential()
        if stride != 1:
            self.shortcut = self.bd.Conv2dBN(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x):
        out = self.conv1(x)
        out = self.conv2(out)
        out += self.shortcut(x)
        out = self.bd.relu(out)
        return out


class RCNet(nn.Module):
    def __init__(self, block_counts, num_classes, builder, widths=(16, 32, 64)):
        super().__init__()
        self.bd = builder
        w1, w2, w3 = widths
        self.conv1 = self.bd.Conv2dBNReLU(3, w1, kernel_size=3, stride=1, padding=1)
        self.stage1 = self._build_stage(w1, w1, block_counts[0], stride=1)
        self.stage2 = self._build_stage(w1, w2, block_counts[1], stride=2)
        self.stage3 = self._build_stage(w2, w3, block_counts[2], stride=2)
        self.linear = self.bd.Linear(in_features=w3, out_features=num_classes)

    def _build_stage(self, stage_in_channels, out_channels, num_blocks, stride):
        strides = [stride] + [1] * (num_blocks - 1)
        in_channels = [stage_in_channels] + [out_channels] * (num_blocks - 1)
        return nn.Sequential(*[RCBlock(c, out_channels, stride=s, builder=self.bd)
                               for s, c in zip(strides, in_channels)])

    def forward(self, x):
        out = self.conv1(x)
        out = self.stage1(out)
        out = self.stage2(out)
        out = self.stage3(out)
        out = self.bd.avg_pool2d(in_features=out, kernel_size=8, stride=1, padding=0)
        out = self.bd.flatten(out)
        out = self.linear(out)
        return out


def deploy(model: nn.Module) -> nn.Module:
    return switch_all_to_deploy(model)
