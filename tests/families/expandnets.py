"""ExpandNets (GUOShuxuan/expandnets), reproduced from exp_cifar/models/cifar_tiny_7.py,
exp_cifar/utils/compute_new_weights.py, exp_imagenet/models/shufflenet.py and
exp_imagenet/utils/compute_new_weights.py.

Expanded layers as public, all linear chains inside an ``nn.Sequential``:

* CL: ``Conv2d(c, c*a or c, 1, padding=p)`` -> ``Conv2d(.., k)`` -> ``Conv2d(.., 1)``, every conv with
  a bias. The padding sits on the *first* 1x1 conv, so the zero border becomes that conv's bias and
  the chain stays exactly one kxk conv with padding p.
* CK: three 3x3 convs, the first with the whole padding (7x7 = 3x3 o 3x3 o 3x3).
* FC: three Linears in place of one.
* The single expanded layers (``expanded_layer('cl' | 'ck' | 'fc')``) are those Sequentials on
  their own; ``deploy_expanded_layer`` contracts one into the Conv2d / Linear it stands for.
* ShuffleNetV2 0.5x CL (er=4): every depthwise 3x3 becomes grouped
  ``1x1 (padding 1) -> 3x3 (padding 0, stride) -> 1x1``, and conv1 (3x3 stride 2) becomes
  ``1x1 (padding 1) -> 3x3 -> 1x1 stride 2``; channel shuffle is ``view / transpose / contiguous /
  view`` and stride-1 units split with ``x.chunk(2, dim=1)`` and rejoin with ``torch.cat``.

Deploy: the family's own contraction into the compact network (``from_expandnet_cl_to_snet``,
``from_expandnet_ck_to_snet``, ``from_expand_cl_to_shufflenet`` with compute_cl / compute_cl_2 /
compute_ck / compute_fc / compute_cl_dw_group / compute_cl_dw_group_2), copying every other
tensor by state-dict name. BatchNorms stay (the compact nets have them).

Public quirks: the contraction helpers allocate results with ``torch.Tensor(...)`` (default dtype,
float32), so a float64 ExpandNet contracts to float32 weights; here results take the weights'
dtype. ``compute_cl_dw_group`` ignores the first conv's bias (``new_bias = b_s_2``), harmless
because those depthwise convs have none. ``from_expand_cl_to_shufflenet`` hard-codes the 0.5x
stage depths (4, 8, 4) and the ``module.`` prefix of a DataParallel wrapper; here the stages are
walked as built.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

ER = 4  # expansion rate


# --- exp_cifar/models/cifar_tiny_7.py -------------------------------------------------------------

class _TinyForward(nn.Module):
    def forward(self, x):
        out = F.relu(self.conv1_bn(self.conv1(x)))
        out = F.max_pool2d(out, 2)
        out = F.relu(self.conv2_bn(self.conv2(out)))
        out = F.max_pool2d(out, 2)
        out = F.relu(self.conv3_bn(self.conv3(out)))
        out = F.max_pool2d(out, 2)
        out = out.view(out.size(0), -1)
        out = F.relu(self.fc1(out))
        out = self.fc2(out)
        return out


def _cl(cin, cout, a=ER, k=7):
    return nn.Sequential(nn.Conv2d(cin, cin if cin == 3 else cin * a, kernel_size=1, padding=k // 2),
                         nn.Conv2d(cin if cin == 3 else cin * a, cout * a, kernel_size=k),
                         nn.Conv2d(cout * a, cout, kernel_size=1))


def _ck(cin, cout, a=ER, k=7):
    assert k == 7
    return nn.Sequential(nn.Conv2d(cin, cin if cin == 3 else cin * a, kernel_size=3, padding=k // 2),
                         nn.Conv2d(cin if cin == 3 else cin * a, cout * a, kernel_size=3),
                         nn.Conv2d(cout * a, cout, kernel_size=3))


def _fc(fin, fout, a=ER):
    return nn.Sequential(nn.Linear(fin, fin * a), nn.Linear(fin * a, fout * a), nn.Linear(fout * a, fout))


class Cifar_Tiny(_TinyForward):
    """SmallNet with 7x7 kernels (the compact network)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, kernel_size=7, padding=3)
        self.conv1_bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, kernel_size=7, padding=3)
        self.conv2_bn = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=7, padding=3)
        self.conv3_bn = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(512, 64)
        self.fc2 = nn.Linear(64, num_classes)


