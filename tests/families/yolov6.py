"""YOLOv6 (meituan/YOLOv6) rep-style blocks, reproduced from yolov6/layers/common.py (the current
ConvModule-based revision), yolov6/utils/torch_utils.py and the deploy/export flow.

Constructs kept as public:

* ``ConvModule`` takes its activation from a module-level ``activation_table`` dict of module
  *instances*: every ConvModule with ``'relu'`` holds the same ``nn.ReLU`` object.
* ``RepVGGBlock.forward``: ``self.nonlinearity(self.se(self.rbr_dense(x) + self.rbr_1x1(x) + id_out))``
  with ``id_out = 0`` (a Python int) when there is no identity branch, else a BatchNorm2d of x;
  ``se`` is ``nn.Identity``.
* ``QARepVGGBlock``: 3x3 conv+BN, plain 1x1 conv (no BN), ``nn.Identity`` identity, then a post
  ``self.bn`` over the sum; ``QARepVGGBlockV2`` adds ``nn.AvgPool2d(3, stride, 1)``.
* ``BottleRep``: ``outputs + self.alpha * x`` (alpha a 1-element Parameter when ``weight=True``);
  ``BepC3``: ``cv3(torch.cat((m(cv1(x)), cv2(x)), dim=1))``.
* ``initialize_weights`` (called by YOLOv6's Model): every ``nn.BatchNorm2d`` gets eps=1e-3,
  momentum=0.03; every ReLU/SiLU/... ``inplace=True``.

Deploy, as YOLOv6 does it (``load_checkpoint(fuse=True)`` then export/eval): ``fuse_model`` folds
every ConvModule's BN into its conv and rebinds ``m.forward = m.forward_fuse`` on the instance, then
``switch_to_deploy()`` on every RepVGGBlock (QARepVGG blocks included). The current
``RepVGGBlock._fuse_bn_tensor`` returns a ConvModule branch's ``conv.weight, conv.bias`` as they
are, i.e. it is only right *after* fuse_model; called alone it gets ``bias=None`` and fails.
QARepVGG blocks keep their post BN ("keep post bn for QAT").

Public quirks found: ``fuse_conv_and_bn`` builds the fused conv in the default dtype (float32)
and without ``dilation``/``padding_mode``; a float64 model comes back with float32 convs (which
then refuse float64 input). Here the fused conv takes the weight's dtype. ``_avg_to_3x3_tensor``
likewise builds 1/9 in float32; here in the weight's dtype.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.nn.parameter import Parameter

activation_table = {"relu": nn.ReLU(), "silu": nn.SiLU(), "hardswish": nn.Hardswish()}


class ConvModule(nn.Module):
    """Conv + BN + activation."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, activation_type, padding=None, groups=1,
                 bias=False):
        super().__init__()
        if padding is None:
            padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=padding,
                              groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels)
        if activation_type is not None:
            self.act = activation_table.get(activation_type)
        self.activation_type = activation_type

    def forward(self, x):
        if self.activation_type is None:
            return self.bn(self.conv(x))
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        if self.activation_type is None:
            return self.conv(x)
        return self.act(self.conv(x))


class ConvBNReLU(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, groups=1, bias=False):
        super().__init__()
        self.block = ConvModule(in_channels, out_channels, kernel_size, stride, "relu", padding, groups, bias)

    def forward(self, x):
        return self.block(x)


class ConvBNSiLU(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=None, groups=1, bias=False):
        super().__init__()
        self.block = ConvModule(in_channels, out_channels, kernel_size, stride, "silu", padding, groups, bias)

    def forward(self, x):
        return self.block(x)


def _identity_kernel(in_channels, groups, device):
    input_dim = in_channels // groups
    # Public: np.zeros(..., dtype=np.float32); 0/1 are exact in any dtype.
    kernel_value = torch.zeros((in_channels, input_dim, 3, 3), dtype=torch.float32)
    for i in range(in_channels):
        kernel_value[i, i % input_dim, 1, 1] = 1
    return kernel_value.to(device)


