"""The meta-device forward pass leaves the model as it was, and a registry model takes the checkpoint's
own tensors without a random initialization."""

from __future__ import annotations

import torch
from families.factories import ultralytics_model
from torch import nn

from compactify.converter.load.ingest import _materialized, model_with_weights
from compactify.converter.load.input_fit import check_input_fits
from compactify.converter.load.meta_run import meta_forward
from compactify.converter.load.resources import meta_peak
from compactify.models import build_model


class CachesOnFirstCall(nn.Module):
    """Like ultralytics' Detect: a table made for the input size seen, kept for the next call."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shape = None

    def forward(self, x):
        if self.shape != x.shape:
            self.grid = torch.arange(x.shape[-1], dtype=x.dtype, device=x.device)
            self.shape = x.shape
        return self.conv(x) + self.grid


def test_a_meta_forward_undoes_what_the_forward_cached():
    model = CachesOnFirstCall().eval()
    out = meta_forward(model, torch.empty(1, 3, 8, 8, device="meta"))
    assert out.is_meta and out.shape == (1, 4, 8, 8)
    assert model.shape is None and not hasattr(model, "grid") and not model.conv.weight.is_meta
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(model(x), model.conv(x) + torch.arange(8.0))


def test_the_real_yolo_runs_after_its_input_shape_and_memory_were_checked_on_meta():
    model = ultralytics_model("yolov8n.yaml")
    check_input_fits(model, (1, 3, 64, 64), None)
    peak, failure = meta_peak(model, (1, 3, 64, 64))
    assert failure is None and peak > 0
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert not any(t.is_meta for t in (out if isinstance(out, (tuple, list)) else [out]) if isinstance(t, torch.Tensor))


def test_a_registry_model_holds_the_checkpoints_own_tensors():
    meta = {"arch": "smallnet7", "expand": "cl", "rate": 2}
    reference = build_model(meta).eval()
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    model = model_with_weights(meta, state).eval()
    for name, p in [*model.named_parameters(), *model.named_buffers()]:
        assert p.data_ptr() == state[name].data_ptr(), name  # assigned, not copied into a fresh init
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_a_missing_step_counter_is_made_zero_and_a_computed_table_is_not_accepted_on_meta():
    with torch.device("meta"):
        bn = nn.BatchNorm2d(3)
    bn.load_state_dict({k: torch.ones(3) for k in ("weight", "bias", "running_mean", "running_var")},
                       strict=False, assign=True)
    assert _materialized(bn) and bn.num_batches_tracked.item() == 0
    with torch.device("meta"):
        table = nn.Module()
        table.register_buffer("index", torch.arange(4), persistent=False)
    assert not _materialized(table)