class Cifar_Tiny_ExpandNet(_TinyForward):
    """``conv='cl'|'ck'|None`` and ``fc`` select Cifar_Tiny_ExpandNet_{cl, ck, fc, cl_fc, ck_fc}."""

    def __init__(self, num_classes=10, conv="cl", fc=False):
        super().__init__()
        expand = {"cl": _cl, "ck": _ck}.get(conv)
        for i, (cin, cout) in enumerate([(3, 8), (8, 16), (16, 32)], start=1):
            layer = expand(cin, cout) if expand else nn.Conv2d(cin, cout, kernel_size=7, padding=3)
            setattr(self, f"conv{i}", layer)
            setattr(self, f"conv{i}_bn", nn.BatchNorm2d(cout))
        self.fc1 = _fc(512, 64) if fc else nn.Linear(512, 64)
        self.fc2 = nn.Linear(64, num_classes)
        self.expanded = ([f"conv{i}" for i in (1, 2, 3)] if expand else []) + (["fc1"] if fc else [])


# --- exp_cifar/utils/compute_new_weights.py -------------------------------------------------------

def _wb(layer):
    if isinstance(layer, (nn.Conv2d, nn.Linear)):
        return layer.weight, layer.bias
    return layer["weight"], layer["bias"]


def compute_cl(s_1, s_2):
    """1x1 conv s_1 followed by kxk conv s_2."""
    w_s_1, b_s_1 = _wb(s_1)
    w_s_2, b_s_2 = _wb(s_2)
    w_s_1_ = w_s_1.view(w_s_1.size(0), w_s_1.size(1) * w_s_1.size(2) * w_s_1.size(3))
    w_s_2_tmp = w_s_2.view(w_s_2.size(0), w_s_2.size(1), w_s_2.size(2) * w_s_2.size(3))
    new_weight = torch.empty(w_s_2.size(0), w_s_1.size(1), w_s_2.size(2) * w_s_2.size(3), dtype=w_s_2.dtype)
    for i in range(w_s_2.size(0)):
        tmp = w_s_2_tmp[i, :, :].view(w_s_2.size(1), w_s_2.size(2) * w_s_2.size(3))
        new_weight[i, :, :] = torch.matmul(w_s_1_.t(), tmp)
    new_weight = new_weight.view(w_s_2.size(0), w_s_1.size(1), w_s_2.size(2), w_s_2.size(3))
    if b_s_1 is not None and b_s_2 is not None:
        b_sum = torch.sum(w_s_2_tmp, dim=2)
        new_bias = torch.matmul(b_sum, b_s_1) + b_s_2
    elif b_s_1 is None:
        new_bias = b_s_2
    else:
        new_bias = None
    return {"weight": new_weight, "bias": new_bias}


def compute_cl_2(s_1, s_2):
    """kxk conv s_1 followed by 1x1 conv s_2."""
    w_s_1, b_s_1 = _wb(s_1)
    w_s_2, b_s_2 = _wb(s_2)
    w_s_1_ = w_s_1.view(w_s_1.size(0), w_s_1.size(1), w_s_1.size(2) * w_s_1.size(3))
    w_s_2_ = w_s_2.view(w_s_2.size(0), w_s_2.size(1) * w_s_2.size(2) * w_s_2.size(3))
    new_weight_ = torch.empty(w_s_2.size(0), w_s_1.size(1), w_s_1.size(2) * w_s_1.size(3), dtype=w_s_1.dtype)
    for i in range(w_s_1.size(1)):
        tmp = w_s_1_[:, i, :].view(w_s_1.size(0), w_s_1.size(2) * w_s_1.size(3))
        new_weight_[:, i, :] = torch.matmul(w_s_2_, tmp)
    new_weight = new_weight_.view(w_s_2.size(0), w_s_1.size(1), w_s_1.size(2), w_s_1.size(3))
    if b_s_1 is not None and b_s_2 is not None:
        new_bias = torch.matmul(w_s_2_, b_s_1) + b_s_2
    elif b_s_1 is None:
        new_bias = b_s_2
    else:
        new_bias = None
    return {"weight": new_weight, "bias": new_bias}


