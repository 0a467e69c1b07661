"""Weight initializers, drawn on the host from a seeded NumPy generator.

Drawing on the host in float64 and only then converting to the training dtype and moving to
the backend makes the same seed give bit-identical initial weights on every backend. (This is
host-side set-up, not batch math, so it uses NumPy directly.)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from .registry import lookup, resolve

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


def _truncated_normal(rng: np.random.Generator, std: float, shape: tuple[int, int]) -> np.ndarray:
    """N(0, std^2) redrawn beyond two standard deviations, as Keras's truncated normal."""
    w = rng.normal(0.0, std, size=shape)
    while True:
        outside = np.abs(w) > 2.0 * std
        if not outside.any():
            return w
        w[outside] = rng.normal(0.0, std, size=int(outside.sum()))


# Keras's variance-scaling draws: a truncated normal of std sqrt(scale / fan) / 0.8796
# (the std of a standard normal truncated at 2) or a uniform of limit sqrt(3 scale / fan)
_TRUNCATED_STD = 0.87962566103423978


def lecun_normal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """Truncated N(0, 1 / n_in) (LeCun et al., 1998), as Keras draws it: for selu layers."""
    return _truncated_normal(rng, np.sqrt(1.0 / n_in) / _TRUNCATED_STD, (n_in, n_out))


def lecun_uniform(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """U(-limit, limit) with limit = sqrt(3 / n_in)."""
    limit = np.sqrt(3.0 / n_in)
    return rng.uniform(-limit, limit, size=(n_in, n_out))


def glorot_normal(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """Truncated N(0, 2 / (n_in + n_out)), as Keras draws it."""
    return _truncated_normal(rng, np.sqrt(2.0 / (n_in + n_out)) / _TRUNCATED_STD, (n_in, n_out))


def he_uniform(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """U(-limit, limit) with limit = sqrt(6 / n_in)."""
    limit = np.sqrt(6.0 / n_in)
    return rng.uniform(-limit, limit, size=(n_in, n_out))


def ones(rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
    """All ones."""
    return np.ones((n_in, n_out))


INITIALIZERS: dict[str, Initializer] = {
    f.__name__: f
    for f in (
        glorot_uniform,
        glorot_normal,
        he_normal,
        he_uniform,
        lecun_normal,
        lecun_uniform,
        normal,
        zeros,
        ones,
    )
}


class InitializerObject:
    """Keras's initializer objects (`HeNormal()`, `GlorotUniform(seed=42)`): a named draw
    with its arguments. Without a seed it draws from the model's seeded generator; with one,
    from its own generator of that seed, so every call gives the same values (as Keras)."""

    name = "initializer"

    def __init__(self, seed: int | None = None) -> None:
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0
        ):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)

    @property
    def __name__(self) -> str:  # what Dense records for a plain named initializer
        return self.name

    def draw(self, rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
        return INITIALIZERS[self.name](rng, n_in, n_out)

    def __call__(self, rng: np.random.Generator, n_in: int, n_out: int) -> np.ndarray:
        own = rng if self.seed is None else np.random.default_rng(self.seed)
        return self.draw(own, n_in, n_out)

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def config(self) -> dict[str, Any]:
        """The saved form: the name and the arguments (get_initializer rebuilds it)."""
        return {"name": self.name, **self.get_config()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(self.config().items())))


def _named(name: str, doc: str) -> type[InitializerObject]:
    cls = type(
        "".join(part.capitalize() for part in name.split("_")),
        (InitializerObject,),
        {"name": name, "__doc__": doc},
    )
    cls.__module__ = __name__
    return cls


GlorotUniform = _named("glorot_uniform", "Keras's GlorotUniform: U(+-sqrt(6 / (n_in + n_out))).")
GlorotNormal = _named("glorot_normal", "Keras's GlorotNormal: truncated N(0, 2 / (n_in + n_out)).")
HeNormal = _named("he_normal", "Keras's HeNormal: N(0, 2 / n_in).")
HeUniform = _named("he_uniform", "Keras's HeUniform: U(+-sqrt(6 / n_in)).")
LecunNormal = _named("lecun_normal", "Keras's LecunNormal: truncated N(0, 1 / n_in).")
LecunUniform = _named("lecun_uniform", "Keras's LecunUniform: U(+-sqrt(3 / n_in)).")
Zeros = _named("zeros", "Keras's Zeros.")
Ones = _named("ones", "Keras's Ones.")


class RandomNormal(InitializerObject):
    """Keras's RandomNormal: N(mean, stddev^2)."""

    name = "random_normal"

    def __init__(self, mean: float = 0.0, stddev: float = 0.05, seed: int | None = None) -> None:
        super().__init__(seed)
        if not stddev >= 0:
            raise ValueError(f"stddev must be >= 0, got {stddev!r}")
        self.mean, self.stddev = float(mean), float(stddev)

    def draw(self, rng, n_in, n_out):
        return rng.normal(self.mean, self.stddev, size=(n_in, n_out))

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev, "seed": self.seed}


class RandomUniform(InitializerObject):
    """Keras's RandomUniform: U(minval, maxval)."""

    name = "random_uniform"

    def __init__(self, minval: float = -0.05, maxval: float = 0.05, seed: int | None = None):
        super().__init__(seed)
        if not maxval >= minval:
            raise ValueError(f"maxval must be >= minval, got {minval!r} and {maxval!r}")
        self.minval, self.maxval = float(minval), float(maxval)

    def draw(self, rng, n_in, n_out):
        return rng.uniform(self.minval, self.maxval, size=(n_in, n_out))

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval, "seed": self.seed}


