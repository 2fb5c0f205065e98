"""The check every conversion does, cheap enough to run on each one and as strong as a full float64 run.

- **Regions**: each merged layer (float32, as it ships) against the layers it replaced, run in
  float64 on a random input of the region's own entry shape: that is what exactness means, and
  an input of its own (not the activations the network happens to feed it) exercises the whole
  linear map. A merge exact at every input size is run at a smaller spatial size that keeps all
  its border cases and an interior (``region_check_shape``). A merge further off than EXACT_REL is judged against what float32 rounding alone
  costs there: its layers run in float32 on the same input.
- **Network**: the compact model against the source model on one seeded batch, float32 against
  float32, and its first samples (at most FLOAT64_BATCH) against the source run in float64 (the
  conversion's ``max_rel_error``), whose weights are cast to float64 one module at a time while it runs: no
  float64 copy of the whole model is ever held.

The full multi-batch float64 proof on every artifact is ``compactify verify``.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator

import numpy as np
import torch
from torch import fx, nn

from compactify.converter.engine import algebra as A
from compactify.converter.engine.exactness import (
    EXACT_REL,
    EXACT_RULE,
    NetworkCheck,
    RegionCheck,
    within,
)
from compactify.converter.frontends.fx.float64 import (
    NotIsolated,
    part_nodes,
    run_graph,
    run_part,
)
from compactify.measure.metrics import outputs_relative_error, relative_error
from compactify.tensors import flatten_outputs

ERROR_SEED = 0
# The network's float64 run takes the first samples of the seeded batch: a batch of 1 or 2 (what
# conversions are traced at) runs whole, a larger one costs no more than 2 samples in float64.
FLOAT64_BATCH = 2
REGION_SEED = 1000
# Outputs of a merged region that read no padding, at least, in the input its check runs on.
REGION_INTERIOR = 8
def example_input(shape: tuple[int, ...], seed: int = ERROR_SEED) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- regions


def check_regions(gm: fx.GraphModule, decisions, profile, truncated: bool = False) -> list[RegionCheck]:
    """Each merged (or removed) region of the captured graph ``gm`` against its own layers. Runs
    before the rewrite, which erases those layers from ``gm``. With ``truncated`` (``--rank``) a
    layer whose units were pruned no longer takes or gives the region's shapes, and is skipped."""
    out = []
    for i, d in enumerate(decisions):
        if d.kind not in ("dense", "factored", "removed"):
            continue
        region = d.region
        shape = profile.shapes.get(region.entry)
        row = RegionCheck(region.name, d.kind, list(shape or ()), exact_claimed=d.exact)
        out.append(row)
        if shape is None or not shape:
            row.skipped = "the region's input shape is unknown"
            continue
        if d.folded_into:
            row.skipped = f"folded into {', '.join(d.folded_into)}: checked there"
            continue
        try:
            _, outside = part_nodes(region.entry, region.exit, profile.scalars)
        except NotIsolated as exc:
            row.skipped = f"not isolated: {exc}"
            continue
        # Batch 1 is enough for a linear map; a part that takes a size from outside (a reshape to
        # the graph's batch), or holds the captured batch as a constant (a program exported with a
        # static batch), runs at the profiled shape instead.
        shape = _lead_input(d, shape)
        shapes = [tuple(shape)] if outside or shape[0] == 1 else [(1, *shape[1:]), tuple(shape)]
        if not outside:
            smaller = region_check_shape(d, shapes[0])
            shapes = [smaller, *shapes] if smaller != shapes[0] else shapes
        for j, trial in enumerate(shapes):
            x = example_input(trial, seed=REGION_SEED + i)  # float32 values, exact in float64 too
            try:
                ref = run_part(gm, region.entry, region.exit, _led(d, x), torch.float64, profile.scalars)
                break
            except RuntimeError:
                if j == len(shapes) - 1:
                    raise
        row.input_shape = list(x.shape)
        layer = d.module if d.kind != "removed" else nn.Identity()
        try:
            with torch.no_grad():
                got = layer(x)
        except RuntimeError:
            if not truncated:
                raise
            row.skipped = "its layer takes fewer input channels than the region (pruned units)"
            continue
        if got.shape != ref.shape and got.numel() == ref.numel():
            got = got.reshape(ref.shape)  # a merged linear layer across a reshape (fx rewrite restores it)
        if got.shape != ref.shape and truncated:  # --rank removed units: the layer computes fewer outputs by design
            row.skipped = (f"its layer's output {list(got.shape)} differs from the region's {list(ref.shape)} "
                           "(pruned units)")
            continue
        row.max_abs, row.max_rel_error = relative_error(got, ref)
        if not within(row.max_rel_error, 0.0):
            own = run_part(gm, region.entry, region.exit, _led(d, x).float(), torch.float32, profile.scalars)
            row.layers_float32_rel = relative_error(own, ref)[1]
        del ref, got
    return out


