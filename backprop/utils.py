"""Keras's utilities that MLP programs use: `from backprop.utils import to_categorical`,
`set_random_seed`."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from .checks import is_integer

# set_random_seed's stream of model seeds (None: models without a seed use fresh entropy)
_model_seeds: np.random.SeedSequence | None = None


def set_random_seed(seed: int) -> None:
    """Make every later model built without `seed=` reproducible (Keras's
    keras.utils.set_random_seed): the n-th such model gets the n-th seed of a stream drawn
    from `seed`, for its initial weights, its Dropout masks and its shuffling. Also seeds
    NumPy's global generator and Python's `random`, as Keras does."""
    global _model_seeds
    if not is_integer(seed) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed))  # noqa: NPY002  (the global generator, which Keras seeds too)
    _model_seeds = np.random.SeedSequence(int(seed))


def next_model_seed() -> int | None:
    """The seed of the next model built without one: None unless set_random_seed was called."""
    if _model_seeds is None:
        return None
    (child,) = _model_seeds.spawn(1)
    return int(child.generate_state(1)[0])


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
