"""Look-up by name in the tables of activations, losses, optimizers, initializers, metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def lookup(table: Mapping[str, T], kind: str, name: Any) -> T:
    """table[name.lower()] (a class-style name, "CategoricalCrossentropy" or "LeakyReLU", is
    also found, as its snake-case key), or a ValueError naming the kind, the name and the
    valid names."""
    key = resolve(table, name)
    if key is not None:
        return table[key]
    raise ValueError(f"unknown {kind} {name!r}; valid names are {', '.join(sorted(table))}")


def resolve(table: Mapping[str, Any], name: Any) -> str | None:
    """The key of `table` that `name` spells: itself in lower case, or the one key equal to
    it once underscores are dropped ("LeakyReLU" -> "leaky_relu"); None when there is none."""
    if not isinstance(name, str):
        return None
    if name.lower() in table:
        return name.lower()
    compact = name.replace("_", "").lower()
    matches = [key for key in table if key.replace("_", "") == compact]
    return matches[0] if len(matches) == 1 else None