def region_check_shape(decision, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The input a merged region is checked on: for a merge exact at every input size, a spatial size
    no larger than ``shape`` (the traced one) that still gives every output whose window reads the
    merged operator's padding, at both ends, REGION_INTERIOR outputs that read none, and the same
    remainder modulo the stride (the last window falls as it does at ``shape``). A wrong merge is
    wrong at its borders or in its interior, and both are there; the float64 run of a large input
    costs as much as the network's. A merge exact only at the traced size is checked there."""
    op = decision.operator
    if (decision.kind != "dense" or op is None or decision.size_notes or op.ndim == 0
            or len(shape) != op.ndim + 2 or decision.lead is not None or op.in_dilation):
        return tuple(shape)  # a fold's lead or a transposed conv's spread input: checked as traced
    spatial = []
    for n, (before, after), span, stride in zip(shape[2:], op.padding, op.span, op.stride):
        border = -(-before // stride) + -(-after // stride)  # outputs whose window reads padding
        least = max(1, (border + REGION_INTERIOR - 1) * stride + span - before - after)
        spatial.append(n if least >= n else least + (n - least) % stride)
    return (*shape[:2], *spatial)


def _lead_input(d, shape) -> tuple[int, ...]:
    """The shape the merged layer reads: the entry's, with the channels of the lead's input where a
    fold moved a channel-mixing layer here (a Linear folded into q, k and v)."""
    if d.lead is None or d.lead.in_channels == d.lead.out_channels:
        return tuple(shape)
    axis = d.composition.family[1] if d.lead.ndim else len(shape) - 1
    return tuple(d.lead.in_channels if i == axis else n for i, n in enumerate(shape))


def _led(d, x: torch.Tensor) -> torch.Tensor:
    """What the region's own layers read when its merged layer reads ``x``: ``x`` itself, or, where
    a fold moved an affine here from before the region (engine.fold), that affine of ``x``."""
    return x if d.lead is None else A.apply(d.lead, x.double())


# --------------------------------------------------------------------------- network


def check_network(model: nn.Module, compact: nn.Module, input_shape, seed: int = ERROR_SEED + 1) -> NetworkCheck:
    x = example_input(tuple(input_shape), seed=seed)
    with torch.no_grad():
        src = flatten_outputs(model(x))
        got = flatten_outputs(compact(x))
        small = x[:FLOAT64_BATCH]
        try:
            ref, how = float64_forward(model, small)
        except RuntimeError:  # a graph captured with a static batch runs at that batch only
            small = x
            ref, how = float64_forward(model, small)
    n = int(small.shape[0])
    result = NetworkCheck(batch=int(x.shape[0]), float64_batch=n, reference=how, float32_max_abs=0.0,
                          float32_max_rel_error=0.0)
    if n != x.shape[0]:  # the same first samples through both float32 models (outputs need not be batch-first)
        with torch.no_grad():
            src_n, got_n = flatten_outputs(model(x[:n])), flatten_outputs(compact(x[:n]))
    else:
        src_n, got_n = src, got
    for g, s in zip(got, src):
        f32_abs, f32_rel = relative_error(g, s)
        result.float32_max_abs = max(result.float32_max_abs, f32_abs)
        result.float32_max_rel_error = max(result.float32_max_rel_error, f32_rel)
    for g, s, r in zip(got_n, src_n, ref):
        c_abs, c_rel = relative_error(g, r)
        result.max_abs, result.max_rel_error = max(result.max_abs, c_abs), max(result.max_rel_error, c_rel)
        result.source_rel = max(result.source_rel, relative_error(s, r)[1])
    return result


def float64_forward(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], str]:
    """The model's outputs on ``x`` in float64 and how they were computed. A captured graph runs
    with its constants cast as they are read; a module with each module's own weights cast while
    it runs. A model that uses weights outside the module holding them (``F.conv2d(x,
    self.conv.weight)``) falls back to a float64 copy of the whole model, and one that cannot run
    in float64 at all to float32."""
    if isinstance(model, fx.GraphModule):
        out, _ = run_graph(model, x)
        return flatten_outputs(out), "the captured source graph, constants cast to float64 as read"
    try:
        with float64_weights(model), torch.no_grad():
            return flatten_outputs(model(x.double())), "source model, weights cast to float64 one module at a time"
    except Exception:  # a dtype mismatch: weights read outside their module, or float32 constants
        pass
    try:
        double = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            out = flatten_outputs(double(x.double()))
        del double
        return out, "a float64 copy of the source model (it reads weights outside their own modules)"
    except Exception:  # float32 constants made inside forward: no float64 run exists
        with torch.no_grad():
            return flatten_outputs(model(x)), "the source model in float32 (it does not run in float64)"


@contextlib.contextmanager
def float64_weights(model: nn.Module) -> Iterator[None]:
    """Each module's own floating parameters and buffers in float64 while its forward runs, and
    back to the very same float32 values after (float32 -> float64 -> float32 is exact)."""
    held: dict[int, list[Any]] = {}  # id(tensor) -> [tensor, float32 data, modules inside]

    def own(module):
        tensors = [*module._parameters.values(), *module._buffers.values()]
        return [t for t in tensors if t is not None and t.is_floating_point()]

    def enter(module, _args):
        for t in own(module):
            entry = held.get(id(t))
            if entry is None and t.dtype == torch.float32:
                held[id(t)] = [t, t.data, 1]
                t.data = t.data.double()
            elif entry is not None:
                entry[2] += 1

    def leave(module, _args, _out):
        for t in own(module):
            entry = held.get(id(t))
            if entry is not None:
                entry[2] -= 1
                if entry[2] == 0:
                    t.data = entry[1]
                    del held[id(t)]

    handles = []
    for module in model.modules():
        if any(t.dtype == torch.float32 for t in own(module)):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for t, data, _ in held.values():  # a forward that raised left these in float64
            t.data = data
        held.clear()


def check_section(regions: list[RegionCheck], network: NetworkCheck) -> dict:
    """What report.json says was checked, and how it came out."""
    checked = [r for r in regions if r.skipped is None]
    worst = max(checked, key=lambda r: r.max_rel_error, default=None)
    return {
        "what": ("each merged region's float32 layer against its own layers in float64 on a random input of the "
                 f"region's input shape (and, where it is off by more than {EXACT_REL:g}, those layers in float32, for "
                 "what rounding alone costs); the whole "
                 "compact network in float32 against the source in float32 on one seeded batch, and its first "
                 f"{FLOAT64_BATCH} samples at most against the source in float64; `compactify verify` runs the "
                 "full float64 proof"),
        "exact_rule": EXACT_RULE,
        "regions_checked": len(checked),
        "regions_skipped": len(regions) - len(checked),
        "regions_max_rel_error": worst.max_rel_error if worst is not None else None,
        "worst_region": worst.name if worst is not None else None,
        "regions": [r.as_dict() for r in regions],
        "network": {
            "input": f"seeded N(0,1), seed {ERROR_SEED + 1}", "batch": network.batch,
            "float32_vs_float32": {"max_abs": network.float32_max_abs,
                                   "max_rel_error": network.float32_max_rel_error},
            "float64_batch": network.float64_batch, "float64_reference": network.reference,
            "max_abs_error": network.max_abs, "max_rel_error": network.max_rel_error,
            "source_float32_rel_error": network.source_rel,
        },
    }


def reference_float64(model: nn.Module) -> nn.Module | None:
    """A float64 copy of the model, or None when it cannot run in float64 (tests and tools that want
    a float64 twin; the conversion's own check casts weights as it goes)."""
    try:
        return copy.deepcopy(model).double().eval()
    except Exception:  # e.g. a captured graph holding float32 constants
        return None


def measure_error(model: nn.Module, compact: nn.Module, input_shape, batches: int = 1) -> tuple[float, float]:
    """``(max_abs, max_rel_error)`` of ``compact`` (float32) against ``model`` in float64 on ``batches``
    seeded batches of ``input_shape`` (the model's weights cast to float64 one module at a time)."""
    errors = []
    with torch.no_grad():
        for b in range(batches):
            x = example_input(tuple(input_shape), seed=ERROR_SEED + 1 + b)
            ref, _ = float64_forward(model, x)
            errors.append(outputs_relative_error(flatten_outputs(compact(x)), ref))
    return max(a for a, _ in errors), max(r for _, r in errors)


def float64_outputs(model: nn.Module, feeds, input_name: str = "x") -> list:
    """``model`` run in float64 (``float64_forward``) on a feed of numpy arrays, as numpy arrays: the
    reference a target that runs outside PyTorch judges its artifact against."""
    x = torch.from_numpy(np.asarray(feeds[input_name]))
    with torch.no_grad():
        out, _ = float64_forward(model, x)
    return [o.numpy() for o in out]