def compute_ck(s_1, s_2):
    """Two stacked kxk convs: the composed kernel is ``F.conv_transpose2d(w_s_2, w_s_1)``."""
    w_s_1, b_s_1 = _wb(s_1)
    w_s_2, b_s_2 = _wb(s_2)
    w_s_2_tmp = w_s_2.view(w_s_2.size(0), w_s_2.size(1), w_s_2.size(2) * w_s_2.size(3))
    if b_s_1 is not None and b_s_2 is not None:
        b_sum = torch.sum(w_s_2_tmp, dim=2)
        new_bias = torch.matmul(b_sum, b_s_1) + b_s_2
    elif b_s_1 is None:
        new_bias = b_s_2
    else:
        new_bias = None
    new_weight = F.conv_transpose2d(w_s_2, w_s_1)
    return {"weight": new_weight, "bias": new_bias}


def compute_fc(s_1, s_2):
    w_s_1, b_s_1 = _wb(s_1)
    w_s_2, b_s_2 = _wb(s_2)
    if b_s_1 is not None and b_s_2 is not None:
        new_bias = torch.matmul(w_s_2, b_s_1) + b_s_2
    elif b_s_1 is None:
        new_bias = b_s_2
    else:
        new_bias = None
    return {"weight": torch.matmul(w_s_2, w_s_1), "bias": new_bias}


def _assign(conv, tmp):
    if conv.bias is not None:
        conv.weight.data, conv.bias.data = tmp["weight"].detach(), tmp["bias"].detach()
    else:
        conv.weight.data = tmp["weight"].detach()


def _load_unexpanded(Enet, Snet, exp_layer_names):
    e_dict = Enet.state_dict()
    s_dict = Snet.state_dict()
    e_dict = {k: v for k, v in e_dict.items() if (k in s_dict and k not in exp_layer_names)}
    s_dict.update(e_dict)
    Snet.load_state_dict(s_dict)


def from_expandnet_cl_to_snet(Enet, Snet, exp_layer_names):
    _load_unexpanded(Enet, Snet, exp_layer_names)
    for m in exp_layer_names:
        layers = getattr(Enet, m)
        if m.find("conv") != -1:
            tmp = compute_cl_2(compute_cl(layers[0], layers[1]), layers[2])
        else:
            tmp = compute_fc(compute_fc(layers[0], layers[1]), layers[2])
        _assign(getattr(Snet, m), tmp)
    return Snet


def from_expandnet_ck_to_snet(Enet, Snet, exp_layer_names):
    _load_unexpanded(Enet, Snet, exp_layer_names)
    for m in exp_layer_names:
        layers = getattr(Enet, m)
        tmp = layers[0]
        for i in range(len(layers) - 1):
            tmp = compute_ck(tmp, layers[i + 1]) if m.find("conv") != -1 else compute_fc(tmp, layers[i + 1])
        _assign(getattr(Snet, m), tmp)
    return Snet


def deploy_cifar_tiny(model: Cifar_Tiny_ExpandNet) -> nn.Module:
    """test_contract.py: CL and CL+FC go through from_expandnet_cl_to_snet, FC / CK / CK+FC through
    from_expandnet_ck_to_snet, into a fresh Cifar_Tiny (the compact 7x7 SmallNet)."""
    enet = copy.deepcopy(model)
    p = next(enet.parameters())
    snet = Cifar_Tiny(num_classes=enet.fc2.out_features).to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        if isinstance(enet.conv1, nn.Sequential) and enet.conv1[0].kernel_size == (1, 1):
            snet = from_expandnet_cl_to_snet(enet, snet, enet.expanded)
        else:
            snet = from_expandnet_ck_to_snet(enet, snet, enet.expanded)
    return snet.eval()


