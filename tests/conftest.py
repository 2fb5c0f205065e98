"""Tests run their many tiny ops on one thread (except those marked slow): for tensors this small, a second
OpenMP thread only adds synchronization (and on a loaded machine it stalls on every op)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread(request):
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
