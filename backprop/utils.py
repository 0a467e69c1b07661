"""Keras's utilities that MLP programs use: `from backprop.utils import to_categorical`,
`set_random_seed`."""

from __future__ import annotations

import numbers
import random
from typing import Any

import numpy as np

from .initializers import set_default_seed


def set_random_seed(seed: int) -> None:
    """Seed everything a program draws from, as Keras's set_random_seed does: Python's
    `random`, NumPy's global generator, and this library's default seed (what models built
    without seed= draw their weights, Dropout seeds and shuffling from)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)  # noqa: NPY002  (seeding the global generator is the job)
    set_default_seed(int(seed))


def to_categorical(y: Any, num_classes: int | None = None, dtype: Any = "float32") -> np.ndarray:
    """Integer class labels -> one-hot rows, on the host (Keras's to_categorical): shape
    (*y.shape, num_classes), num_classes = max(y) + 1 when not given."""
    labels = np.asarray(y)
    if labels.ndim >= 1 and labels.shape[-1] == 1 and labels.ndim > 1:
        labels = labels[..., 0]
    if labels.size and not np.all(labels == np.round(labels)):
        raise ValueError("y must hold integer class labels")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"y holds a negative label: {labels.min()}")
    n = int(labels.max()) + 1 if num_classes is None and labels.size else num_classes
    if n is None or n < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    if labels.size and labels.max() >= n:
        raise ValueError(f"y holds label {labels.max()}, outside [0, {n - 1}] for num_classes={n}")
    return np.eye(n, dtype=dtype)[labels]


__all__ = ["set_random_seed", "to_categorical"]
