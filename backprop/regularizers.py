"""Weight regularizers, Keras's `keras.regularizers`: a penalty added to the cost for a
parameter array, and its gradient, written against the backend.

    L1(l1)        penalty l1 * sum |W|          gradient l1 * sign(W)
    L2(l2)        penalty l2 * sum W^2          gradient 2 * l2 * W
    L1L2(l1, l2)  both

`Dense(kernel_regularizer=regularizers.l2(1e-4), bias_regularizer=...)` adds the penalty of
its arrays to the cost (the loss that fit reports includes it, as in Keras) and its gradient
to dW or db. Dense(l2=...) is the shorthand for kernel_regularizer=L2(l2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backends import Array, Backend, get_backend

from .registry import lookup


def _strength(name: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not (ok and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class Regularizer:
    """A penalty on one parameter array: `penalty` (0-d, on the device) and `gradient`."""

    def penalty(self, be: Backend, W: Array) -> Array:
        raise NotImplementedError

    def gradient(self, be: Backend, W: Array) -> Array:
        """d penalty / dW, shape of W. Written with the backend's methods (no operator
        expressions), a training step that uses it is recorded on the CPU."""
        raise NotImplementedError

    def __call__(self, W: Any) -> float:
        """The penalty of a host array W, as a float (Keras's regularizer(x))."""
        be = get_backend("numpy", dtype="float64")
        return float(be.to_numpy(self.penalty(be, be.asarray(np.asarray(W, dtype=np.float64)))))

    def get_config(self) -> dict[str, float]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Regularizer:
        return cls(**config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Regularizer) or type(self) is not type(other):
            return NotImplemented
        return self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.get_config().items()))))


class L1L2(Regularizer):
    """l1 * sum |W| + l2 * sum W^2; gradient l1 * sign(W) + 2 * l2 * W (sign(0) = 0)."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1, self.l2 = _strength("l1", l1), _strength("l2", l2)

    def penalty(self, be, W):
        total = None
        if self.l1:
            total = be.multiply(be.sum(be.abs(W)), self.l1)
        if self.l2:
            square = be.multiply(be.sum(be.square(W)), self.l2)
            total = square if total is None else be.add(total, square)
        return be.sum(be.multiply(W, 0.0)) if total is None else total

    def gradient(self, be, W):
        g = be.multiply(W, 2.0 * self.l2)
        if self.l1:
            g = be.add(g, be.multiply(be.sign(W), self.l1), out=g)
        return g

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    """l1 * sum |W| (Keras's default l1 = 0.01)."""

    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    """l2 * sum W^2 (Keras's default l2 = 0.01)."""

    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


# Keras's lower-case spellings: regularizers.l2(1e-4) is L2(1e-4)
l1 = L1
l2 = L2
l1_l2 = L1L2

REGULARIZERS: dict[str, type[Regularizer]] = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2}


def get(spec: Any) -> Regularizer | None:
    """A regularizer from None, a name ("l1", "l2", "l1_l2": Keras's defaults), a config
    ({"class_name": "L2", "config": {"l2": 1e-4}}, as `serialize` gives) or an object."""
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, dict) and "class_name" in spec:
        cls = lookup(REGULARIZERS, "regularizer", spec["class_name"])
        return cls.from_config(dict(spec.get("config", {})))
    if isinstance(spec, str):
        return lookup(REGULARIZERS, "regularizer", spec)()
    raise TypeError(
        f"a regularizer must be None, a name, a config or a Regularizer such as "
        f"regularizers.l2(1e-4), got {type(spec).__name__}"
    )


def serialize(regularizer: Regularizer | None) -> dict[str, Any] | None:
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


__all__ = ["L1", "L1L2", "L2", "Regularizer", "get", "l1", "l1_l2", "l2", "serialize"]
