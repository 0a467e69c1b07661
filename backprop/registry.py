"""Look-up by name in the tables of activations, losses, optimizers, initializers, metrics."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def lookup(table: Mapping[str, T], kind: str, name: Any) -> T:
    """table[name.lower()], or a ValueError naming the kind, the name and the valid names."""
    key = name.lower() if isinstance(name, str) else name
    if not isinstance(key, str) or key not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid names are {', '.join(sorted(table))}")
    return table[key]
