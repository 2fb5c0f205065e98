"""Names a back-end gives what it adds to a graph: the base name, or the first free ``base_N``."""

from __future__ import annotations


def fresh_name(base: str, taken: set[str]) -> str:
    """A name not in ``taken``, which it then joins."""
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name
