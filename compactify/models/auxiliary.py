"""Auxiliary over-parameterization: training-only heads and branches.

Auxiliary heads (a small classifier on an intermediate feature map, as in deeply-supervised
nets and Inception) and an auxiliary branch (a side network fed by several stages through
1x1 adapters, in the manner of the auxiliary module of Zhuang, Liu et al.) give the compact
trunk extra gradient paths while it trains. They are used only in training:

- ``attach_auxiliary`` registers forward hooks on the tapped modules; a hook stores the
  tapped feature only when the model is in training mode. The model's own ``forward`` is not
  changed, so in eval mode it returns exactly what it returned before, and a graph captured
  in eval mode (torch.export) contains none of the auxiliary parts.
- ``auxiliary_losses(model, target)`` runs the heads/branch on the stored features and returns
  their weighted loss terms.

The structure is a pure function of the kwargs (the resolved ones are kept in
``model.auxiliary.config``), so ``build_model(meta)`` with ``meta["aux"] = config`` rebuilds
the same modules and the state_dict (keys ``auxiliary.*``) loads. Attach after ``expand``:
expansion replaces modules, and a hook on a replaced module would be lost.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from compactify.errors import BadInputError


def _conv_bn_relu(cin: int, cout: int, kernel: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def make_head(shape: Sequence[int], width: int, num_classes: int) -> nn.Sequential:
    """A classifier for a tapped feature of per-sample ``shape`` (C, H, W) or (F,)."""
    if len(shape) == 3:
        return nn.Sequential(*_conv_bn_relu(shape[0], width), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                             nn.Linear(width, num_classes))
    if len(shape) == 1:
        return nn.Sequential(nn.Linear(shape[0], width), nn.ReLU(inplace=True), nn.Linear(width, num_classes))
    raise BadInputError(f"auxiliary head needs a (N, C, H, W) or (N, F) feature, got per-sample shape {list(shape)}")


class AuxiliaryBranch(nn.Module):
    """Adapters from several (C_i, H_i, W_i) features, pooled to the smallest map, summed, classified."""

    def __init__(self, shapes: Sequence[Sequence[int]], width: int, num_classes: int):
        super().__init__()
        for s in shapes:
            if len(s) != 3:
                raise BadInputError(f"auxiliary branch taps must be (N, C, H, W) features, got per-sample shape {list(s)}")
        self.size = (min(s[1] for s in shapes), min(s[2] for s in shapes))
        self.adapters = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s[0], width, 1, bias=False), nn.BatchNorm2d(width)) for s in shapes
        )
        self.body = nn.Sequential(*_conv_bn_relu(width, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                  nn.Linear(width, num_classes))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        total = sum(F.adaptive_avg_pool2d(a(f), self.size) for a, f in zip(self.adapters, features))
        return self.body(F.relu(total))


class AuxiliaryModules(nn.Module):
    """The training-only parts attached to a model, plus the features its hooks captured."""

    def __init__(self, config: dict[str, Any], shapes: dict[str, tuple[int, ...]]):
        super().__init__()
        self.config = config
        width, classes = config["width"], config["num_classes"]
        self.heads = nn.ModuleList(make_head(shapes[t], width, classes) for t in config["heads"])
        self.branch = AuxiliaryBranch([shapes[t] for t in config["branch"]], width, classes) if config["branch"] else None
        self._features: dict[str, torch.Tensor] = {}

    def capture(self, tap: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if self.training and isinstance(output, torch.Tensor):
            self._features[tap] = output

    def losses(self, target: torch.Tensor, criterion: Callable = F.cross_entropy) -> dict[str, torch.Tensor]:
        feats, self._features = self._features, {}
        missing = [t for t in self.config["heads"] + self.config["branch"] if t not in feats]
        if missing:
            raise RuntimeError(f"auxiliary taps {missing} were not captured: run a training-mode forward first")
        terms = {}
        for tap, head in zip(self.config["heads"], self.heads):
            terms[f"aux_head:{tap}"] = self.config["head_weight"] * criterion(head(feats[tap]), target)
        if self.branch is not None:
            logits = self.branch([feats[t] for t in self.config["branch"]])
            terms["aux_branch"] = self.config["branch_weight"] * criterion(logits, target)
        return terms

    def train(self, mode: bool = True) -> "AuxiliaryModules":
        if not mode:
            self._features = {}  # drop graph-holding tensors; they also block deepcopy
        return super().train(mode)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("auxiliary modules are not called directly; use auxiliary_losses(model, target)")


def _trace_shapes(model: nn.Module, input_shape: Sequence[int]) -> tuple[dict[str, tuple[int, ...]], list[str], Any]:
    """Per-sample output shape of every named module (first call) in call order, and the output."""
    shapes: dict[str, tuple[int, ...]] = {}
    order: list[str] = []
    handles = []

    def record(name: str, module: nn.Module, inputs: Any, output: Any) -> None:
        if name not in shapes and isinstance(output, torch.Tensor):
            shapes[name] = tuple(output.shape[1:])
            order.append(name)

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(functools.partial(record, name)))
    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(tuple(int(s) for s in input_shape), device=device, dtype=dtype))
    except Exception as exc:
        raise BadInputError(f"cannot run the model on input shape {list(input_shape)} to place auxiliary parts: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return shapes, order, out


def stage_ends(model: nn.Module, shapes: dict[str, tuple[int, ...]], order: list[str]) -> list[str]:
    """The last module of each run of same-shaped 4-D features along the trunk.

    The trunk is the top-level children, with top-level nn.Sequential containers opened one
    level (except ExpandNets chains, which stand for one layer); only modules with parameters
    count. These are the natural places for taps: the ends of stages, after BatchNorm where
    there is one.
    """
    chains = set(getattr(model, "compactify_expansion", {}).get("layers", ()))
    candidates = set()
    for name, child in model.named_children():
        if name == "auxiliary":
            continue
        if isinstance(child, nn.Sequential) and len(child) > 1 and name not in chains:
            candidates.update(f"{name}.{sub}" for sub, _ in child.named_children())
        else:
            candidates.add(name)
    trunk = [n for n in order if n in candidates and len(shapes[n]) == 3
             and any(True for _ in model.get_submodule(n).parameters())]
    ends = [n for i, n in enumerate(trunk) if i + 1 == len(trunk) or shapes[trunk[i + 1]] != shapes[n]]
    return ends


def attach_auxiliary(model: nn.Module, heads: Sequence[str] | str | None = "auto",
                     branch: Sequence[str] | str | None = None, width: int = 64,
                     num_classes: int | None = None, head_weight: float = 0.3,
                     branch_weight: float = 0.3, input_shape: Sequence[int] | None = None) -> nn.Module:
    """Add training-only auxiliary heads and/or an auxiliary branch to ``model`` (in place).

    ``heads``: module names whose outputs get a classifier head, or ``"auto"`` (the end of the
    middle stage). ``branch``: module names whose outputs feed one auxiliary branch, or
    ``"auto"`` (the last three stage ends), or None. ``width``: channels of the auxiliary
    layers. ``num_classes``: default, the model's output size. ``input_shape``: (N, C, H, W),
    needed to size the auxiliary layers by one eval-mode forward on zeros.
    Returns ``model``; its resolved kwargs are in ``model.auxiliary.config``.
    """
    if hasattr(model, "auxiliary"):
        raise BadInputError("model already has auxiliary parts attached")
    if input_shape is None or len(input_shape) != 4:
        raise BadInputError(f"attach_auxiliary needs input_shape (N, C, H, W), got {input_shape!r}")
    if int(width) < 1:
        raise BadInputError(f"auxiliary width must be >= 1, got {width}")
    shapes, order, out = _trace_shapes(model, input_shape)
    ends = stage_ends(model, shapes, order)

    def resolve(spec: Sequence[str] | str | None, auto: Callable[[], list[str]], what: str) -> list[str]:
        if spec is None:
            return []
        if isinstance(spec, str):
            if spec != "auto":
                raise BadInputError(f"auxiliary {what} must be a list of module names or 'auto', got {spec!r}")
            names = auto()
            if not names:
                raise BadInputError(f"found no stage of 4-D features in {type(model).__name__} for auxiliary {what}")
            return names
        names = [str(n) for n in spec]
        unknown = [n for n in names if n not in shapes]
        if unknown:
            raise BadInputError(f"auxiliary {what} taps {unknown} are not modules called in the forward of "
                                f"{type(model).__name__}; stage ends are: {', '.join(ends)}")
        return names

    head_taps = resolve(heads, lambda: [ends[len(ends) // 2]] if ends else [], "heads")
    branch_taps = resolve(branch, lambda: ends[-3:], "branch")
    if not head_taps and not branch_taps:
        raise BadInputError("attach_auxiliary needs at least one head or a branch")
    if num_classes is None:
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise BadInputError("cannot infer num_classes from the model output; pass num_classes")
        num_classes = int(out.shape[1])
    config = {
        "heads": head_taps,
        "branch": branch_taps,
        "width": int(width),
        "num_classes": int(num_classes),
        "head_weight": float(head_weight),
        "branch_weight": float(branch_weight),
        "input_shape": [int(s) for s in input_shape],
    }
    param = next(model.parameters(), None)
    aux = AuxiliaryModules(config, shapes)
    if param is not None:
        aux.to(device=param.device, dtype=param.dtype)
    aux.train(model.training)
    model.auxiliary = aux
    for tap in sorted(set(head_taps + branch_taps)):
        # A partial of a bound-method function with the module as an argument: deepcopy of the
        # model maps it onto the copied AuxiliaryModules, so copies capture into themselves.
        model.get_submodule(tap).register_forward_hook(functools.partial(AuxiliaryModules.capture, aux, tap))
    return model


def _aux_hooks(model: nn.Module):
    for module in model.modules():
        for key, hook in list(module._forward_hooks.items()):
            if isinstance(hook, functools.partial) and hook.func is AuxiliaryModules.capture:
                yield module, key


def auxiliary_losses(model: nn.Module, target: torch.Tensor,
                     criterion: Callable = F.cross_entropy) -> dict[str, torch.Tensor]:
    """Weighted loss terms of the auxiliary parts after a training-mode forward ({} if none)."""
    aux = getattr(model, "auxiliary", None)
    if not isinstance(aux, AuxiliaryModules):
        return {}
    return aux.losses(target, criterion)


def detach_auxiliary(model: nn.Module) -> nn.Module:
    """Remove the auxiliary parts and their hooks from ``model`` (in place); returns it."""
    for module, key in _aux_hooks(model):
        del module._forward_hooks[key]
    if isinstance(getattr(model, "auxiliary", None), AuxiliaryModules):
        del model.auxiliary
    return model
