"""Weight initializers, drawn on the host from a seeded NumPy generator.

Drawing on the host in float64 and only then converting to the training dtype and moving to
the backend makes the same seed give bit-identical initial weights on every backend. (This is
host-side set-up, not batch math, so it uses NumPy directly.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .registry import lookup

Initializer = Callable[[np.random.Generator, int, int], np.ndarray]


def glorot_uniform(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """U(-limit, limit) with limit = sqrt(6 / (n_in + n_out)) (Glorot and Bengio, 2010)."""
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out))


def he_normal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """N(0, 2 / n_in) (He et al., 2015), suited to ReLU layers."""
    return rng.normal(0.0, np.sqrt(2.0 / n_in), size=(n_in, n_out))


def normal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """N(0, 1 / n_in): Nielsen's network2 default, std 1 / sqrt(n_in)."""
    return rng.normal(0.0, 1.0 / np.sqrt(n_in), size=(n_in, n_out))


def zeros(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """All zeros (the default for biases)."""
    return np.zeros((n_in, n_out))


INITIALIZERS: dict[str, Initializer] = {
    f.__name__: f for f in (glorot_uniform, he_normal, normal, zeros)
}


def get_initializer(name: str) -> Initializer:
    return lookup(INITIALIZERS, "initializer", name)


# The library's default seed (`backprop.utils.set_random_seed`): where a model is given no
# seed, its generators are spawned from this sequence, so a seeded program repeats exactly.
_DEFAULT_SEED: list[np.random.SeedSequence | None] = [None]


def set_default_seed(seed: int | None) -> None:
    """Seed what models without a seed of their own draw from (None: fresh OS entropy)."""
    _DEFAULT_SEED[0] = None if seed is None else np.random.SeedSequence(seed)


def host_generators(seed: int | None) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent seeded host generators: one draws the initial weights, the other the
    shuffling order in fit (seed None: the next child of the default seed when one is set,
    else fresh OS entropy)."""
    default = _DEFAULT_SEED[0]
    root = default.spawn(1)[0] if seed is None and default is not None else None
    weights, shuffle = (root or np.random.SeedSequence(seed)).spawn(2)
    return np.random.default_rng(weights), np.random.default_rng(shuffle)