# --- exp_imagenet/models/shufflenet.py ------------------------------------------------------------

def channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.data.size()
    channels_per_group = num_channels // groups
    x = x.view(batchsize, groups, channels_per_group, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    x = x.view(batchsize, -1, height, width)
    return x


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        if not (1 <= stride <= 3):
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        assert (self.stride != 1) or (inp == branch_features << 1)
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp, kernel_size=3, stride=self.stride, padding=1),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if (self.stride > 1) else branch_features, branch_features, kernel_size=1, stride=1,
                      padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            self.depthwise_conv(branch_features, branch_features, kernel_size=3, stride=self.stride, padding=1),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    @staticmethod
    def depthwise_conv(i, o, kernel_size, stride=1, padding=0, bias=False):
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=i)

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        out = channel_shuffle(out, 2)
        return out


class InvertedResidual_Expand(nn.Module):
    def __init__(self, inp, oup, stride):
        super().__init__()
        if not (1 <= stride <= 3):
            raise ValueError("illegal stride value")
        self.stride = stride
        branch_features = oup // 2
        assert (self.stride != 1) or (inp == branch_features << 1)
        er = ER
        if self.stride > 1:
            self.branch1 = nn.Sequential(
                self.depthwise_conv(inp, inp * er, kernel_size=1, stride=1, padding=1, group=inp),
                self.depthwise_conv(inp * er, inp * er, kernel_size=3, stride=self.stride, padding=0, group=inp),
                self.depthwise_conv(inp * er, inp, kernel_size=1, stride=1, padding=0, group=inp),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
                nn.BatchNorm2d(branch_features),
                nn.ReLU(inplace=True),
            )
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if (self.stride > 1) else branch_features, branch_features, kernel_size=1, stride=1,
                      padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
            self.depthwise_conv(branch_features, branch_features * er, kernel_size=1, stride=1, padding=1,
                                group=branch_features),
            self.depthwise_conv(branch_features * er, branch_features * er, kernel_size=3, stride=self.stride,
                                padding=0, group=branch_features),
            self.depthwise_conv(branch_features * er, branch_features, kernel_size=1, stride=1, padding=0,
                                group=branch_features),
            nn.BatchNorm2d(branch_features),
            nn.Conv2d(branch_features, branch_features, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(branch_features),
            nn.ReLU(inplace=True),
        )

    @staticmethod
    def depthwise_conv(i, o, kernel_size, stride=1, padding=0, bias=False, group=1):
        return nn.Conv2d(i, o, kernel_size, stride, padding, bias=bias, groups=group)

    forward = InvertedResidual.forward