class Constant(InitializerObject):
    """Keras's Constant: every value `value`."""

    name = "constant"

    def __init__(self, value: float = 0.0) -> None:
        super().__init__(None)
        self.value = float(value)

    def draw(self, rng, n_in, n_out):
        return np.full((n_in, n_out), self.value)

    def get_config(self):
        return {"value": self.value}


INITIALIZER_CLASSES: dict[str, type[InitializerObject]] = {
    cls.name: cls
    for cls in (
        GlorotUniform,
        GlorotNormal,
        HeNormal,
        HeUniform,
        LecunNormal,
        LecunUniform,
        Zeros,
        Ones,
        RandomNormal,
        RandomUniform,
        Constant,
    )
}


def get_initializer(spec: Any) -> Initializer:
    """An initializer from a name ("he_normal", "HeNormal"), a saved config dict, or an object
    (an InitializerObject, or any callable (rng, n_in, n_out) -> array)."""
    if isinstance(spec, str):
        key = resolve(INITIALIZERS, spec)  # a plain draw, as saved files name it
        return INITIALIZERS[key] if key else lookup(INITIALIZER_CLASSES, "initializer", spec)()
    if isinstance(spec, dict):
        kwargs = dict(spec)
        return lookup(INITIALIZER_CLASSES, "initializer", kwargs.pop("name", None))(**kwargs)
    if isinstance(spec, InitializerObject) or callable(spec):
        return spec
    raise TypeError(
        "an initializer must be a name such as 'he_normal', an initializer object such as "
        f"HeNormal(), or a config dict, got {type(spec).__name__}"
    )


def serialize_initializer(init: Any) -> Any:
    """What a layer's config holds: the name of a plain initializer, or an object's config."""
    if isinstance(init, InitializerObject) and init.config() != {"name": init.name, "seed": None}:
        return init.config()
    return init.__name__


def host_generators(seed: int | None) -> tuple[np.random.Generator, np.random.Generator]:
    """Two independent seeded host generators: one draws the initial weights, the other the
    shuffling order in fit (seed None: fresh OS entropy)."""
    weights, shuffle = np.random.SeedSequence(seed).spawn(2)
    return np.random.default_rng(weights), np.random.default_rng(shuffle)
