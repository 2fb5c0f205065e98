"""Public re-parameterization families, built from their real code (timm, torchvision) or from
faithful reproductions of it (tests/families/catalog.py), contract exactly and to at most as
many parameters as each family's own deploy conversion."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from compactify.cli import main
from compactify.converter.backends.fx_onnx import unwritten_ops
from compactify.converter.pipeline.contraction import contract
from compactify.converter.frontends.fx.check import reference_float64

from ._common import param_count
from .catalog import FAMILIES
from .factories import TIMM_FAMILIES, TIMM_INPUT, timm_deploy, timm_model, torchvision_shufflenet

REL = 1e-6  # max |compact - ref| / max |ref| against the source in float64


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max())


def _check(model: torch.nn.Module, deploy_params: int, shape: tuple[int, ...]):
    """Exact: within 1e-6 of the float64 source, or, for a deep net with random weights whose
    own float32 run is already further off than that (repvgg_a0, mobileone_s1-s4, LeViT's
    attention), no further off than three times the source's own float32 error on the same input."""
    r = contract(model, shape)
    assert r.params_after <= deploy_params, [d.as_dict() for d in r.decisions if d.kind == "keep"]
    for seed, batch in ((0, shape[0]), (123, 3)):  # contract()'s own input, then another
        x = torch.randn((batch, *shape[1:]), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = reference_float64(model)(x.double())
            own = _rel(model(x), ref)
            assert _rel(r.compact(x), ref) <= max(REL, 3 * own), own
    return r


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_reproduced_family_contracts_to_its_deploy_size(name):
    family = FAMILIES[name]
    model = family.build()
    _check(model, param_count(family.deploy(model)), family.input_shape)


@pytest.mark.parametrize("name", TIMM_FAMILIES)
def test_timm_family_contracts_to_timm_deploy_size(name):
    model = timm_model(name)
    r = _check(model, param_count(timm_deploy(model)), TIMM_INPUT)
    assert not unwritten_ops(r.compact)  # the fx writer takes every op: no torch.onnx.export fallback


def _batchnorms(module: torch.nn.Module) -> int:
    """BatchNorm layers, as modules and as ops of a captured graph."""
    layers = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    graph = getattr(module, "graph", None)
    ops = 0 if graph is None else sum(n.op == "call_function" and "batch_norm" in str(n.target) for n in graph.nodes)
    return layers + ops


def test_next_vit_pre_batchnorms_fold_as_its_merge_pre_bn_does():
    # Next-ViT's reparameterize folds norm1 (through reshape and transpose) into q, k and v, the
    # attention's BatchNorm1d (after its AvgPool1d) into k and v, and norm2 and the conv block's norm
    # into the MLP (issue 23). One block of each kind per stage: sr_ratio 4, 2 and 1 all appear.
    model = timm_model("nextvit_small", depths=(1, 1, 5, 1))
    deploy = timm_deploy(model)
    r = _check(model, param_count(deploy), TIMM_INPUT)
    # All that is left is the BatchNorm before the head's global pool, which Next-ViT keeps too.
    assert _batchnorms(r.compact) == 1 < _batchnorms(deploy)
    assert sorted(d.region.name.rsplit(".", 1)[-1] for d in r.decisions if d.folded_into) == ["norm"] * 2 + ["norm1"] * 3


def test_torchvision_shufflenet_channel_shuffle_keeps_its_layout():
    # transpose -> contiguous -> view: removing the contiguous broke the view (issue 11).
    model = torchvision_shufflenet()
    bn = sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    r = _check(model, param_count(model) - bn, (1, 3, 64, 64))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in r.compact.modules())
    assert not unwritten_ops(r.compact)


CLI_CASES = [
    ("catalog", {"name": "dbb-resnet18"}, True),
    ("catalog", {"name": "acnet-rc"}, False),
    ("catalog", {"name": "replknet-net"}, False),
    ("catalog", {"name": "yolov6-bepc3"}, False),
    ("catalog", {"name": "expandnets-shufflenet-cl"}, False),
    ("timm_model", {"name": "mobileone_s0"}, True),
    ("timm_model", {"name": "levit_128s"}, False),
]


@pytest.mark.slow
@pytest.mark.parametrize("factory,kwargs,onnx", CLI_CASES, ids=[c[1]["name"] for c in CLI_CASES])
def test_family_converts_with_the_cli(tmp_path, factory, kwargs, onnx):
    from . import factories

    model = getattr(factories, factory)(**kwargs)
    if factory == "catalog":
        family = FAMILIES[kwargs["name"]]
        deploy, shape = param_count(family.deploy(model)), (1, *family.input_shape[1:])
    else:
        deploy, shape = param_count(timm_deploy(model)), TIMM_INPUT
    ckpt = tmp_path / "model.pt"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "out"
    args = ["convert", str(ckpt), "--arch", f"tests.families.factories:{factory}", "--arch-kwargs", json.dumps(kwargs),
            "--input-shape", ",".join(map(str, shape)), "-o", str(out)]
    result = CliRunner().invoke(main, args + ([] if onnx else ["--no-onnx"]))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["max_rel_error"] <= REL
    assert report["params_after"] <= deploy
    assert report["merges_exact_at_every_size"]
    if onnx:
        import onnxruntime as ort

        x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
        session = ort.InferenceSession(str(out / "compact.onnx"), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            ref = reference_float64(model)(x.double())
        assert float((torch.from_numpy(got).double() - ref).abs().max() / ref.abs().max()) <= 1e-5
