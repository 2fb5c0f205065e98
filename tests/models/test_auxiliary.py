"""Auxiliary heads and branches: present in training, absent from eval outputs and graphs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compactify.errors import BadInputError
from compactify.models import attach_auxiliary, auxiliary_losses, create_model, detach_auxiliary, expand

SHAPE = (1, 3, 16, 16)


def small():
    torch.manual_seed(0)
    return create_model("smallnet7", width=0.5, hidden=16, input_size=16)


def test_auto_taps_are_stage_ends():
    model = attach_auxiliary(small(), heads="auto", branch="auto", width=8, input_shape=SHAPE)
    cfg = model.auxiliary.config
    assert cfg["heads"] == ["conv2_bn"]
    assert cfg["branch"] == ["conv1_bn", "conv2_bn", "conv3_bn"]
    assert cfg["num_classes"] == 10 and cfg["input_shape"] == list(SHAPE)
    # expanded chains are opened into their layers, but the stage ends stay the BatchNorms
    ck = attach_auxiliary(expand(small(), "ck"), branch="auto", input_shape=SHAPE)
    assert ck.auxiliary.config["branch"] == ["conv1_bn", "conv2_bn", "conv3_bn"]
    res = attach_auxiliary(create_model("resnet18", width=0.125, num_classes=10, input_size=32), heads="auto",
                           branch="auto", input_shape=(1, 3, 32, 32))
    assert res.auxiliary.config["heads"] == ["layer2.1"]
    assert res.auxiliary.config["branch"] == ["layer2.1", "layer3.1", "layer4.1"]


def test_eval_output_is_the_original_and_graph_has_no_aux():
    plain = small().eval()
    model = attach_auxiliary(copy.deepcopy(plain), heads="auto", branch="auto", width=8, input_shape=SHAPE).eval()
    x = torch.randn(3, *SHAPE[1:])
    torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
    assert model.auxiliary._features == {}
    ops = lambda m: [n.target for n in torch.export.export(m, (x,)).graph.nodes if n.op == "call_function"]  # noqa: E731
    assert ops(model) == ops(plain)


def test_training_losses_reach_aux_and_trunk():
    model = attach_auxiliary(small(), heads=["conv2_bn", "fc1"], branch="auto", width=8, input_shape=SHAPE).train()
    x, y = torch.randn(4, *SHAPE[1:]), torch.randint(0, 10, (4,))
    model(x)
    terms = auxiliary_losses(model, y)
    assert set(terms) == {"aux_head:conv2_bn", "aux_head:fc1", "aux_branch"}
    sum(terms.values()).backward()
    assert model.auxiliary.heads[0][0].weight.grad.abs().sum() > 0
    assert model.auxiliary.branch.adapters[0][0].weight.grad.abs().sum() > 0
    assert model.conv1.weight.grad.abs().sum() > 0  # extra gradient reaches the trunk
    assert model.fc2.weight.grad is None  # the heads do not pass through the classifier
    assert model.auxiliary._features == {}
    with pytest.raises(RuntimeError, match="not captured"):
        auxiliary_losses(model, y)
    assert auxiliary_losses(small(), y) == {}


def test_deepcopy_captures_into_the_copy_and_detach():
    model = attach_auxiliary(small(), heads="auto", input_shape=SHAPE).train()
    clone = copy.deepcopy(model)
    clone(torch.randn(2, *SHAPE[1:]))
    assert list(clone.auxiliary._features) == ["conv2_bn"] and model.auxiliary._features == {}
    before = {k for k in small().state_dict()}
    detach_auxiliary(clone)
    assert set(clone.state_dict()) == before and not clone.conv2_bn._forward_hooks


def test_bad_arguments():
    with pytest.raises(BadInputError, match="input_shape"):
        attach_auxiliary(small())
    with pytest.raises(BadInputError, match="not modules called.*stage ends"):
        attach_auxiliary(small(), heads=["conv9"], input_shape=SHAPE)
    with pytest.raises(BadInputError, match="at least one"):
        attach_auxiliary(small(), heads=None, branch=None, input_shape=SHAPE)
    with pytest.raises(BadInputError, match="branch taps must be"):
        attach_auxiliary(small(), heads=None, branch=["fc1"], input_shape=SHAPE)
    with pytest.raises(BadInputError, match="cannot run the model"):
        attach_auxiliary(small(), input_shape=(1, 3, 5, 5))
    model = attach_auxiliary(small(), input_shape=SHAPE)
    with pytest.raises(BadInputError, match="already has"):
        attach_auxiliary(model, input_shape=SHAPE)
    assert isinstance(model.auxiliary.heads[0][0], nn.Conv2d)