class RepVGGBlock(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, dilation=1, groups=1,
                 padding_mode="zeros", deploy=False, use_se=False):
        super().__init__()
        self.deploy = deploy
        self.groups = groups
        self.in_channels = in_channels
        self.out_channels = out_channels
        assert kernel_size == 3
        assert padding == 1
        padding_11 = padding - kernel_size // 2
        self.nonlinearity = nn.ReLU()
        if use_se:
            raise ValueError("use_se: YOLOv6's RepVGGBlock has no SE block (the public code refuses it too)")
        self.se = nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                         padding=padding, dilation=dilation, groups=groups, bias=True,
                                         padding_mode=padding_mode)
        else:
            self.rbr_identity = (nn.BatchNorm2d(num_features=in_channels)
                                 if out_channels == in_channels and stride == 1 else None)
            self.rbr_dense = ConvModule(in_channels, out_channels, kernel_size=kernel_size, stride=stride,
                                        activation_type=None, padding=padding, groups=groups)
            self.rbr_1x1 = ConvModule(in_channels, out_channels, kernel_size=1, stride=stride,
                                      activation_type=None, padding=padding_11, groups=groups)

    def forward(self, inputs):
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.se(self.rbr_reparam(inputs)))
        if self.rbr_identity is None:
            id_out = 0
        else:
            id_out = self.rbr_identity(inputs)
        return self.nonlinearity(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out))

    def get_equivalent_kernel_bias(self):
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel1x1, bias1x1 = self._fuse_bn_tensor(self.rbr_1x1)
        kernelid, biasid = self._fuse_bn_tensor(self.rbr_identity)
        return kernel3x3 + self._pad_1x1_to_3x3_tensor(kernel1x1) + kernelid, bias3x3 + bias1x1 + biasid

    def _avg_to_3x3_tensor(self, avgp, dtype=None):
        channels = self.in_channels
        groups = self.groups
        kernel_size = avgp.kernel_size
        input_dim = channels // groups
        k = torch.zeros((channels, input_dim, kernel_size, kernel_size), dtype=dtype)
        k[torch.arange(channels), torch.arange(input_dim).repeat(groups), :, :] = 1.0 / kernel_size ** 2
        return k

    def _pad_1x1_to_3x3_tensor(self, kernel1x1):
        if kernel1x1 is None:
            return 0
        return torch.nn.functional.pad(kernel1x1, [1, 1, 1, 1])

    def _fuse_bn_tensor(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, ConvModule):
            # Only valid once fuse_model has folded the ConvModule's BN into conv (see docstring).
            return branch.conv.weight, branch.conv.bias
        if isinstance(branch, nn.BatchNorm2d):
            if not hasattr(self, "id_tensor"):
                self.id_tensor = _identity_kernel(self.in_channels, self.groups, branch.weight.device)
            kernel = self.id_tensor
            std = (branch.running_var + branch.eps).sqrt()
            t = (branch.weight / std).reshape(-1, 1, 1, 1)
            return kernel * t, branch.bias - branch.running_mean * branch.weight / std
        raise TypeError(type(branch))

    def switch_to_deploy(self):
        if hasattr(self, "rbr_reparam"):
            return
        kernel, bias = self.get_equivalent_kernel_bias()
        dense = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(dense.in_channels, dense.out_channels, kernel_size=dense.kernel_size,
                                     stride=dense.stride, padding=dense.padding, dilation=dense.dilation,
                                     groups=dense.groups, bias=True)
        self.rbr_reparam.weight.data = kernel.detach()
        self.rbr_reparam.bias.data = bias.detach()
        for para in self.parameters():
            para.detach_()
        self.__delattr__("rbr_dense")
        self.__delattr__("rbr_1x1")
        if hasattr(self, "rbr_identity"):
            self.__delattr__("rbr_identity")
        if hasattr(self, "rbr_avg"):
            self.__delattr__("rbr_avg")
        if hasattr(self, "id_tensor"):
            self.__delattr__("id_tensor")
        # QARepVGG: "keep post bn for QAT" -- self.bn stays.
        self.deploy = True


