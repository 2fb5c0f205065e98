"""The engine costs a merged operator from its shape alone: the count must be the one
torch.utils.flop_counter gives for the layer the PyTorch back-end writes, or plans would change."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactify.converter.backends.fx_layers import to_module
from compactify.converter.engine import algebra as A
from compactify.converter.engine.cost import operator_flops, operator_params
from compactify.converter.frontends.fx.profile import count_flops

ENGINE = Path(__file__).resolve().parents[3] / "compactify" / "converter" / "engine"


@settings(max_examples=40, deadline=None)
@given(groups=st.sampled_from([1, 2]), cin=st.integers(1, 3), cout=st.integers(1, 3), k=st.integers(1, 3),
       stride=st.integers(1, 2), pad_before=st.integers(0, 2), pad_after=st.integers(0, 2), size=st.integers(5, 9),
       bias=st.booleans())
def test_conv_flops_and_params_match_the_written_layer(groups, cin, cout, k, stride, pad_before, pad_after, size, bias):
    w = torch.randn(cout * groups, cin, k, k, dtype=torch.float64)
    b = torch.randn(cout * groups, dtype=torch.float64) if bias else None
    op = A.conv(w, b, stride, [(pad_before, pad_after)] * 2, 1, groups)
    shape = (2, cin * groups, size, size)
    layer = to_module(op)
    assert operator_flops(A.trim(op), shape) == count_flops(layer, torch.randn(shape))
    assert operator_params(A.trim(op)) == sum(p.numel() for p in layer.parameters())


@settings(max_examples=20, deadline=None)
@given(cin=st.integers(1, 5), cout=st.integers(1, 5), lead=st.lists(st.integers(1, 4), min_size=1, max_size=3),
       bias=st.booleans())
def test_linear_flops_and_params_match_the_written_layer(cin, cout, lead, bias):
    op = A.linear(torch.randn(cout, cin, dtype=torch.float64), torch.randn(cout, dtype=torch.float64) if bias else None)
    shape = (*lead, cin)
    layer = to_module(op)
    assert operator_flops(op, shape) == count_flops(layer, torch.randn(shape))
    assert operator_params(op) == sum(p.numel() for p in layer.parameters())


@settings(max_examples=30, deadline=None)
@given(groups=st.sampled_from([1, 2]), k=st.integers(1, 3), spread=st.integers(2, 3), dil=st.integers(1, 2),
       pads=st.lists(st.integers(0, 7), min_size=4, max_size=4), bias=st.booleans())
def test_transposed_flops_and_params_match_the_written_layer(groups, k, spread, dil, pads, bias):
    """Any padding of the spread input: what the transposed layer's own padding cannot say goes
    into a zero pad of the input in front of it, which the count includes."""
    w = torch.randn(3 * groups, 2, k, k, dtype=torch.float64)
    b = torch.randn(3 * groups, dtype=torch.float64) if bias else None
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    op = A.trim(dataclasses.replace(A.conv(w, b, 1, padding, dil, groups), in_dilation=(spread, spread)))
    shape = (2, 2 * groups, 4, 5)
    layer = to_module(op)
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(layer.double()(x), A.apply(op, x), rtol=1e-5, atol=1e-5)  # weights cast to float32
    assert operator_flops(op, shape) == count_flops(layer, x)
    assert operator_params(op) == sum(p.numel() for p in layer.parameters())


def test_the_engine_imports_no_graph_format():
    """Region finding, composition and planning see graphs only through engine.graph."""
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not name.startswith(("torch.fx", "onnx", "compactify.converter.frontends",
                                            "compactify.converter.backends")), f"{path.name} imports {name}"
                if isinstance(node, ast.ImportFrom) and name == "torch":
                    assert "fx" not in [a.name for a in node.names], f"{path.name} imports torch.fx"
