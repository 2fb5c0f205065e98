"""Rank truncation and group-lasso pruning of a contraction plan (``convert --rank RULE``).

Runs between the plan and the rewrite. The layers it works on are every conv or linear
operator of the final plan: each merged region (its composed operator) and each single conv
or linear layer left as it is. For those:

1. Pruning: units whose weights all went to zero (group lasso) output a constant, the bias.
   They are removed, and so are the next layer's matching input channels, where the path
   between the two is one this module can follow: elementwise activations, max pooling,
   adaptive average pooling or a spatial mean, and a ``flatten(1)`` from a conv to a linear
   layer, each with no other user, into a region that is the only reader of that tensor (a
   residual sum inside the next merged region is fine; a concat or a second consumer is
   not). The constant a removed unit would have sent (its bias through the activations) is
   folded into the next layer's bias, which is exact only when that layer pads nothing;
   into a padded layer only units whose constant is zero are removed. Units are found with
   a tolerance of zero: pruning is exact.
2. Ranks: :func:`rank_rules.choose_ranks` over the spectra of the (pruned) operators, in
   every factored form that exists, with the rest of the model as the fixed part of a
   FLOPs budget (``flops:F`` counts from the pruned plan). ``error:E`` measures each
   candidate cut on calibration inputs: the plan with the truncated operators
   (:func:`lowrank.truncate`) against the plan before ``--rank``, in float64.
3. ``cost="latency"``: each layer the rule factors is timed dense against factored with
   torch on the CPU, interleaved, and stays dense unless the factored form is faster.
4. The chosen factored layers become two layers (:func:`lowrank.factor`) in the decision's
   module, with kind ``"factored"``; the report rows give per layer the ranks, the energy
   kept, parameters and FLOPs, the form and the reason, and for the whole model the output
   error against the plan without ``--rank`` and, when an ``evaluate`` callable is given
   (models trained on the built-in digits), the accuracy before and after.

The models compared are built by rewriting deep copies of the captured graph with the same
:func:`rewrite.rewrite` that produces the final one.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import fx, nn

from compactify.converter.lowrank import factor as L
from compactify.converter.engine.algebra import AffineConv
from compactify.converter.engine.plan import Decision
from compactify.converter.frontends.fx.profile import GraphProfile
from compactify.converter.lowrank.rank_rules import RankChoice, RankRule, choose_ranks, parse_rank_rule
from compactify.converter.engine.regions import Region
from compactify.errors import BadInputError, NotContractibleError

COSTS = ("flops", "latency")
CALIBRATIONS = ("random", "digits")
CALIBRATION_SAMPLES = 128
CALIBRATION_SEED = 1234
# Time per layer and form when --cost latency compares them (interleaved, after a warm-up).
LATENCY_SECONDS = 0.3
LATENCY_WARMUP = 5

aten = torch.ops.aten

# Elementwise ops a removed unit's constant goes through (evaluated on the constant).
_ACTIVATIONS = {
    aten.relu.default, aten.relu_.default, aten.leaky_relu.default, aten.leaky_relu_.default,
    aten.gelu.default, aten.silu.default, aten.silu_.default, aten.sigmoid.default, aten.tanh.default,
    aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default, aten.elu.default,
    aten.hardswish.default, aten.hardswish_.default, aten.hardsigmoid.default, aten.mish.default,
    aten.clone.default, aten.alias.default, aten.contiguous.default, aten.detach.default,
    aten.dropout.default,
}
# Per-channel ops that map a constant channel to the same constant.
_CONSTANT_KEEPING = {
    aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default,
    aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default, aten.adaptive_avg_pool3d.default,
}
PRUNING_LIMITS = (
    "units are removed only along conv/linear -> activations / max-pool / adaptive-avg-pool / "
    "spatial mean / flatten(1) -> conv/linear paths whose tensors have no other reader (a sum "
    "inside the next merged region is fine; a concat, a reshape or a second consumer is not), "
    "and only while neither layer gets more expensive; a removed unit's constant goes into the "
    "next layer's bias only when that layer pads nothing"
)


@dataclass
class RankRequest:
    """What ``--rank`` asks for, with what the converter needs to measure the result."""

    rule: RankRule
    multiple: int = 1
    cost: str = "flops"
    calibration: torch.Tensor | None = None  # inputs on which the output error is measured
    calibration_source: str = "random"
    evaluate: Callable[[nn.Module], float] | None = None  # accuracy of a model, when known
    evaluate_on: str | None = None
    batch: int | None = None  # batch at which --cost latency times the layers
    prune: bool = True


def rank_request(options, source) -> RankRequest | None:
    """The request made by ``ConvertOptions`` (``rank``, ``rank_multiple``, ``cost``,
    ``calibration``) for a loaded ``Source``; None when no rule was given."""
    rule_text = getattr(options, "rank", None)
    multiple = getattr(options, "rank_multiple", 1)
    cost = getattr(options, "cost", "flops")
    calibration = getattr(options, "calibration", None)
    if not rule_text:
        if multiple != 1 or cost != "flops":
            raise BadInputError("--rank-multiple and --cost choose how ranks are cut; add --rank RULE, e.g. --rank energy:0.99")
        return None
    rule = parse_rank_rule(rule_text)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise BadInputError(f"--rank-multiple must be a whole number >= 1, got {multiple!r}")
    if cost not in COSTS:
        raise BadInputError(f"--cost must be flops or latency, got {cost!r}")
    if calibration is not None and calibration not in CALIBRATIONS:
        raise BadInputError(f"calibration must be random or digits, got {calibration!r}")
    shape = tuple(int(s) for s in source.input_shape)
    training = (source.meta or {}).get("training") or {}
    on_digits = isinstance(training, dict) and training.get("dataset") == "digits"
    request = RankRequest(rule, multiple, cost, batch=shape[0])
    data = None
    if on_digits or calibration == "digits":
        from compactify.models.data import load_digits_data

        data = load_digits_data(shape)
    if calibration == "digits" or (calibration is None and on_digits):
        request.calibration = data.x_train[:CALIBRATION_SAMPLES]
        request.calibration_source = f"{len(request.calibration)} digits training images"
    else:
        request.calibration = random_calibration(shape)
        request.calibration_source = f"{CALIBRATION_SAMPLES} seeded N(0,1) inputs"
    if on_digits:
        from compactify.models.train import evaluate

        request.evaluate = lambda model: evaluate(model, data)
        request.evaluate_on = f"digits test split ({len(data.y_test)} images)"
    return request


def random_calibration(input_shape: Sequence[int], samples: int = CALIBRATION_SAMPLES) -> torch.Tensor:
    return torch.randn((samples, *input_shape[1:]), generator=torch.Generator().manual_seed(CALIBRATION_SEED))


# ---------------------------------------------------------------------------------------
# Which decisions are conv/linear layers


@dataclass
class _Layer:
    index: int  # position in the decision list
    decision: Decision
    op: AffineConv  # after pruning
    entry_shape: tuple[int, ...]
    units_removed: list[int] = dataclasses.field(default_factory=list)
    inputs_removed: int = 0
    pruned_reason: str = ""

    @property
    def key(self) -> str:
        return self.decision.region.exit.name  # node names are unique; layer paths need not be

    @property
    def in_spatial(self) -> tuple[int, ...]:
        # conv: [N, C, *S] -> S; linear on [N, *T, C] -> T (the leading token dims)
        return self.entry_shape[2:] if self.op.ndim else self.entry_shape[1:-1]

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The entry shape with as many channels as the (pruned) operator reads."""
        s = list(self.entry_shape)
        s[1 if self.op.ndim else -1] = self.op.in_channels
        return tuple(s)

    @property
    def changed(self) -> bool:
        return bool(self.units_removed or self.inputs_removed)


