"""ExpandNets (Guo, Alvarez, Salzmann, NeurIPS 2020): replace layers by linear chains.

``expand`` works from a model's ``nn.Conv2d`` and ``nn.Linear`` modules alone, so it needs no
per-architecture code: each targeted module is replaced, in a deep copy, by an
``nn.Sequential`` chain with no nonlinearity inside, which computes a function of the same
form (an affine map) with many more parameters.

Chains, for a layer with m input and n output channels, rate r:

- FC  ``Linear(m, n)``  ->  ``Linear(m, r*m)``, ``Linear(r*m, r*n)``, ``Linear(r*n, n)``.
- CL  ``kxk conv(m, n)`` (any kernel with a side > 1)  ->  ``1x1(m, r*m)``, ``kxk(r*m, r*n)``,
  ``1x1(r*n, n)``.
- CK  ``kxk conv(m, n)`` (square, odd k > 3)  ->  L = (k-1)/2 chained 3x3 convs with widths
  ``m -> r*m -> r*n -> ... -> r*n -> n`` (so k=5 gives ``m -> r*m -> n`` and k=7 gives
  ``m -> r*m -> r*n -> n``, the widths of the official 7x7 SmallNet code).

Choices that keep contraction exact and the contracted layer the same shape as the original:

- All padding (and a non-zero padding mode) goes on the FIRST layer of a chain; the others
  have none. Padding the raw input and then applying linear maps is the same as padding
  once before one merged conv, whereas padding an intermediate map would pad with the
  previous layer's bias, not zeros (see design.md, "Padding is the trap").
- CL puts the stride and dilation on the kxk layer. CK puts the dilation on every 3x3 (L
  dilated 3x3s compose to one kxk with that dilation) and the stride on the LAST 3x3: a stride
  on the first one would space the later taps by the stride and contract to a larger kernel
  (2 + 2s(L-1) + 1 instead of k), not to the original layer.
- Every layer of a chain has a bias, as in the official ExpandNets models, whatever the
  original layer had: the chain is a genuine over-parameterization and the converter has to
  carry every bias through the composition.
- Grouped and depthwise convs expand per group: every layer of the chain keeps ``groups``, so
  group j of the chain only ever sees group j's channels (r*m and r*n stay divisible by g).
- Unlike the official SmallNet code, the first layer's input side is expanded too
  (``3 -> 12`` rather than ``3 -> 3``), and FC expands every Linear, the classifier included,
  so that ``fc`` applies to nets whose only Linear is the classifier; pass ``layers`` to
  restrict either.

The expanded model carries ``compactify_expansion = {"mode", "rate", "layers", "skipped"}``:
the names of the replaced modules and, for targeted modules left alone, why.
"""

from __future__ import annotations

import copy
import fnmatch
from typing import Iterable

from torch import nn

from compactify.errors import BadInputError

KINDS = ("fc", "cl", "ck")
_MODES = {"fc", "cl", "ck", "cl+fc", "ck+fc"}
_WHAT = {
    "fc": "an nn.Linear",
    "cl": "an nn.Conv2d with a kernel side larger than 1",
    "ck": "an nn.Conv2d with an odd square kernel larger than 3",
}


def normalize_mode(mode: str) -> str:
    """Canonical spelling of an expansion mode: ``fc``, ``cl``, ``ck``, ``cl+fc`` or ``ck+fc``."""
    parts = [p.strip() for p in str(mode).lower().split("+")]
    # conv kind first, fc last: "fc+ck" and "ck+fc" are the same mode
    canonical = "+".join(sorted(parts, key=lambda p: (p == "fc", p)))
    if len(set(parts)) != len(parts) or canonical not in _MODES:
        raise BadInputError(f"unknown expansion mode {mode!r}; use one of: {', '.join(sorted(_MODES))}")
    return canonical


