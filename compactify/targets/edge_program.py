"""The compact network as the PyTorch edge exporters take it (ExecuTorch, LiteRT): the compact
torch.export program's module and one example input at the planned shape, so that what they export
is static at that shape, batch included.

Why static: with torch 2.13 and executorch 1.5, XNNPACK's lowering narrows a dynamic batch to at most
15 whatever bound it was given (the range of the batch symbol becomes [2, 15]); a batch the user did not
choose is worse than a fixed one that says so. Phones run one input at a time; another shape is
another ``--input-shape``. LiteRT's .tflite is lowered the same way, so the two edge files agree.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from compactify.arguments import needs_torch_graph
from compactify.errors import BadInputError, CompactifyError, first_line
from compactify.runtimes.native_output import native_output_kept
from compactify.targets.base import CompactModel

WHY_STATIC = ("XNNPACK's lowering (executorch 1.5, torch 2.13) narrows a dynamic batch to at most 15; edge files "
              "are lowered at the planned input shape instead")


def static_module(compact: CompactModel, flag: str, file: str) -> tuple[torch.nn.Module, torch.Tensor]:
    """The compact program's module and a float32 example input at the planned shape."""
    program = compact.program()
    if program is None:
        raise BadInputError(needs_torch_graph(flag, file))
    return program.module(), torch.zeros(tuple(compact.input_shape))


def static_entry(compact: CompactModel) -> dict[str, Any]:
    """What report.json says of every edge file's shape."""
    return {"input_shape": list(compact.input_shape), "batch": "static", "why_static": WHY_STATIC}


@contextlib.contextmanager
def edge_lowering(library: str, cannot: str, native_reason: bool = True) -> Iterator[None]:
    """Run an edge exporter with nothing it prints reaching the terminal; whatever it raises (torch.export
    and every exporter pass raise their own kinds) becomes one BadInputError, ``cannot`` and the reason:
    the exporter's last native log line when ``native_reason`` and it printed one (the Python exception
    then gives an error code only), else the exception's first line. compactify's own errors (a missing
    package) pass as they are."""
    failure = None
    with native_output_kept(library) as said:
        try:
            yield
        except CompactifyError:
            raise
        except Exception as exc:
            failure = exc
    if failure is not None:
        reason = (said.last_native_line() if native_reason else "") or first_line(failure)
        raise BadInputError(f"{cannot}: {reason}") from failure