def _is_layer(d: Decision) -> bool:
    comp = d.composition
    if comp is None or not isinstance(comp.value, AffineConv):
        return False
    kinds = {d.region.steps[n].kind for n in d.region.nodes if n in d.region.steps}
    if not kinds & {"conv", "linear"}:
        return False  # a folded BatchNorm or pad on its own: nothing to factor
    if d.kind == "dense":
        return True
    return d.kind == "keep" and len(d.region.nodes) == 1 and comp.exact


def _layers(decisions: list[Decision], profile: GraphProfile) -> list[_Layer]:
    out = []
    for i, d in enumerate(decisions):
        if not _is_layer(d):
            continue
        shape = profile.shapes.get(d.region.entry)
        if shape is None:
            continue
        out.append(_Layer(i, d, d.composition.value, tuple(int(s) for s in shape)))
    return out


# ---------------------------------------------------------------------------------------
# Building the plan's model with some layers replaced


class _Builder:
    """Rewrites deep copies of the captured graph: the plan's model with chosen modules."""

    def __init__(self, gm: fx.GraphModule, decisions: list[Decision], example: torch.Tensor):
        self.gm, self.decisions, self.example = gm, decisions, example

    def build(self, modules: dict[int, nn.Module | None], dtype: torch.dtype = torch.float32) -> fx.GraphModule:
        from compactify.converter.backends.fx_rewrite import rewrite

        with warnings.catch_warnings():  # copying exported graphs trips torch-internal FutureWarnings
            warnings.simplefilter("ignore", FutureWarning)
            gm = copy.deepcopy(self.gm)
        nodes = {n.name: n for n in gm.graph.nodes}
        shadow = []
        for i, d in enumerate(self.decisions):
            r = d.region
            region = Region(nodes[r.entry.name], nodes[r.exit.name], [nodes[n.name] for n in r.nodes], {}, graph=r.graph)
            module = modules[i] if i in modules else d.module
            if d.kind == "removed":
                kind = "removed"
            elif module is not None:
                kind = "dense"  # whatever it computes, it replaces the region as one module call
                module = copy.deepcopy(module)  # the copies must not share (or re-type) modules
            else:
                kind = "keep"
            shadow.append(dataclasses.replace(d, region=region, kind=kind, module=module))
        compact, _ = rewrite(gm, shadow)
        return compact.to(dtype).eval()


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    from torch.utils import _pytree as pytree

    with torch.no_grad():
        out = model(x)
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _relative_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> tuple[float, float]:
    """(max abs, max over outputs of max|got - ref| / max|ref|)."""
    max_abs = max_rel = 0.0
    for g, r in zip(got, ref):
        diff = float((g.to(torch.float64) - r.to(torch.float64)).abs().max()) if r.numel() else 0.0
        scale = float(r.abs().max()) if r.numel() else 0.0
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf))
    return max_abs, max_rel


