"""Refuse, before any allocation, an input shape whose activations cannot fit in memory.

``check_memory(model, shape)`` runs the model once on the meta device (shapes only, no data)
and records the bytes of the tensors alive at once; ``check_graph_memory(gm, shape)`` reads the
same from the shapes a captured graph records, at no cost (``convert`` uses it right after the
capture, which allocates nothing). The conversion's largest step is a float64 forward pass of
the source at batch max(2, N), so the estimate is that peak in float64 at that batch. It is compared with the budget: ``--max-memory`` where given (see
``memory_budget``), else the memory available to this process (MemAvailable, and the cgroup
limit where one is set). A model that cannot run on the meta device is estimated from its
input alone.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from compactify.converter.load.meta_run import meta_forward
from compactify.errors import BadInputError, first_line

# An input this large a share of the memory budget gets its activations estimated before anything runs.
LARGE_INPUT_SHARE = 16

def human(n: float) -> str:
    for unit, scale in (("TB", 1 << 40), ("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def available_memory() -> int | None:
    """Bytes this process can still use: MemAvailable, capped by a cgroup limit and ``ulimit -v``; None if unknown."""
    found = []
    try:
        text = Path("/proc/meminfo").read_text()
        m = re.search(r"^MemAvailable:\s+(\d+) kB", text, re.MULTILINE)
        if m:
            found.append(int(m.group(1)) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < (1 << 60):
            found.append(max(int(limit) - usage, 0))
        break
    try:  # `ulimit -v`: the address space left under it
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1):
            m = re.search(r"^VmSize:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
            found.append(max(soft - (int(m.group(1)) * 1024 if m else 0), 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(found) if found else None


def budget(max_bytes: int | None = None) -> tuple[int | None, str]:
    """The budget in bytes (``max_bytes``, the user's --max-memory, else what is available) and where
    it comes from (for the message)."""
    if max_bytes is not None:
        return max_bytes, "--max-memory"
    return available_memory(), "available memory"


def meta_peak(model, shape: Sequence[int]) -> tuple[int | None, BaseException | None]:
    """Peak bytes of tensors alive at once in one float32 forward pass at ``shape``, on the meta device;
    None and why where the meta device cannot run the model."""

    class Live(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.now = 0
            self.peak = 0

        def _free(self, n):
            self.now -= n

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and not t._is_view():
                    n = t.numel() * t.element_size()
                    self.now += n
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(t, self._free, n)
            return out

    try:
        x = torch.empty(tuple(shape), device="meta")
        mode = Live()
        with mode:
            meta_forward(model, x)
        return mode.peak + x.numel() * x.element_size(), None
    except Exception as exc:  # a shape the model rejects, data-dependent control flow, custom ops
        return None, exc


def check_memory(model, shape: Sequence[int], what: str = "input shape", run: bool = True,
                 budget_bytes: int | None = None) -> int:
    """Raise BadInputError when converting at ``shape`` needs more memory than the budget; returns the
    estimate. With ``run=False`` only what the shape alone says is checked (the float64 input):
    ``convert`` checks the activations on the captured graph instead (``check_graph_memory``),
    which costs nothing, where a forward pass on the meta device takes seconds for a large model.
    An input that alone takes more than 1/LARGE_INPUT_SHARE of the budget is run on the meta device
    all the same: the capture would allocate it, and a model that rejects it would be run eagerly on
    it to say so, before the graph could be checked."""
    shape = tuple(int(d) for d in shape)
    budget_bytes, source = budget(budget_bytes)
    floor = _floor(shape)
    if budget_bytes is not None and floor > budget_bytes:  # no need to run anything
        return _refuse(shape, what, floor, budget_bytes, source, "its float64 input alone")
    large = budget_bytes is not None and floor * LARGE_INPUT_SHARE > budget_bytes
    if not run and not large:
        return floor
    batch = max(2, shape[0])
    peak, failure = meta_peak(model, (1, *shape[1:]))
    if peak is None and large:
        dims = ",".join(map(str, shape))
        raise MemoryBudgetError(
            f"{what} {dims} is large (its float64 input alone is {human(floor)}, over 1/{LARGE_INPUT_SHARE} of the "
            f"{human(budget_bytes)} of {source}) and the model does not run at it on the meta device "
            f"({first_line(failure)}); give the --input-shape the model was built for")
    return _judge(shape, what, None if peak is None else peak * batch, _weight_bytes(model), budget_bytes, source)


def check_graph_memory(gm, shape: Sequence[int], what: str = "input shape", budget_bytes: int | None = None) -> int:
    """``check_memory`` from a graph captured at batch max(2, N): the shapes its nodes record say
    which tensors are alive at once, before anything runs on real data."""
    shape = tuple(int(d) for d in shape)
    budget_bytes, source = budget(budget_bytes)
    return _judge(shape, what, graph_peak_bytes(gm), _weight_bytes(gm), budget_bytes, source)


def graph_peak_bytes(gm) -> int | None:
    """Peak bytes of the float32 tensors alive at once when ``gm`` runs, from its recorded shapes
    (each tensor freed after its last reader; views share their base's memory)."""

    nodes = list(gm.graph.nodes)
    last = {}
    for i, node in enumerate(nodes):
        for arg in node.all_input_nodes:
            last[arg] = i
    sizes: dict = {}
    live = peak = 0
    try:
        for i, node in enumerate(nodes):
            val = node.meta.get("val")
            if node.op in ("placeholder", "call_function") and isinstance(val, torch.Tensor) and not val._is_view():
                sizes[node] = int(val.numel()) * val.element_size()
                live += sizes[node]
                peak = max(peak, live)
            for arg in node.all_input_nodes:
                if last.get(arg) == i and arg in sizes:
                    live -= sizes.pop(arg)
    except Exception:  # an unbacked symbolic size: no estimate from the graph
        return None
    return peak


def _floor(shape: tuple[int, ...]) -> int:
    numel = max(2, shape[0])
    for d in shape[1:]:
        numel *= d
    return numel * 8  # the float64 input alone


def _weight_bytes(model) -> int:
    return 2 * sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def _judge(shape, what, peak_at_batch: int | None, weights: int, budget_bytes, source) -> int:
    """``peak_at_batch``: float32 bytes alive at once at batch max(2, N); the float64 run doubles it."""
    batch = max(2, shape[0])
    floor = _floor(shape)
    estimate = floor if peak_at_batch is None else max(floor, peak_at_batch * 2) + weights  # + the float64 weights
    if budget_bytes is not None and estimate > budget_bytes:
        return _refuse(shape, what, estimate, budget_bytes, source,
                       f"the activations of a float64 forward pass at batch {batch} and a float64 copy of the weights")
    return estimate


class MemoryBudgetError(BadInputError):
    """The input shape needs more memory than the budget: refused before anything runs."""


def _refuse(shape, what, estimate, budget_bytes, source, basis) -> int:
    dims = ",".join(map(str, shape))
    raise MemoryBudgetError(
        f"{what} {dims} needs about {human(estimate)} ({basis}), more than the {human(budget_bytes)} of {source}; "
        "give a smaller --input-shape" + (" or raise --max-memory" if source == "--max-memory" else
                                          ", or set --max-memory if you know better")
    )
