"""Public models the fx writer (backends.fx_onnx) must write without torch.onnx.export: contracted and
handed to the conversion's fx -> ONNX back-end, report.json's onnx entry says exporter "fx" and no
fallback. These are the models that needed the writer's later ops (YOLO's upsampling, anchors and
ConvTranspose, LeViT's attention-bias indexing); test_family_contraction checks every timm family's ops."""

from __future__ import annotations

import pytest

from compactify.converter.backends.onnx_export import torch_to_onnx
from compactify.converter.pipeline.contraction import contract

from . import factories

CASES = [("ultralytics_model", {"cfg": "yolov8n.yaml"}, (1, 3, 64, 64), {"Resize"}),
         ("ultralytics_model", {"cfg": "yolov8n-seg.yaml"}, (1, 3, 64, 64), {"Resize", "ConvTranspose"}),
         ("timm_model", {"name": "levit_128s"}, factories.TIMM_INPUT, {"Gather"})]


@pytest.mark.parametrize("factory,kwargs,shape,ops", CASES, ids=[next(iter(c[1].values())) for c in CASES])
def test_public_model_is_written_by_the_fx_writer(factory, kwargs, shape, ops):
    r = contract(getattr(factories, factory)(**kwargs), shape)
    written = torch_to_onnx(r.compact, r.source.example, ["x"], None, {})
    assert written.info["exporter"] == "fx" and written.info["fallback_reason"] is None, written.info
    assert written.info["max_rel_diff_vs_torch"] < 1e-4
    assert ops <= {n.op_type for n in written.model.graph.node}