class _ShuffleNetV2Base(nn.Module):
    unit = InvertedResidual

    def __init__(self, stages_repeats, stages_out_channels, num_classes=1000):
        super().__init__()
        if len(stages_repeats) != 3:
            raise ValueError("expected stages_repeats as list of 3 positive ints")
        if len(stages_out_channels) != 5:
            raise ValueError("expected stages_out_channels as list of 5 positive ints")
        self._stage_out_channels = stages_out_channels
        input_channels = 3
        output_channels = self._stage_out_channels[0]
        self.conv1 = self._conv1(input_channels, output_channels)
        input_channels = output_channels
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stage_names = ["stage{}".format(i) for i in [2, 3, 4]]
        for name, repeats, output_channels in zip(stage_names, stages_repeats, self._stage_out_channels[1:]):
            seq = [self.unit(input_channels, output_channels, 2)]
            for _ in range(repeats - 1):
                seq.append(self.unit(output_channels, output_channels, 1))
            setattr(self, name, nn.Sequential(*seq))
            input_channels = output_channels
        output_channels = self._stage_out_channels[-1]
        self.conv5 = nn.Sequential(
            nn.Conv2d(input_channels, output_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(output_channels),
            nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(output_channels, num_classes)

    def forward(self, x):
        x = self.conv1(x)
        x = self.maxpool(x)
        x = self.stage2(x)
        x = self.stage3(x)
        x = self.stage4(x)
        x = self.conv5(x)
        x = x.mean([2, 3])  # globalpool
        x = self.fc(x)
        return x


class ShuffleNetV2(_ShuffleNetV2Base):
    unit = InvertedResidual

    @staticmethod
    def _conv1(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ShuffleNetV2_Expand(_ShuffleNetV2Base):
    unit = InvertedResidual_Expand

    @staticmethod
    def _conv1(cin, cout):
        return nn.Sequential(
            nn.Conv2d(cin, cin * ER, 1, 1, 1, bias=False),
            nn.Conv2d(cin * ER, cout * ER, 3, 1, 0, bias=False),
            nn.Conv2d(cout * ER, cout, 1, 2, 0, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


def shufflenet_v2_x0_5(num_classes=1000):
    return ShuffleNetV2([4, 8, 4], [24, 48, 96, 192, 1024], num_classes=num_classes)


def shufflenet_v2_x0_5_expand(num_classes=1000):
    return ShuffleNetV2_Expand([4, 8, 4], [24, 48, 96, 192, 1024], num_classes=num_classes)


# --- exp_imagenet/utils/compute_new_weights.py ----------------------------------------------------

def compute_cl_dw_group(s_1, s_2):
    """Grouped 1x1 (1 -> er per group) then grouped 3x3 (er -> er per group)."""
    w_s_1, _ = _wb(s_1)
    w_s_2, b_s_2 = _wb(s_2)
    w_s_1_ = w_s_1.view(w_s_1.size(0), w_s_1.size(1), w_s_1.size(2) * w_s_1.size(3))
    w_s_2_ = w_s_2.view(w_s_2.size(0), w_s_2.size(1), w_s_2.size(2) * w_s_2.size(3))
    new_weight_ = torch.empty(w_s_2.size(0), w_s_1.size(1), w_s_2.size(2) * w_s_2.size(3), dtype=w_s_2.dtype)
    num_groups = w_s_2.size(1)  # (the group width, despite the name)
    groups = w_s_1.size(0) // num_groups
    for i in range(groups):
        w_2_tmp = w_s_2_[num_groups * i:num_groups * (i + 1), :, :].transpose(1, 0).contiguous()
        w_1_tmp = w_s_1_[num_groups * i:num_groups * (i + 1), :, :].view(num_groups, w_s_1.size(2) * w_s_1.size(3))
        new_weight_tmp = torch.matmul(w_1_tmp.t(), w_2_tmp.view(w_2_tmp.size(0), -1)).view(
            1, num_groups, w_s_2.size(2) * w_s_2.size(3))
        new_weight_[num_groups * i:num_groups * (i + 1), :, :] = new_weight_tmp.transpose(1, 0)
    new_weight = new_weight_.view(w_s_2.size(0), w_s_1.size(1), w_s_2.size(2), w_s_2.size(3))
    return {"weight": new_weight, "bias": b_s_2}  # public: the first conv's bias is dropped


def compute_cl_dw_group_2(s_1, s_2):
    """Grouped 3x3 (per group 1 -> er) then grouped 1x1 (er -> 1 per group)."""
    w_s_1, _ = _wb(s_1)
    w_s_2, b_s_2 = _wb(s_2)
    w_s_1_ = w_s_1.view(w_s_1.size(0), w_s_1.size(1), w_s_1.size(2) * w_s_1.size(3))
    w_s_2_ = w_s_2.view(w_s_2.size(0), w_s_2.size(1), w_s_2.size(2) * w_s_2.size(3))
    num_groups = w_s_2.size(1)
    w_s_1_ = w_s_1_.view(w_s_2.size(0), num_groups, w_s_1.size(2) * w_s_1.size(3))
    new_weight = (w_s_1_ * w_s_2_).sum(dim=1)
    new_weight = new_weight.view(w_s_2.size(0), w_s_1.size(1), w_s_1.size(2), w_s_1.size(3))
    return {"weight": new_weight, "bias": b_s_2}


def from_expand_cl_to_shufflenet(Snet, Enet):
    """Copy every unexpanded tensor by renamed state-dict key, then contract conv1 (compute_cl +
    compute_cl_2) and every branch's expanded depthwise (compute_cl_dw_group + _2)."""
    e_dict = Enet.state_dict()
    expanded = set()
    for i in range(3):
        expanded.add(f"conv1.{i}.weight")
    for stage in ("stage2", "stage3", "stage4"):
        for layer, unit in enumerate(getattr(Enet, stage)):
            if hasattr(unit, "branch1"):
                expanded.update(f"{stage}.{layer}.branch1.{i}.weight" for i in range(3))
            expanded.update(f"{stage}.{layer}.branch2.{i}.weight" for i in range(3, 6))
    new_dict = {}
    for k, v in e_dict.items():
        if k in expanded:
            continue
        parts = k.split(".")
        if parts[0] == "conv1":
            parts[1] = str(int(parts[1]) - 2)
        elif len(parts) > 3 and parts[2] == "branch1":
            parts[3] = str(int(parts[3]) - 2)
        elif len(parts) > 3 and parts[2] == "branch2" and int(parts[3]) >= 3:
            parts[3] = str(int(parts[3]) - 2)
        new_dict[".".join(parts)] = v
    s_dict = Snet.state_dict()
    s_dict.update(new_dict)
    Snet.load_state_dict(s_dict)

    tmp = compute_cl_2(compute_cl(Enet.conv1[0], Enet.conv1[1]), Enet.conv1[2])
    _assign(Snet.conv1[0], tmp)
    for stage in ("stage2", "stage3", "stage4"):
        for e_unit, s_unit in zip(getattr(Enet, stage), getattr(Snet, stage)):
            if hasattr(e_unit, "branch1"):
                tmp = compute_cl_dw_group_2(compute_cl_dw_group(e_unit.branch1[0], e_unit.branch1[1]),
                                            e_unit.branch1[2])
                _assign(s_unit.branch1[0], tmp)
            tmp = compute_cl_dw_group_2(compute_cl_dw_group(e_unit.branch2[3], e_unit.branch2[4]), e_unit.branch2[5])
            _assign(s_unit.branch2[3], tmp)
    return Snet


def deploy_shufflenet(model: ShuffleNetV2_Expand) -> nn.Module:
    enet = copy.deepcopy(model)
    p = next(enet.parameters())
    repeats = [len(getattr(enet, s)) for s in ("stage2", "stage3", "stage4")]
    snet = ShuffleNetV2(repeats, list(enet._stage_out_channels), num_classes=enet.fc.out_features)
    snet = snet.to(dtype=p.dtype, device=p.device)
    with torch.no_grad():
        snet = from_expand_cl_to_shufflenet(snet, enet)
    return snet.eval()


# --- single expanded layers (the Sequentials the Cifar_Tiny ExpandNets are made of) ---------------

def expanded_layer(kind, cin=8, cout=16, a=ER):
    """One expanded layer as it appears inside Cifar_Tiny_ExpandNet_*: ``'cl'``, ``'ck'`` (both for
    a 7x7 conv with padding 3) or ``'fc'``."""
    return {"cl": _cl, "ck": _ck, "fc": _fc}[kind](cin, cout, a)


def deploy_expanded_layer(layers: nn.Sequential) -> nn.Module:
    """Contract one expanded Sequential into the layer it stands for, with the same helpers the
    network contractions use (compute_cl + compute_cl_2, compute_ck chain, compute_fc chain)."""
    layers = copy.deepcopy(layers)
    first, last = layers[0], layers[-1]
    with torch.no_grad():
        if isinstance(first, nn.Linear):
            tmp = compute_fc(compute_fc(layers[0], layers[1]), layers[2])
            out = nn.Linear(first.in_features, last.out_features, dtype=first.weight.dtype)
        else:
            if first.kernel_size == (1, 1):
                tmp = compute_cl_2(compute_cl(layers[0], layers[1]), layers[2])
            else:
                tmp = layers[0]
                for layer in layers[1:]:
                    tmp = compute_ck(tmp, layer)
            k = tmp["weight"].shape[-1]
            out = nn.Conv2d(first.in_channels, last.out_channels, k, padding=first.padding,
                            dtype=first.weight.dtype)
        _assign(out, tmp)
    return out.eval()