def _conv_padding(conv: nn.Conv2d) -> tuple[tuple[int, int] | None, str | None]:
    """Numeric (ph, pw) padding of a conv, or (None, reason) when it has no symmetric form."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0), None
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            return None, "padding='same' is asymmetric for this kernel/dilation"
        return (total[0] // 2, total[1] // 2), None
    return (int(conv.padding[0]), int(conv.padding[1])), None


def _ineligible(module: nn.Module, kind: str) -> str | None:
    """Why ``module`` (already of the kind's type) cannot be expanded; None when it can."""
    if kind == "fc":
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            return "lazy module is not initialized"
        return None
    conv: nn.Conv2d = module  # type: ignore[assignment]
    if isinstance(conv, nn.modules.lazy.LazyModuleMixin):
        return "lazy module is not initialized"
    kh, kw = conv.kernel_size
    _, reason = _conv_padding(conv)
    if kind == "cl":
        if kh == 1 and kw == 1:
            return "1x1 kernel"
    else:
        if kh != kw:
            return f"{kh}x{kw} kernel is not square"
        if kh <= 3:
            return f"{kh}x{kw} kernel is not larger than 3"
        if kh % 2 == 0:
            return f"{kh}x{kw} kernel is even and cannot be built from 3x3 convs"
    return reason


def _targets(model: nn.Module, kind: str) -> list[tuple[str, nn.Module]]:
    """Modules of the type a kind expands, first name of each, in registration order."""
    cls = nn.Linear if kind == "fc" else nn.Conv2d
    return [(name, m) for name, m in model.named_modules() if isinstance(m, cls) and name]


def expandable_layers(model: nn.Module, kind: str) -> list[str]:
    """Names of the modules of ``model`` that expansion kind ``kind`` (fc, cl, ck) would replace."""
    return [name for name, m in _targets(model, kind) if _ineligible(m, kind) is None]


def _factory(module: nn.Module) -> dict:
    return {"device": module.weight.device, "dtype": module.weight.dtype}


def fc_chain(linear: nn.Linear, rate: int) -> nn.Sequential:
    m, n = linear.in_features, linear.out_features
    fk = _factory(linear)
    return nn.Sequential(nn.Linear(m, rate * m, **fk), nn.Linear(rate * m, rate * n, **fk), nn.Linear(rate * n, n, **fk))


def cl_chain(conv: nn.Conv2d, rate: int) -> nn.Sequential:
    m, n, g = conv.in_channels, conv.out_channels, conv.groups
    padding, _ = _conv_padding(conv)
    fk = _factory(conv)
    return nn.Sequential(
        nn.Conv2d(m, rate * m, 1, padding=padding, padding_mode=conv.padding_mode, groups=g, **fk),
        nn.Conv2d(rate * m, rate * n, conv.kernel_size, stride=conv.stride, dilation=conv.dilation, groups=g, **fk),
        nn.Conv2d(rate * n, n, 1, groups=g, **fk),
    )


def ck_chain(conv: nn.Conv2d, rate: int) -> nn.Sequential:
    m, n, g = conv.in_channels, conv.out_channels, conv.groups
    k = conv.kernel_size[0]
    depth = (k - 1) // 2
    widths = [m, rate * m] + [rate * n] * (depth - 2) + [n]
    padding, _ = _conv_padding(conv)
    fk = _factory(conv)
    layers = []
    for i in range(depth):
        first, last = i == 0, i == depth - 1
        layers.append(nn.Conv2d(
            widths[i], widths[i + 1], 3,
            stride=conv.stride if last else 1,
            padding=padding if first else 0,
            padding_mode=conv.padding_mode if first else "zeros",
            dilation=conv.dilation,
            groups=g,
            **fk,
        ))
    return nn.Sequential(*layers)


_CHAINS = {"fc": fc_chain, "cl": cl_chain, "ck": ck_chain}


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _select(names: Iterable[str], patterns: list[str] | None) -> set[str]:
    names = list(names)
    if patterns is None:
        return set(names)
    return {n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def expand(model: nn.Module, mode: str, rate: int = 4, layers: list[str] | None = None) -> nn.Module:
    """A deep copy of ``model`` with its layers replaced by ExpandNets chains.

    ``mode``: fc, cl, ck, cl+fc or ck+fc. ``rate``: the expansion rate r (integer >= 1).
    ``layers``: module names or shell patterns to expand (default: every layer the mode
    applies to); each must match a layer the mode can expand. The new layers are freshly
    initialized; the original model is not modified.
    """
    mode = normalize_mode(mode)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise BadInputError(f"expansion rate must be an integer >= 1, got {rate!r}")
    if layers is not None:
        if isinstance(layers, str) or not all(isinstance(p, str) for p in layers):
            raise BadInputError(f"layers must be a list of module names, got {layers!r}")
        layers = list(layers)
    kinds = mode.split("+")
    out = copy.deepcopy(model)
    label = type(model).__name__

    targets = {kind: _targets(out, kind) for kind in kinds}
    if layers is not None:
        candidates = sorted({n for kind in kinds for n, _ in targets[kind]})
        unmatched = [p for p in layers if not any(fnmatch.fnmatchcase(n, p) for n in candidates)]
        if unmatched:
            raise BadInputError(
                f"layers {unmatched} match no layer that mode {mode!r} expands in {label}; "
                f"candidates: {', '.join(candidates)}"
            )

    chosen: dict[str, tuple[str, nn.Module]] = {}
    skipped: dict[str, str] = {}
    for kind in kinds:
        picked = _select((n for n, _ in targets[kind]), layers)
        eligible = []
        for name, module in targets[kind]:
            if name not in picked:
                continue
            reason = _ineligible(module, kind)
            if reason is None:
                eligible.append((name, module))
            else:
                skipped[name] = reason
        if not eligible:
            reasons = sorted({r for n, r in skipped.items() if n in picked})
            why = "; ".join(reasons[:4]) + ("; ..." if len(reasons) > 4 else "")
            scope = f" among layers {layers}" if layers is not None else ""
            raise BadInputError(
                f"expansion mode {kind!r} does not apply to {label}{scope}: it needs {_WHAT[kind]}"
                + (f" ({why})" if why else "")
            )
        for name, module in eligible:
            chosen[name] = (kind, module)

    # A module registered under several names (called at several sites) is one layer: replace
    # every reference with the same chain so the sharing survives.
    chains: dict[int, nn.Module] = {}
    for name, (kind, module) in chosen.items():
        chains[id(module)] = _CHAINS[kind](module, rate)
    for name, module in list(out.named_modules(remove_duplicate=False)):
        if name and id(module) in chains:
            _set_module(out, name, chains[id(module)])

    out.compactify_expansion = {
        "mode": mode,
        "rate": rate,
        "layers": list(chosen),
        "skipped": skipped,
    }
    return out