class QARepVGGBlock(RepVGGBlock):
    """RepVGGBlock after https://arxiv.org/abs/2212.01593: BN-free 1x1 and identity, one post BN."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, dilation=1, groups=1,
                 padding_mode="zeros", deploy=False, use_se=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode,
                         deploy, use_se)
        if not deploy:
            self.bn = nn.BatchNorm2d(out_channels)
            self.rbr_1x1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, groups=groups,
                                     bias=False)
            self.rbr_identity = nn.Identity() if out_channels == in_channels and stride == 1 else None
        self._id_tensor = None

    def forward(self, inputs):
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.bn(self.se(self.rbr_reparam(inputs))))
        if self.rbr_identity is None:
            id_out = 0
        else:
            id_out = self.rbr_identity(inputs)
        return self.nonlinearity(self.bn(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out)))

    def get_equivalent_kernel_bias(self):
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel = kernel3x3 + self._pad_1x1_to_3x3_tensor(self.rbr_1x1.weight)
        bias = bias3x3
        if self.rbr_identity is not None:
            id_tensor = _identity_kernel(self.in_channels, self.groups, self.rbr_1x1.weight.device)
            kernel = kernel + id_tensor
        return kernel, bias


class QARepVGGBlockV2(RepVGGBlock):
    """QARepVGGBlock plus an average-pool branch."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, dilation=1, groups=1,
                 padding_mode="zeros", deploy=False, use_se=False):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, padding_mode,
                         deploy, use_se)
        if not deploy:
            self.bn = nn.BatchNorm2d(out_channels)
            self.rbr_1x1 = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, groups=groups,
                                     bias=False)
            same = out_channels == in_channels and stride == 1
            self.rbr_identity = nn.Identity() if same else None
            self.rbr_avg = nn.AvgPool2d(kernel_size=kernel_size, stride=stride, padding=padding) if same else None
        self._id_tensor = None

    def forward(self, inputs):
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.bn(self.se(self.rbr_reparam(inputs))))
        id_out = 0 if self.rbr_identity is None else self.rbr_identity(inputs)
        avg_out = 0 if self.rbr_avg is None else self.rbr_avg(inputs)
        return self.nonlinearity(self.bn(self.se(self.rbr_dense(inputs) + self.rbr_1x1(inputs) + id_out + avg_out)))

    def get_equivalent_kernel_bias(self):
        kernel3x3, bias3x3 = self._fuse_bn_tensor(self.rbr_dense)
        kernel = kernel3x3 + self._pad_1x1_to_3x3_tensor(self.rbr_1x1.weight)
        if self.rbr_avg is not None:
            kernelavg = self._avg_to_3x3_tensor(self.rbr_avg, dtype=kernel.dtype)
            kernel = kernel + kernelavg.to(self.rbr_1x1.weight.device)
        bias = bias3x3
        if self.rbr_identity is not None:
            id_tensor = _identity_kernel(self.in_channels, self.groups, self.rbr_1x1.weight.device)
            kernel = kernel + id_tensor
        return kernel, bias


class RepBlock(nn.Module):
    """A stage of rep-style basic blocks."""

    def __init__(self, in_channels, out_channels, n=1, block=RepVGGBlock, basic_block=RepVGGBlock):
        super().__init__()
        self.conv1 = block(in_channels, out_channels)
        self.block = nn.Sequential(*(block(out_channels, out_channels) for _ in range(n - 1))) if n > 1 else None
        if block == BottleRep:
            self.conv1 = BottleRep(in_channels, out_channels, basic_block=basic_block, weight=True)
            n = n // 2
            self.block = (nn.Sequential(*(BottleRep(out_channels, out_channels, basic_block=basic_block, weight=True)
                                          for _ in range(n - 1))) if n > 1 else None)

    def forward(self, x):
        x = self.conv1(x)
        if self.block is not None:
            x = self.block(x)
        return x