def _module(op: AffineConv, dtype: torch.dtype = torch.float32) -> nn.Module:
    return L.as_module(op, dtype=dtype).eval()


def _factored_module(op: AffineConv, rank: int, form: str, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    first, second = L.factor(op, rank, form)
    return nn.Sequential(_module(first, dtype), _module(second, dtype)).eval()


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------
# Pruning


def _single_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _follow(start: fx.Node, family: tuple[int, int] | None, profile: GraphProfile):
    """From a layer's output to the next tensor that is not a pass-through op: returns
    ``(node, family, repeat, fns, path)``, where ``repeat`` is how many features each channel
    became (flatten) and ``fns`` map a channel's constant along the way; None when the path
    holds an op this pass cannot follow or a tensor with another user."""
    node, repeat, fns, path = start, 1, [], []
    while True:
        user = _single_user(node)
        if user is None or user.op != "call_function" or user.args[0] is not node:
            return node, family, repeat, fns, path
        if any(isinstance(a, fx.Node) for a in list(user.args[1:]) + list(user.kwargs.values())):
            return node, family, repeat, fns, path
        target = user.target
        if target in _ACTIVATIONS:
            if target is aten.dropout.default and (len(user.args) < 3 or user.args[2]):
                return node, family, repeat, fns, path
            rest, kwargs = tuple(user.args[1:]), dict(user.kwargs)
            fns.append(lambda t, f=target, a=rest, k=kwargs: f(t, *a, **k))
        elif target in _CONSTANT_KEEPING:
            if family is None or family[1] != 1:
                return node, family, repeat, fns, path
        elif target is aten.mean.dim:
            shape = profile.shapes.get(node)
            dims = user.args[1] if len(user.args) > 1 else None
            keep = user.args[2] if len(user.args) > 2 else user.kwargs.get("keepdim", False)
            if family is None or family[1] != 1 or shape is None or not dims:
                return node, family, repeat, fns, path
            dims = {d % len(shape) for d in dims}
            if dims != set(range(2, len(shape))):
                return node, family, repeat, fns, path
            family = family if keep else (0, 1)
        elif target is aten.flatten.using_ints:
            shape = profile.shapes.get(node)
            start_dim = user.args[1] if len(user.args) > 1 else 0
            end_dim = user.args[2] if len(user.args) > 2 else -1
            if family is None or family[1] != 1 or shape is None or start_dim != 1 or end_dim % len(shape) != len(shape) - 1:
                return node, family, repeat, fns, path
            repeat *= math.prod(shape[2:])
            family = (0, 1)
        else:
            return node, family, repeat, fns, path
        path.append(str(getattr(target, "__name__", target)).split(".")[0])
        node = user


def _prune(layers: list[_Layer], profile: GraphProfile) -> list[dict]:
    """Remove dead units along the paths :func:`_follow` accepts; updates ``layers`` in place."""
    by_entry: dict[fx.Node, _Layer] = {}
    for layer in layers:
        by_entry.setdefault(layer.decision.region.entry, layer)
    notes = []
    for producer in layers:
        p_op = producer.op
        dead = L.zero_units(p_op, 0.0, ignore_bias=True)
        if not bool(dead.any()):
            continue
        found = _follow(producer.decision.region.exit, producer.decision.composition.family, profile)
        end, family, repeat, fns, path = found
        consumer = by_entry.get(end)
        note = {"producer": producer.decision.region.name, "dead_units": int(dead.sum()), "removed": 0,
                "consumer": consumer.decision.region.name if consumer else None, "through": path}
        notes.append(note)
        if consumer is None or consumer is producer:
            note["why_not"] = "the next layer is not reached through ops this pass can follow"
            continue
        region = consumer.decision.region
        if any(u not in region.nodes for u in end.users):
            note["why_not"] = "the next layer's input is also used elsewhere"
            continue
        if consumer.decision.composition.family != family or consumer.op.in_channels != p_op.out_channels * repeat:
            note["why_not"] = "the channel layout between the two layers is not one this pass follows"
            continue
        const = p_op.bias.clone()
        with torch.no_grad():
            for fn in fns:
                const = fn(const)
        const = torch.as_tensor(const, dtype=torch.float64)
        padded = any(b or a for b, a in consumer.op.padding)
        removable = dead & ((const == 0) | (not padded))
        if not bool(removable.any()):
            note["why_not"] = "the dead units send a non-zero constant into a zero-padded layer"
            continue
        keep = ~removable
        try:
            new_p = L.drop_outputs(p_op, keep)
            fill = torch.where(removable, const, torch.zeros_like(const)).repeat_interleave(repeat)
            new_c = L.drop_inputs(consumer.op, keep.repeat_interleave(repeat), fill=fill)
        except NotContractibleError as exc:
            note["why_not"] = str(exc)
            continue
        if (L.dense_flops(new_p, producer.in_spatial) > L.dense_flops(p_op, producer.in_spatial)
                or L.dense_flops(new_c, consumer.in_spatial) > L.dense_flops(consumer.op, consumer.in_spatial)):
            note["why_not"] = "removing them would break the group structure and cost more"
            continue
        units = removable.nonzero().flatten().tolist()
        producer.op, consumer.op = new_p, new_c
        producer.units_removed += units
        consumer.inputs_removed += len(units) * repeat
        note["removed"] = len(units)
        if len(units) < int(dead.sum()):
            note["why_not"] = "the other dead units send a non-zero constant into a zero-padded layer"
    return notes


# ---------------------------------------------------------------------------------------
# Latency


def _faster_factored(dense: nn.Module, factored: nn.Module, shape: tuple[int, ...]) -> tuple[bool, float, float]:
    from compactify.measure.latency import Candidate, compare_latency

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def run(module):
        def fn():
            with torch.no_grad():
                module(x)
        return fn

    result = compare_latency([Candidate("dense", run(dense)), Candidate("factored", run(factored))],
                             warmup=LATENCY_WARMUP, seconds=LATENCY_SECONDS, progress=False)
    return (result.ratios_paired["factored"] < 1.0, result.by_label("dense").p50_ms,
            result.by_label("factored").p50_ms)


# ---------------------------------------------------------------------------------------


def apply_rank_rule(
    gm: fx.GraphModule,
    decisions: list[Decision],
    profile: GraphProfile,
    rule: RankRule | str,
    *,
    multiple: int = 1,
    cost: str = "flops",
    calibration: torch.Tensor | None = None,
    calibration_source: str | None = None,
    evaluate: Callable[[nn.Module], float] | None = None,
    evaluate_on: str | None = None,
    batch: int | None = None,
    prune: bool = True,
) -> dict:
    """Prune and truncate the conv/linear layers of the plan; edits ``decisions`` in place
    (kind ``"factored"`` with the two-layer module, or a pruned single layer as ``"dense"``)
    and returns the report section (JSON-ready)."""
    if isinstance(rule, str):
        rule = parse_rank_rule(rule)
    if cost not in COSTS:
        raise BadInputError(f"--cost must be flops or latency, got {cost!r}")
    example = _example(gm, profile)
    if calibration is None:
        calibration = random_calibration(example.shape)
        calibration_source = f"{len(calibration)} seeded N(0,1) inputs"
    layers = _layers(decisions, profile)
    pruning = _prune(layers, profile) if prune else []
    builder = _Builder(gm, decisions, example)

    def modules(choose: Callable[[_Layer], nn.Module | None]) -> dict[int, nn.Module | None]:
        return {layer.index: choose(layer) for layer in layers}

    # The contracted plan as it was before --rank, in float32 (FLOPs, accuracy) and in float64
    # (the reference of the output error), and after pruning alone.
    untruncated = builder.build(modules(lambda la: la.decision.module))
    pruned = builder.build(modules(lambda la: _module(la.op) if la.changed else la.decision.module))
    dtype, ref_out = _reference(builder, modules, calibration)

    def truncated_error(overrides: dict[int, nn.Module]) -> tuple[float, float]:
        full = modules(lambda la: _module(la.op, dtype))
        full.update(overrides)
        return _relative_error(_outputs(builder.build(full, dtype), calibration.to(dtype)), ref_out)

    batch_total = example.shape[0]
    total_flops = _count(untruncated, example)
    pruned_flops = _count(pruned, example)
    candidates = []
    for layer in layers:
        for form in L.forms_for(layer.op):
            candidates.append(L.candidate(layer.key, layer.op, form, layer.in_spatial))
    dense_per_sample = {c.name: c.dense_flops for c in candidates}
    # The rest of the model. flops:F is then a fraction of the pruned plan: removing units that
    # are exactly zero is free, and the budget is about what truncation trades for accuracy.
    fixed = max(0, round(pruned_flops / batch_total) - sum(dense_per_sample.values()))
    by_key = {layer.key: layer for layer in layers}

    def measure(choices: dict[str, RankChoice]) -> float:
        overrides = {by_key[k].index: _module(L.truncate(by_key[k].op, c.rank_after, c.form), dtype)
                     for k, c in choices.items() if c.factored}
        return truncated_error(overrides)[1]

    choices = choose_ranks(candidates, rule, multiple=multiple, measure=measure, fixed_flops=fixed) if candidates else {}
    timings: dict[str, tuple[float, float]] = {}
    if cost == "latency":
        shape_batch = batch or batch_total
        where = f"batch {shape_batch}, {torch.get_num_threads()} torch threads"
        for key, c in list(choices.items()):
            if not c.factored:
                continue
            layer = by_key[key]
            shape = (shape_batch, *layer.input_shape[1:])
            faster, dense_ms, factored_ms = _faster_factored(
                _module(layer.op), _factored_module(layer.op, c.rank_after, c.form), shape)
            timings[key] = (dense_ms, factored_ms)
            if not faster:
                choices[key] = dataclasses.replace(
                    c, form="dense", rank_after=c.rank_before, energy_kept=1.0, flops_after=c.flops_before,
                    reason=f"{c.reason}; but measured on the CPU the factored form is not faster "
                           f"({factored_ms:.3f} ms vs {dense_ms:.3f} ms dense, {where}): stays dense")
            else:
                choices[key] = dataclasses.replace(
                    c, reason=f"{c.reason}; measured on the CPU: {factored_ms:.3f} ms vs {dense_ms:.3f} ms dense, {where}")

    rows = []
    final64: dict[int, nn.Module] = {}
    for layer in layers:
        d = layer.decision
        choice = choices.get(layer.key)
        before_params = d.params_after
        before_flops = d.flops_after
        prune_text = _prune_text(layer)
        if choice is not None and choice.factored:
            module = _factored_module(layer.op, choice.rank_after, choice.form)
            final64[layer.index] = _factored_module(layer.op, choice.rank_after, choice.form, dtype)
            d.kind = "factored"
            d.exact = d.exact and choice.rank_after >= choice.rank_before
            d.reason = f"{d.reason}; {prune_text}factored: {choice.reason}"
        elif layer.changed:
            module = _module(layer.op)
            d.kind = "dense"
            d.reason = f"{d.reason}; {prune_text.rstrip('; ')}"
        else:
            module = None
        if module is not None:
            d.module = module
            d.params_after = _params(module)
            d.flops_after = L.module_flops(module, layer.input_shape)
        rows.append(_row(layer, choice, before_params, before_flops, timings.get(layer.key)))

    truncated = builder.build(modules(lambda la: la.decision.module))
    max_abs, max_rel = truncated_error(final64)
    flops_after = _count(truncated, example)
    params_before, params_after = _params(untruncated), _params(truncated)
    section = {
        "rule": rule.text,
        "multiple": multiple,
        "cost": cost,
        "layers": rows,
        "pruning": pruning,
        "pruning_limits": PRUNING_LIMITS,
        "params_untruncated": params_before,
        "params_pruned": _params(pruned),
        "params_truncated": params_after,
        "flops_untruncated": total_flops,
        "flops_pruned": pruned_flops,
        "flops_truncated": flops_after,
        "flops_ratio": flops_after / total_flops if total_flops else 1.0,
        "flops_ratio_of_pruned": flops_after / pruned_flops if pruned_flops else 1.0,
        "output_error": {
            "max_abs": max_abs,
            "max_rel": max_rel,
            "inputs": calibration_source or f"{len(calibration)} calibration inputs",
            "dtype": str(dtype).replace("torch.", ""),
            "definition": "the plan with --rank (pruned and truncated) vs the contracted plan without it, on the "
            "same inputs; max_rel = max|truncated - untruncated| / max|untruncated| per output",
        },
    }
    if evaluate is not None:
        section["accuracy_before"] = _accuracy(evaluate, untruncated)
        section["accuracy_after"] = _accuracy(evaluate, truncated)
        section["accuracy_on"] = evaluate_on
    return section


def _example(gm: fx.GraphModule, profile: GraphProfile) -> torch.Tensor:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1 or placeholders[0] not in profile.shapes:
        raise BadInputError("rank truncation needs a model with a single tensor input")
    return torch.zeros(profile.shapes[placeholders[0]])


def _count(model: nn.Module, example: torch.Tensor) -> int:
    from compactify.converter.frontends.fx.profile import count_flops

    return count_flops(model, example)


def _reference(builder: _Builder, modules, calibration):
    """The dtype the plan runs in (float64, or float32 if the graph refuses it), and the
    outputs of the plan before --rank on the calibration inputs."""
    for dtype in (torch.float64, torch.float32):
        model = builder.build(modules(lambda la: _module(la.decision.composition.value, dtype)), dtype)
        try:
            return dtype, _outputs(model, calibration.to(dtype))
        except RuntimeError:
            if dtype == torch.float32:
                raise
    raise AssertionError("unreachable")


def _accuracy(evaluate: Callable[[nn.Module], float], model: nn.Module) -> float | None:
    try:
        return float(evaluate(model))
    except (RuntimeError, IndexError, ValueError):  # not a classifier of this data set's shape
        return None


def _prune_text(layer: _Layer) -> str:
    parts = []
    if layer.units_removed:
        parts.append(f"{len(layer.units_removed)} all-zero units removed")
    if layer.inputs_removed:
        parts.append(f"{layer.inputs_removed} inputs of removed units dropped")
    return "; ".join(parts) + "; " if parts else ""


def _row(layer: _Layer, choice: RankChoice | None, params_before: int, flops_before: int,
         timing: tuple[float, float] | None) -> dict:
    d = layer.decision
    row = {
        "region": d.region.name,
        "layers": d.region.layers,
        "form": choice.form if choice else "dense",
        "rank_before": choice.rank_before if choice else None,
        "full_rank": choice.full_rank if choice else None,
        "rank_after": choice.rank_after if choice else None,
        "energy_kept": choice.energy_kept if choice else 1.0,
        "params_before": params_before,
        "params_after": d.params_after,
        "flops_before": flops_before,
        "flops_after": d.flops_after,
        "units_removed": len(layer.units_removed),
        "inputs_removed": layer.inputs_removed,
        "reason": _prune_text(layer) + (choice.reason if choice else "no rank rule applies"),
    }
    if timing is not None:
        row["latency_dense_ms"], row["latency_factored_ms"] = timing
    return row


def truncate_plan(gm: fx.GraphModule, decisions: list[Decision], profile: GraphProfile, request: RankRequest) -> dict:
    """:func:`apply_rank_rule` with the arguments of a :class:`RankRequest`."""
    return apply_rank_rule(
        gm, decisions, profile, request.rule, multiple=request.multiple, cost=request.cost,
        calibration=request.calibration, calibration_source=request.calibration_source,
        evaluate=request.evaluate, evaluate_on=request.evaluate_on, batch=request.batch, prune=request.prune,
    )


def truncation_markdown(section: dict) -> list[str]:
    """The report.md lines of the truncation section."""
    err = section["output_error"]
    lines = [
        "",
        f"## Rank truncation: `{section['rule']}`"
        + (f", ranks rounded up to multiples of {section['multiple']}" if section["multiple"] != 1 else "")
        + f", cost: {section['cost']}",
        "",
        f"- FLOPs: {section['flops_untruncated']:,} -> {section['flops_truncated']:,} "
        f"({100 * section['flops_ratio']:.1f}% of the plan without --rank"
        + (f"; {section['flops_pruned']:,} after removing all-zero units, which flops: budgets count from)"
           if section["flops_pruned"] != section["flops_untruncated"] else ")"),
        f"- parameters: {section['params_untruncated']:,} -> {section['params_truncated']:,}"
        + (f" ({section['params_pruned']:,} after removing all-zero units)"
           if section["params_pruned"] != section["params_untruncated"] else ""),
        f"- output error vs the plan without --rank ({err['dtype']}, {err['inputs']}): "
        f"max abs {err['max_abs']:.3g}, max rel {err['max_rel']:.3g}",
    ]
    if "accuracy_before" in section:
        def pct(a):
            return "n/a" if a is None else f"{100 * a:.2f}%"

        lines.append(f"- accuracy on the {section['accuracy_on']}: {pct(section['accuracy_before'])} -> "
                     f"{pct(section['accuracy_after'])}")
    lines += [
        "",
        "| region | form | rank | energy kept | params | FLOPs | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in section["layers"]:
        rank = "-" if r["rank_before"] is None else f"{r['rank_before']} -> {r['rank_after']} (of {r['full_rank']})"
        lines.append(
            f"| {r['region']} | {r['form']} | {rank} | {100 * r['energy_kept']:.2f}% | "
            f"{r['params_before']:,} -> {r['params_after']:,} | {r['flops_before']:,} -> {r['flops_after']:,} | "
            f"{r['reason']} |"
        )
    pruned = [p for p in section["pruning"] if p["dead_units"]]
    if pruned:
        lines += ["", "Group-lasso units (all weights zero):", ""]
        for p in pruned:
            text = f"- {p['producer']}: {p['dead_units']} dead, {p['removed']} removed"
            if p["consumer"]:
                text += f" with the matching inputs of {p['consumer']}"
            if p.get("why_not"):
                text += f" ({p['why_not']})"
            lines.append(text)
        lines.append(f"- limits: {section['pruning_limits']}")
    return lines
