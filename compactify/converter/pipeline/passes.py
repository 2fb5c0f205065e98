"""How the pipeline runs a pass: timed as a stage of the conversion, and, when it fails on something
other than a user's input, named in the error, so that a bug report says which pass broke."""

from __future__ import annotations

from typing import Any, Callable

from compactify.converter.stages import Stages
from compactify.errors import CompactifyError


def run_pass(stages: Stages, stage: str, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` inside ``stages(stage)``; an unexpected exception gets a note naming
    the pass ``name`` (a CompactifyError is the user's problem, said in its own words)."""
    with stages(stage):
        try:
            return fn(*args, **kwargs)
        except CompactifyError:
            raise
        except Exception as exc:
            exc.add_note(f"(in the conversion pass {name!r})")
            raise
