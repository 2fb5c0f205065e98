"""One way to dispatch on a key: a table filled by decorators that refuses a second entry for a key.

Every table of the project (a front-end's ops, the ONNX writer's ops, the artifact targets) is a
``Registry``: a new op or target is one decorated function or class, and registering the same
key twice is a programming error found at import, not a silent override.

    OPS = Registry("fx op")

    @OPS.register(aten.relu.default, aten.relu_.default)
    def _relu(...): ...
"""

from __future__ import annotations

from typing import Callable, Generic, Hashable, Iterator, TypeVar

T = TypeVar("T")


class DuplicateRegistration(ValueError):
    """A key was registered twice in one registry."""


class Registry(Generic[T]):
    def __init__(self, what: str) -> None:
        self.what = what  # names the table in errors: "fx op", "ONNX writer op", "target"
        self._entries: dict[Hashable, T] = {}

    def register(self, *keys: Hashable) -> Callable[[T], T]:
        """Decorator: file the decorated object under each of ``keys``."""
        if not keys:
            raise TypeError(f"register() of a {self.what} needs at least one key")

        def decorate(obj: T) -> T:
            for key in keys:
                self.add(key, obj)
            return obj

        return decorate

    def add(self, key: Hashable, obj: T) -> None:
        if key in self._entries:
            raise DuplicateRegistration(f"{self.what} {key!r} is registered twice: {_name(self._entries[key])} and "
                                        f"{_name(obj)}")
        self._entries[key] = obj

    def get(self, key: Hashable, default: T | None = None) -> T | None:
        return self._entries.get(key, default)

    def __getitem__(self, key: Hashable) -> T:
        try:
            return self._entries[key]
        except KeyError:
            raise KeyError(f"no {self.what} {key!r}; known: {', '.join(map(str, self._entries))}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[Hashable]:
        return list(self._entries)

    def values(self) -> list[T]:
        return list(self._entries.values())

    def items(self) -> list[tuple[Hashable, T]]:
        return list(self._entries.items())


def _name(obj: object) -> str:
    return getattr(obj, "__qualname__", None) or getattr(type(obj), "__qualname__", repr(obj))
