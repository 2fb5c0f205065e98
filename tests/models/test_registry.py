"""Registry: names, kwargs, parameter counts, default shapes, build_model round trips, export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compactify.errors import BadInputError
from compactify.models import (
    attach_auxiliary,
    build_model,
    create_model,
    default_input_shape,
    list_models,
    model_entry,
    register_model,
)

from .tiny import TINY_KWARGS

NAMES = ["mobilenetv1", "mobilenetv2", "repvgg", "resnet18", "shufflenetv2", "smallnet3", "smallnet7",
         "widevgg"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_list_models():
    assert list_models() == NAMES
    assert list_models("smallnet*") == ["smallnet3", "smallnet7"]
    assert list_models("nothing*") == []
    expanded = list_models("smallnet*", expanded=True)
    assert "smallnet7-ck+fc" in expanded and "smallnet3-cl" in expanded and "smallnet3-ck" not in expanded
    assert set(TINY_KWARGS) == set(NAMES)
    assert list_models("repvgg-cl") == ["repvgg-cl"]  # a pattern with a '-' names expanded variants
    assert "smallnet7-ck+fc" in list_models("*-ck+fc") and "smallnet3-ck+fc" not in list_models("*-ck+fc")


def test_smallnet7_has_the_papers_66186_parameters():
    model = create_model("smallnet7")
    assert n_params(model) == 66_186  # BatchNorm weight and bias included
    assert n_params(create_model("smallnet3")) == 15_050
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert bn == 2 * (8 + 16 + 32)


@pytest.mark.parametrize("name,count", [
    # torchvision's counts for the same layouts (and RepVGG-A0's published 9.11M training-time size)
    ("resnet18", 11_689_512), ("mobilenetv2", 3_504_872), ("shufflenetv2", 1_366_792),
    ("mobilenetv1", 4_231_976), ("repvgg", 9_108_968),
])
def test_imagenet_layouts_have_their_reference_sizes(name, count):
    with torch.device("meta"):
        assert n_params(create_model(name)) == count


def test_default_input_shapes():
    assert model_entry("smallnet7").default_input_shape == (1, 3, 32, 32)
    assert model_entry("smallnet7-ck+fc").name == "smallnet7"
    assert model_entry("resnet18").default_input_shape == (1, 3, 224, 224)
    assert model_entry("smallnet7").input_shape(input_size=16, in_chans=1) == (1, 1, 16, 16)
    assert model_entry("smallnet7").default_kwargs["num_classes"] == 10
    assert model_entry("smallnet7").train_kwargs == {"num_classes": 10, "input_size": 16}
    assert "66,186" in model_entry("smallnet7").description
    assert default_input_shape({"arch": "smallnet7", "arch_kwargs": {"input_size": 16}}) == (1, 3, 16, 16)
    assert default_input_shape({"arch": "x.y:z", "input_shape": [2, 3, 8, 8]}) == (2, 3, 8, 8)
    assert default_input_shape({"arch": "x.y:z"}) is None


@pytest.mark.parametrize("name", NAMES)
def test_tiny_models_run_and_export(name):
    kwargs = TINY_KWARGS[name]
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    shape = model_entry(name).input_shape(**kwargs)
    x = torch.randn(2, *shape[1:])
    out = model(x)
    assert out.shape == (2, kwargs.get("num_classes", 10))
    program = torch.export.export(model, (x,))
    if name in ("smallnet7", "repvgg"):  # running a captured graph costs ~1 s per deep net; two suffice
        torch.testing.assert_close(program.module()(x), out)


def test_smallnet_arguments():
    model = create_model("smallnet7", input_size=16, in_chans=1, num_classes=4, width=2.0, hidden=32)
    assert model.conv1.in_channels == 1 and model.conv3.out_channels == 64
    assert model.fc1.in_features == 64 * 2 * 2 and model.fc2.out_features == 4
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 4)
    assert create_model("smallnet7", input_size=(16, 24))(torch.randn(1, 3, 16, 24)).shape == (1, 10)
    with pytest.raises(BadInputError, match="too small"):
        create_model("smallnet3", input_size=16)
    with pytest.raises(BadInputError, match="num_classes"):
        create_model("smallnet7", num_classes=0)


def test_repvgg_blocks_have_the_three_branches():
    model = create_model("repvgg", **TINY_KWARGS["repvgg"], )
    first, later = model.stage1[0], create_model("repvgg", width=0.25, num_blocks=(1, 2, 1, 1)).stage2[1]
    assert first.rbr_identity is None  # stride 2: no identity branch
    assert isinstance(later.rbr_identity, nn.BatchNorm2d)
    assert later.rbr_dense.conv.kernel_size == (3, 3) and later.rbr_1x1.conv.kernel_size == (1, 1)
    assert later.rbr_1x1.conv.padding == (0, 0) and later.rbr_dense.conv.padding == (1, 1)


def test_unknown_names_and_kwargs():
    with pytest.raises(BadInputError, match="unknown model 'smalnet7'.*did you mean smallnet7"):
        create_model("smalnet7")
    with pytest.raises(BadInputError, match="unknown expansion mode"):
        create_model("smallnet7-zz")
    with pytest.raises(BadInputError, match="does not take 'depth'.*num_classes"):
        create_model("smallnet7", depth=3)
    with pytest.raises(BadInputError, match="rate"):
        create_model("smallnet7-cl", rate=0)
    with pytest.raises(BadInputError, match="not an expanded name"):
        create_model("smallnet7", rate=2)
    with pytest.raises(BadInputError, match="width must be one of"):
        create_model("shufflenetv2", width=0.3)


def test_expanded_names():
    model = create_model("SmallNet7-FC+CK", rate=2)
    assert model.compactify_expansion["mode"] == "ck+fc" and model.compactify_expansion["rate"] == 2
    assert model.fc1[0].out_features == 2 * 512


def test_register_model_decorator():
    @register_model(name="test_only_net", train_kwargs={"input_size": 8})
    def factory(num_classes: int = 3, in_chans: int = 2, input_size: int = 8):
        """A test net."""
        return nn.Sequential(nn.Flatten(), nn.Linear(in_chans * input_size * input_size, num_classes))

    try:
        entry = model_entry("test_only_net")
        assert entry.default_input_shape == (1, 2, 8, 8) and entry.description == "A test net."
        assert entry.train_kwargs == {"num_classes": 10, "input_size": 8}
        assert create_model("test_only_net-fc")[1][1].out_features == 4 * 3
        with pytest.raises(ValueError, match="already registered"):
            register_model(factory, name="test_only_net")
    finally:
        from compactify.models import registry

        registry._REGISTRY.pop("test_only_net", None)


def _roundtrip(meta: dict) -> None:
    torch.manual_seed(1)
    src = build_model(meta)
    for m in src.modules():  # non-trivial BN statistics, so a dropped buffer would show
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    state = src.state_dict()
    torch.manual_seed(2)
    dst = build_model(meta)
    dst.load_state_dict(state, strict=True)  # same keys and shapes
    x = torch.randn(2, *meta["input_shape"][1:])
    torch.testing.assert_close(dst.eval()(x), src.eval()(x), rtol=0, atol=0)


def test_build_model_round_trips():
    shape = [1, 3, 16, 16]
    kwargs = {"width": 0.5, "input_size": 16}
    _roundtrip({"arch": "smallnet7", "arch_kwargs": kwargs, "expand": None, "input_shape": shape})
    _roundtrip({"arch": "smallnet7", "arch_kwargs": kwargs, "expand": "ck+fc", "rate": 2, "layers": None,
                "aux": None, "input_shape": shape})
    _roundtrip({"arch": "smallnet7", "arch_kwargs": kwargs, "expand": "cl", "rate": 3, "layers": ["conv2"],
                "input_shape": shape})
    model = create_model("smallnet7", **kwargs)
    aux = attach_auxiliary(model, heads="auto", branch="auto", width=8, input_shape=shape).auxiliary.config
    _roundtrip({"arch": "smallnet7", "arch_kwargs": kwargs, "expand": "cl", "rate": 2, "aux": aux, "input_shape": shape})
    _roundtrip({"arch": "smallnet7-fc", "arch_kwargs": kwargs, "input_shape": shape})
    # JSON gives lists where the factories took tuples
    _roundtrip({"arch": "repvgg", "arch_kwargs": {"width": 0.25, "num_blocks": [1, 1, 1, 1], "input_size": 32},
                "input_shape": [1, 3, 32, 32]})


def test_build_model_from_a_factory_path():
    meta = {"arch": "compactify.models.architectures.smallnet:smallnet7", "arch_kwargs": {"input_size": 16},
            "expand": "cl", "rate": 2, "input_shape": [1, 3, 16, 16]}
    model = build_model(meta)
    assert isinstance(model.conv1, nn.Sequential) and model.fc1.in_features == 128
    with pytest.raises(BadInputError, match="cannot import 'no_such_pkg.mod'"):
        build_model({"arch": "no_such_pkg.mod:factory"})
    with pytest.raises(BadInputError, match="has no attribute 'nope'"):
        build_model({"arch": "compactify.models:nope"})
    with pytest.raises(BadInputError, match="returned int"):
        build_model({"arch": "builtins:int"})
    with pytest.raises(BadInputError, match="no 'arch'"):
        build_model({})
    with pytest.raises(BadInputError, match="conflicts|says mode"):
        build_model({"arch": "smallnet7-cl", "expand": "fc"})
    with pytest.raises(BadInputError, match="arch_kwargs must be a JSON object"):
        build_model({"arch": "smallnet7", "arch_kwargs": [1]})
