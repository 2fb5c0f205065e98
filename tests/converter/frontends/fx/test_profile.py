"""The profile of a captured graph (FLOPs, shapes, scalars) is the same from a fake-tensor run as from a
real one, and a graph is run on fake tensors only where a real run would cost more."""

from __future__ import annotations

import pytest
import torch

from compactify.converter.frontends.fx import profile as P
from compactify.converter.frontends.fx.capture import capture_graph
from compactify.models import create_model


@pytest.mark.parametrize("name, size", [("smallnet7-cl", 32), ("mobilenetv2-cl", 64), ("resnet18-cl", 32)])
def test_fake_and_real_runs_give_the_same_profile(name, size):
    x = torch.randn(2, 3, size, size)
    gm = capture_graph(create_model(name).eval(), x)
    real = P._run(gm, x)
    fake = torch._subclasses.fake_tensor.FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        shapes_only = P._run(gm, fake.from_tensor(x))
    assert shapes_only.flops == real.flops and shapes_only.shapes == real.shapes
    assert shapes_only.scalars == real.scalars
    convs = sum(f for n, f in real.flops.items() if n.target in P._MATMULS)
    assert P._estimated_flops(gm) == pytest.approx(convs, rel=0.01)  # the counter for those ops, within its bias terms


def test_a_large_graph_runs_on_fake_tensors_and_a_small_one_for_real(monkeypatch):
    x = torch.randn(2, 3, 32, 32)
    gm = capture_graph(create_model("smallnet7").eval(), x)
    ran = []
    real_run = P._run
    monkeypatch.setattr(P, "_run", lambda g, e: ran.append(type(e).__name__) or real_run(g, e))
    P.profile_graph(gm, x)
    monkeypatch.setattr(P, "FAKE_RUN_FLOPS", 0.0)
    P.profile_graph(gm, x)
    assert ran == ["Tensor", "FakeTensor"]
