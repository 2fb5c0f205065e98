"""A tiny digits-trained checkpoint (widevgg, width 16, 8x8 inputs, one epoch: about 50% accurate,
and flops:0.5 truncation costs it most of that), shared by the sweep tests and the tests of a truncated conversion."""

from __future__ import annotations

import pytest
import torch

TINY_ARCH = {"num_classes": 10, "in_chans": 1, "input_size": 8, "width": 16, "blocks": [1, 1]}
TINY_SHAPE = [1, 1, 8, 8]


def train_tiny(path):
    from compactify.converter.load.checkpoint import save_checkpoint
    from compactify.models import create_model
    from compactify.models.data import load_digits_data
    from compactify.models.train import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = create_model("widevgg", **TINY_ARCH)
        result = train(model, 1, data=load_digits_data(TINY_SHAPE), progress=False)
    finally:
        torch.set_num_threads(before)
    meta = {"arch": "widevgg", "arch_kwargs": TINY_ARCH, "input_shape": TINY_SHAPE,
            "training": {"dataset": "digits", "epochs": 1, "test_accuracy": result.test_accuracy}}
    return save_checkpoint(path, model.state_dict(), meta)


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("sweep-ckpt") / "tiny.pt")