class BottleRep(nn.Module):
    def __init__(self, in_channels, out_channels, basic_block=RepVGGBlock, weight=False):
        super().__init__()
        self.conv1 = basic_block(in_channels, out_channels)
        self.conv2 = basic_block(out_channels, out_channels)
        self.shortcut = in_channels == out_channels
        if weight:
            self.alpha = Parameter(torch.ones(1))
        else:
            self.alpha = 1.0

    def forward(self, x):
        outputs = self.conv1(x)
        outputs = self.conv2(outputs)
        return outputs + self.alpha * x if self.shortcut else outputs


class BepC3(nn.Module):
    """CSPStackRep block."""

    def __init__(self, in_channels, out_channels, n=1, e=0.5, block=RepVGGBlock):
        super().__init__()
        c_ = int(out_channels * e)
        self.cv1 = ConvBNReLU(in_channels, c_, 1, 1)
        self.cv2 = ConvBNReLU(in_channels, c_, 1, 1)
        self.cv3 = ConvBNReLU(2 * c_, out_channels, 1, 1)
        if block == ConvBNSiLU:
            self.cv1 = ConvBNSiLU(in_channels, c_, 1, 1)
            self.cv2 = ConvBNSiLU(in_channels, c_, 1, 1)
            self.cv3 = ConvBNSiLU(2 * c_, out_channels, 1, 1)
        self.m = RepBlock(in_channels=c_, out_channels=c_, n=n, block=BottleRep, basic_block=block)

    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), dim=1))


# --- yolov6/utils/torch_utils.py ----------------------------------------------------------------

def initialize_weights(model):
    for m in model.modules():
        t = type(m)
        if t is nn.Conv2d:
            pass
        elif t is nn.BatchNorm2d:
            m.eps = 1e-3
            m.momentum = 0.03
        elif t in [nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU]:
            m.inplace = True
    return model


def fuse_conv_and_bn(conv, bn):
    fusedconv = nn.Conv2d(conv.in_channels, conv.out_channels, kernel_size=conv.kernel_size, stride=conv.stride,
                          padding=conv.padding, groups=conv.groups, bias=True,
                          dtype=conv.weight.dtype).requires_grad_(False).to(conv.weight.device)
    w_conv = conv.weight.clone().view(conv.out_channels, -1)
    w_bn = torch.diag(bn.weight.div(torch.sqrt(bn.eps + bn.running_var)))
    fusedconv.weight.copy_(torch.mm(w_bn, w_conv).view(fusedconv.weight.shape))
    b_conv = (torch.zeros(conv.weight.size(0), device=conv.weight.device, dtype=conv.weight.dtype)
              if conv.bias is None else conv.bias)
    b_bn = bn.bias - bn.weight.mul(bn.running_mean).div(torch.sqrt(bn.running_var + bn.eps))
    fusedconv.bias.copy_(torch.mm(w_bn, b_conv.reshape(-1, 1)).reshape(-1) + b_bn)
    return fusedconv


def fuse_model(model):
    for m in model.modules():
        if type(m) is ConvModule and hasattr(m, "bn"):
            m.conv = fuse_conv_and_bn(m.conv, m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return model


def deploy(model: nn.Module) -> nn.Module:
    """deepcopy, ``fuse_model``, then ``switch_to_deploy()`` on every RepVGGBlock (export_onnx.py)."""
    deployed = copy.deepcopy(model)
    with torch.no_grad():
        fuse_model(deployed)
    for layer in deployed.modules():
        if isinstance(layer, RepVGGBlock):
            layer.switch_to_deploy()
    return deployed.eval()


def randomize_alpha(model: nn.Module, gen: torch.Generator) -> None:
    """BottleRep's alpha starts at 1; give it a trained-looking value."""
    for module in model.modules():
        if isinstance(module, BottleRep) and isinstance(module.alpha, nn.Parameter):
            module.alpha.copy_(torch.rand(1, generator=gen) + 0.5)
