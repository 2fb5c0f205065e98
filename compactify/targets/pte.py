"""compact.pte: the compact network as an ExecuTorch program, its ops delegated to XNNPACK where XNNPACK
takes them, run on ExecuTorch's runtime (cpu). Lowered from the compact torch.export program, static at
the planned input shape (``edge_program``): an ONNX source has no program to lower.

What XNNPACK does not take runs as ExecuTorch's portable kernels, correctly but slower: report.json's
``pte.not_delegated`` counts those ops, and convert prints them.
"""

from __future__ import annotations

import collections
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compactify.optional import EDGE_INSTALL
from compactify.runtimes.executorch_runner import (
    ExecutorchRunner,
    executorch_missing,
    import_executorch,
)
from compactify.targets.base import Built, CompactModel, Target, register_target
from compactify.targets.edge_program import edge_lowering, static_entry, static_module

DELEGATE = "XnnpackBackend"


@dataclass(frozen=True)
class PteSettings:
    """compact.pte has nothing to choose: XNNPACK, at the planned input shape."""


@dataclass
class Lowered:
    """A lowered program's bytes and what its graph says about the delegation."""

    buffer: bytes
    delegated_parts: int  # subgraphs handed to XNNPACK
    not_delegated: dict[str, int]  # op -> how many run as portable kernels


@register_target
class PteTarget(Target):
    name = "pte"
    file = "compact.pte"
    suffixes = (".pte",)
    description = "ExecuTorch program (XNNPACK)"
    runtime = "executorch"
    flag = "--executorch"
    install_hint = EDGE_INSTALL
    settings_type = PteSettings

    def sniff(self, path: Path) -> bool:
        return ExecutorchRunner.holds_its_file(path)

    def missing(self) -> str | None:
        return executorch_missing()

    def build(self, compact: CompactModel, folder: Path, built: Mapping[str, Path], settings: PteSettings) -> Built:
        lowered = lower_to_xnnpack(*static_module(compact, self.flag, self.file))
        (folder / self.file).write_bytes(lowered.buffer)
        entry = {"delegate": DELEGATE, "delegated_parts": lowered.delegated_parts,
                 "not_delegated": lowered.not_delegated, **static_entry(compact)}
        return Built(self.file, {self.name: entry})


def lower_to_xnnpack(module: torch.nn.Module, example: torch.Tensor) -> Lowered:
    """``module`` exported at ``example``'s shape (static), lowered with the XNNPACK partitioner and
    serialized; BadInputError in one line when ExecuTorch cannot lower it."""
    with edge_lowering("ExecuTorch", "--executorch: ExecuTorch cannot lower the compact network for XNNPACK"):
        exir = import_executorch("executorch.exir", "--executorch")
        xnnpack = import_executorch("executorch.backends.xnnpack.partition.xnnpack_partitioner", "--executorch")
        static = torch.export.export(module, (example,), strict=False)
        edge = exir.to_edge_transform_and_lower(static, partitioner=[xnnpack.XnnpackPartitioner()])
        delegated, outside = delegation(edge.exported_program().graph)
        buffer = edge.to_executorch().buffer
    return Lowered(bytes(buffer), delegated, outside)


def delegation(graph: torch.fx.Graph) -> tuple[int, dict[str, int]]:
    """How many delegate calls a lowered edge graph makes, and which ops it runs itself (by name, counted):
    every call_function outside a delegate call and the getitems that unpack its results."""
    delegated = 0
    outside: collections.Counter[str] = collections.Counter()
    for node in graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            delegated += 1
        else:
            outside[name] += 1
    return delegated, dict(sorted(outside.items()))


def _op_name(target: Any) -> str:
    return getattr(target, "__name__", None) or str(target)


def summary_line(entry: Mapping[str, Any]) -> str:
    """convert's line about compact.pte: whether XNNPACK runs all of it, and what runs outside it."""
    outside = entry.get("not_delegated") or {}
    shape = ",".join(str(d) for d in entry.get("input_shape") or [])
    if not outside:
        return f"compact.pte: every op runs on XNNPACK (static input shape {shape})"
    ops = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in outside.items())
    total = sum(outside.values())
    return (f"compact.pte: {total} op{'s' if total > 1 else ''} not delegated to XNNPACK, run as ExecuTorch's "
            f"portable kernels: {ops} (static input shape {shape})")
