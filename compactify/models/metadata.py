"""The checkpoint metadata schema: one dataclass that expand, train, the demo and the loader share.

A checkpoint written by compactify carries, beside its weights, what rebuilds the network:

- ``arch``: a registered name (``smallnet7``, ``smallnet7-cl``) or ``package.module:factory``;
- ``arch_kwargs``: keyword arguments of the factory (a JSON object);
- ``expand``, ``rate``, ``layers``: the ExpandNets expansion (mode, rate >= 1, layer names);
- ``aux``: keyword arguments of ``attach_auxiliary`` (training-only heads), or None;
- ``input_shape``: the (N, C, H, W) input, positive integers;
- ``expanded_layers``, ``seed``, ``training``: what was done, for the record.

Keys other tools added are kept as they are (``extra``). ``CheckpointMeta.from_dict`` checks every
field and raises one BadInputError that names the field, its value and what it must be.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from compactify.errors import BadInputError
from compactify.models.expand import normalize_mode

# The extra file in a .pt2 archive that carries compactify's metadata (source, input shape, version):
# written by the pt2 target, read by the checkpoint loader.
PT2_META_FILE = "compactify.json"
_FIELDS = ("arch", "arch_kwargs", "expand", "rate", "layers", "aux", "input_shape", "expanded_layers", "seed",
           "training")


def check_shape(value: Any, what: str) -> list[int]:
    """A shape: a list (or tuple) of at least two positive integers."""
    if (not isinstance(value, (list, tuple)) or len(value) < 2
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in value)):
        raise BadInputError(f"{what} {value!r} is not a shape: it must be a list of positive integers such as "
                            "[1, 3, 32, 32] (N, C, H, W)")
    return [int(d) for d in value]


@dataclasses.dataclass
class CheckpointMeta:
    arch: str | None = None
    arch_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    expand: str | None = None
    rate: int | None = None
    layers: list[str] | None = None
    aux: dict[str, Any] | None = None
    input_shape: list[int] | None = None
    expanded_layers: list[str] | None = None
    seed: int | None = None
    training: dict[str, Any] | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    where: str = dataclasses.field(default="checkpoint metadata", repr=False, compare=False)
    given: tuple[str, ...] | None = dataclasses.field(default=None, repr=False, compare=False)  # None: every field

    def __post_init__(self) -> None:
        self.validate()

    def _bad(self, name: str, value: Any, must: str) -> BadInputError:
        return BadInputError(f"{self.where}: {name} {value!r} is not valid: it must be {must}")

    def validate(self) -> None:
        if self.arch is not None and (not isinstance(self.arch, str) or not self.arch.strip()):
            raise self._bad("arch", self.arch, "a model name or package.module:factory")
        if self.arch_kwargs is None:
            self.arch_kwargs = {}
        if not isinstance(self.arch_kwargs, dict) or not all(isinstance(k, str) for k in self.arch_kwargs):
            raise self._bad("arch_kwargs", self.arch_kwargs, "a JSON object of keyword arguments")
        if self.expand is not None:
            if not isinstance(self.expand, str):
                raise self._bad("expand", self.expand, "an expansion mode: fc, cl, ck, cl+fc or ck+fc")
            try:
                self.expand = normalize_mode(self.expand)
            except BadInputError as exc:
                raise BadInputError(f"{self.where}: {exc}") from None
        if self.rate is not None and (not isinstance(self.rate, int) or isinstance(self.rate, bool) or self.rate < 1):
            raise self._bad("rate", self.rate, "a whole number >= 1")
        for name in ("layers", "expanded_layers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value)):
                raise self._bad(name, value, "a list of layer names")
            if value is not None:
                setattr(self, name, list(value))
        if self.aux is not None and not isinstance(self.aux, dict):
            raise self._bad("aux", self.aux, "a JSON object (the arguments of attach_auxiliary) or null")
        if self.input_shape is not None:
            self.input_shape = check_shape(self.input_shape, f"{self.where}: input_shape")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise self._bad("seed", self.seed, "a whole number")
        if self.training is not None and not isinstance(self.training, dict):
            raise self._bad("training", self.training, "a JSON object")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "checkpoint metadata") -> "CheckpointMeta":
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise BadInputError(f"{where} is a {type(data).__name__}, not a JSON object")
        known = {k: data[k] for k in _FIELDS if k in data}
        extra = {k: v for k, v in data.items() if k not in _FIELDS}
        return cls(**known, extra=extra, where=where, given=tuple(known))

    def to_dict(self) -> dict[str, Any]:
        """The stored form: every field (or, when read with ``from_dict``, the fields the data had), then ``extra``."""
        out = {name: getattr(self, name) for name in (_FIELDS if self.given is None else self.given)}
        out.update(self.extra)
        return out


def validate_meta(data: Mapping[str, Any] | None, where: str = "checkpoint metadata") -> dict[str, Any]:
    """``data`` checked against the schema, as a plain dict (what the rest of the code reads)."""
    if not data:
        return {}
    return CheckpointMeta.from_dict(data, where).to_dict()
