"""A registry of compact architectures in the manner of timm.

``@register_model`` records a factory under its function name; ``create_model`` builds one by
name (or by an expanded name ``BASE-MODE`` such as ``smallnet7-ck+fc``); ``build_model``
rebuilds exactly the architecture a checkpoint was saved from, using the metadata keys of
the checkpoint contract (arch, arch_kwargs, expand, rate, layers, aux, input_shape).
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from compactify.errors import BadInputError, first_line
from compactify.models.auxiliary import attach_auxiliary
from compactify.models.expand import expand, expandable_layers, normalize_mode
from compactify.models.torchvision_ops import declare_missing_torchvision_ops

# Canonical spellings of the expansion modes (see compactify.models.expand).
MODES = ("fc", "cl", "ck", "cl+fc", "ck+fc")


@dataclass(frozen=True)
class ModelEntry:
    """What the registry knows about one architecture."""

    name: str
    factory: Callable[..., nn.Module]
    default_kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # Arguments `compactify train` uses for the built-in digits data (10 classes, a small input).
    train_kwargs: dict[str, Any] = field(default_factory=lambda: {"num_classes": 10, "input_size": 32})

    def input_shape(self, **kwargs: Any) -> tuple[int, int, int, int]:
        """The (N, C, H, W) input the model built with ``kwargs`` expects, batch 1."""
        kw = {**self.default_kwargs, **kwargs}
        size = kw.get("input_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (1, int(kw.get("in_chans", 3)), int(h), int(w))

    @property
    def default_input_shape(self) -> tuple[int, int, int, int]:
        return self.input_shape()


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   description: str | None = None, train_kwargs: dict[str, Any] | None = None):
    """Register a model factory under ``name`` (default: the function's name).

    Usable bare (``@register_model``) or with options (``@register_model(name="x")``).
    The factory's keyword defaults become the entry's default kwargs; every factory is
    expected to take ``num_classes``, ``in_chans`` and ``input_size``. ``train_kwargs`` are
    the arguments used when training on the built-in digits data (default: 10 classes, 32x32).
    """

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = (name or factory.__name__).lower()
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        defaults = {
            p.name: p.default
            for p in inspect.signature(factory).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        text = description
        if text is None:
            doc = (inspect.getdoc(factory) or "").strip()
            text = doc.splitlines()[0] if doc else ""
        train = {"num_classes": 10, "input_size": 32, **(train_kwargs or {})}
        _REGISTRY[key] = ModelEntry(key, factory, defaults, text, train)
        return factory

    if fn is not None:
        return decorate(fn)
    return decorate


def _ensure_builtin() -> None:
    # The architectures register themselves on import; importing here keeps
    # ``from compactify.models.registry import create_model`` self-sufficient.
    importlib.import_module("compactify.models.architectures")


def list_models(pattern: str = "*", expanded: bool = False) -> list[str]:
    """Registered names matching the shell-style ``pattern``, sorted.

    With ``expanded=True`` the expanded variants that apply to each model at its default
    size (``smallnet7-cl``, ...) are listed too, and so they are for a pattern with a "-",
    which names them (``repvgg-cl``, ``*-ck``); finding them builds each model on the meta
    device, so it allocates no weights.
    """
    _ensure_builtin()
    names = sorted(_REGISTRY)
    if expanded or "-" in pattern:
        names = sorted(names + [f"{n}-{m}" for n in names for m in applicable_modes(n)])
    pat = pattern.lower()
    return [n for n in names if fnmatch.fnmatchcase(n, pat)]


def _unknown(name: str) -> BadInputError:
    candidates = sorted(_REGISTRY) + [f"{n}-{m}" for n in _REGISTRY for m in MODES]
    close = difflib.get_close_matches(name.lower(), candidates, n=4, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return BadInputError(
        f"unknown model {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))}; "
        f"`compactify models` lists them)"
    )


def split_name(name: str) -> tuple[str, str | None]:
    """``"smallnet7-ck+fc"`` -> ``("smallnet7", "ck+fc")``; a plain name -> ``(name, None)``.

    Raises BadInputError for names that are neither registered nor ``BASE-MODE``.
    """
    _ensure_builtin()
    key = name.strip().lower()
    if key in _REGISTRY:
        return key, None
    base, sep, mode = key.rpartition("-")
    if sep and base in _REGISTRY:
        return base, normalize_mode(mode)
    raise _unknown(name)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of a base or expanded name (expanded names give their base's entry)."""
    base, _ = split_name(name)
    return _REGISTRY[base]


def _check_kwargs(entry: ModelEntry, kwargs: dict[str, Any]) -> None:
    params = inspect.signature(entry.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params]
    if unknown and not takes_any:
        raise BadInputError(
            f"{entry.name} does not take {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(k for k in params)}"
        )


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model, or an expanded one for ``BASE-MODE`` names.

    For expanded names, ``rate`` (default 4) and ``layers`` (default: every applicable
    layer) are taken out of ``kwargs`` and passed to :func:`compactify.models.expand.expand`;
    the rest go to the base factory.
    """
    base, mode = split_name(name)
    entry = _REGISTRY[base]
    if mode is None and ("rate" in kwargs or "layers" in kwargs):
        raise BadInputError(f"{name!r} is not an expanded name; rate/layers need BASE-MODE, e.g. {base}-cl")
    rate = kwargs.pop("rate", 4)
    layers = kwargs.pop("layers", None)
    _check_kwargs(entry, kwargs)
    model = _call_factory(entry.factory, base, kwargs)
    if mode is not None:
        model = expand(model, mode, rate=rate, layers=layers)
    return model


def applicable_modes(name: str, **kwargs: Any) -> list[str]:
    """Expansion modes that apply to a registered model, found on the meta device."""
    base, _ = split_name(name)
    entry = _REGISTRY[base]
    _check_kwargs(entry, kwargs)
    with torch.device("meta"):
        model = entry.factory(**kwargs)
    found = {kind: bool(expandable_layers(model, kind)) for kind in ("fc", "cl", "ck")}
    return [m for m in MODES if all(found[part] for part in m.split("+"))]


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise BadInputError(f"arch {spec!r} is neither a registered model nor 'package.module:factory'")
    # timm (and any module importing torchvision) must import beside the registry's CUDA torchvision
    declare_missing_torchvision_ops()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure is the user's module (or what it imports), not ours
        raise BadInputError(f"cannot import {module_name!r} for arch {spec!r}: {type(exc).__name__}: "
                            f"{first_line(exc)}; {_import_hint(module_name, exc)}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BadInputError(f"module {module_name!r} has no attribute {attr!r} (arch {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BadInputError(f"arch {spec!r} is not callable")
    return obj


def _import_hint(module_name: str, exc: Exception) -> str:
    """Where to look: only a module that is not found at all is a matter of the path."""
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    if missing and (module_name == missing or module_name.startswith(f"{missing}.")):
        return "run from the folder that holds it or put that folder on PYTHONPATH"
    if missing:
        return f"it imports {missing!r}, which is not installed here"
    return "that module (or a package it imports) raised this while being imported"


def _call_factory(factory: Callable[..., nn.Module], arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build the model; whatever the factory raises comes from its arguments (or the user's own code)."""
    try:
        return factory(**kwargs)
    except BadInputError:
        raise
    except Exception as exc:
        given = f" with arch_kwargs {json.dumps(kwargs, default=repr)}" if kwargs else ""
        raise BadInputError(f"building {arch}{given} failed: {type(exc).__name__}: {first_line(exc)}; "
                            "check --arch-kwargs (their names, types and values)") from exc


def build_model(meta: dict[str, Any]) -> nn.Module:
    """Rebuild the exact architecture a checkpoint was saved from.

    ``meta`` uses the checkpoint contract's keys: ``arch`` (a registered base name, an
    expanded name, or ``package.module:factory``), ``arch_kwargs``, ``expand`` (mode or
    None), ``rate``, ``layers``, ``aux`` (kwargs of ``attach_auxiliary``) and
    ``input_shape``. The weights are freshly initialized; load the state_dict after.
    """
    if not isinstance(meta, dict) or not meta.get("arch"):
        raise BadInputError("checkpoint metadata has no 'arch'; pass --arch NAME or --arch package.module:factory")
    arch = str(meta["arch"])
    kwargs = meta.get("arch_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise BadInputError(f"arch_kwargs must be a JSON object, got {type(kwargs).__name__}")
    mode = meta.get("expand")
    rate = meta.get("rate", 4) if meta.get("rate") is not None else 4
    layers = meta.get("layers")

    if ":" in arch:
        model = _call_factory(_import_factory(arch), arch, kwargs)
        if not isinstance(model, nn.Module):
            raise BadInputError(f"{arch} returned {type(model).__name__}, not a torch.nn.Module")
    else:
        base, name_mode = split_name(arch)
        if name_mode is not None and mode is not None and name_mode != mode:
            raise BadInputError(f"arch {arch!r} says mode {name_mode} but metadata says expand={mode!r}")
        mode = mode or name_mode
        _check_kwargs(_REGISTRY[base], kwargs)
        model = _call_factory(_REGISTRY[base].factory, base, kwargs)

    if mode:
        model = expand(model, mode, rate=int(rate), layers=layers)
    aux = meta.get("aux")
    if aux:
        aux_kwargs = dict(aux)
        if "input_shape" not in aux_kwargs and meta.get("input_shape"):
            aux_kwargs["input_shape"] = meta["input_shape"]
        attach_auxiliary(model, **aux_kwargs)
    return model


def default_input_shape(meta_or_name: dict[str, Any] | str) -> tuple[int, int, int, int] | None:
    """Input shape from checkpoint metadata, else from the registry entry; None if unknown."""
    if isinstance(meta_or_name, dict):
        shape = meta_or_name.get("input_shape")
        if shape:
            return tuple(int(s) for s in shape)  # type: ignore[return-value]
        arch = str(meta_or_name.get("arch") or "")
        if not arch or ":" in arch:
            return None
        return model_entry(arch).input_shape(**(meta_or_name.get("arch_kwargs") or {}))
    return model_entry(meta_or_name).default_input_shape
