"""Losses: each with its cost C (the mean over the batch) and its gradient dC/da side by side,
plus the shortcuts that hold only for one activation x loss pairing.

Shapes: a and y are (batch, n_out); a cost is a 0-d array on the backend (it stays on the
device until the caller reads it).

The output delta, delta^L = dC/dz^L, is in general the loss gradient dC/da pushed through
the output activation's backward pass (for softmax, its Jacobian-vector product). Two
pairings have a closed form that skips that pass and is exactly equal to it:

- softmax + (sparse_)categorical_crossentropy: delta^L = (a - y) / batch
- sigmoid + binary_crossentropy:               delta^L = (a - y) / (batch * n_out)
"""

from __future__ import annotations

from backends import Array, Backend

from .activations import Activation, Sigmoid, Softmax


def _clip_probability(be: Backend, a: Array) -> Array:
    # log(0) is -inf: keep probabilities in [eps, 1 - eps] as Keras does (eps = 1e-7)
    return be.clip(a, 1e-7, 1.0 - 1e-7)


class Loss:
    """A cost C(a, y), averaged over the batch, and its gradient dC/da."""

    name = "loss"
    #: what y holds: "dense" (real targets shaped like a), "one_hot" (class probabilities),
    #: "labels" (integer class indices), or "binary" (targets in [0, 1])
    targets = "dense"

    def value(self, be: Backend, a: Array, y: Array) -> Array:
        raise NotImplementedError

    def gradient(self, be: Backend, a: Array, y: Array) -> Array:
        raise NotImplementedError

    def shortcut(self, activation: Activation) -> Shortcut | None:
        """The closed-form output delta for this loss after `activation`, if there is one."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeanSquaredError(Loss):
    """C = 1 / (batch * n_out) * sum over the batch and the outputs of (a - y)^2.

    That is the mean over the batch of each sample's mean squared error over its n_out outputs
    (Keras's `mse`); dC/da = 2 (a - y) / (batch * n_out).
    """

    name = "mse"

    def value(self, be, a, y):
        diff = a - y
        return be.sum(diff * diff) / float(a.shape[0] * a.shape[1])

    def gradient(self, be, a, y):
        return (a - y) * (2.0 / float(a.shape[0] * a.shape[1]))


class Quadratic(Loss):
    """C = 1 / (2 batch) * sum over the batch of ||a - y||^2 (Nielsen's quadratic cost);
    dC/da = (a - y) / batch."""

    name = "quadratic"

    def value(self, be, a, y):
        diff = a - y
        return be.sum(diff * diff) / float(2 * a.shape[0])

    def gradient(self, be, a, y):
        return (a - y) * (1.0 / float(a.shape[0]))


class CategoricalCrossentropy(Loss):
    """C = -(1 / batch) * sum over the batch of sum_j y_j log a_j, y one-hot (or class
    probabilities); dC/da = -y / (a * batch)."""

    name = "categorical_crossentropy"
    targets = "one_hot"

    def value(self, be, a, y):
        return -be.sum(y * be.log(_clip_probability(be, a))) / float(a.shape[0])

    def gradient(self, be, a, y):
        return -y / (_clip_probability(be, a) * float(a.shape[0]))

    def shortcut(self, activation):
        return SoftmaxCrossentropy() if isinstance(activation, Softmax) else None


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer labels in [0, n_out) instead of one-hot rows.

    The labels are turned into one-hot rows once, when the data crosses to the backend, so the
    cost and its gradient are categorical cross-entropy's."""

    name = "sparse_categorical_crossentropy"
    targets = "labels"


class BinaryCrossentropy(Loss):
    """C = -1 / (batch * n_out) * sum [y log a + (1 - y) log(1 - a)], targets in [0, 1];
    dC/da = (a - y) / (a (1 - a) batch n_out)."""

    name = "binary_crossentropy"
    targets = "binary"

    def value(self, be, a, y):
        a = _clip_probability(be, a)
        total = be.sum(y * be.log(a) + (1.0 - y) * be.log(1.0 - a))
        return -total / float(a.shape[0] * a.shape[1])

    def gradient(self, be, a, y):
        a = _clip_probability(be, a)
        return (a - y) / (a * (1.0 - a) * float(a.shape[0] * a.shape[1]))

    def shortcut(self, activation):
        return SigmoidBinaryCrossentropy() if isinstance(activation, Sigmoid) else None


class Shortcut:
    """A closed form for one activation x loss pairing: the cost from z (numerically stable)
    and delta^L without the activation's backward pass."""

    def value(self, be: Backend, z: Array, a: Array, y: Array) -> Array:
        raise NotImplementedError

    def delta(self, be: Backend, z: Array, a: Array, y: Array) -> Array:
        raise NotImplementedError


class SoftmaxCrossentropy(Shortcut):
    """Softmax output with cross-entropy: C = -(1/batch) sum y log_softmax(z), and
    delta^L = (a - y) / batch, because sum_j y_j = 1 for every sample."""

    def value(self, be, z, a, y):
        return -be.sum(y * be.log_softmax(z)) / float(z.shape[0])

    def delta(self, be, z, a, y):
        return (a - y) * (1.0 / float(z.shape[0]))


class SigmoidBinaryCrossentropy(Shortcut):
    """Sigmoid output with binary cross-entropy: per element, -[y log a + (1-y) log(1-a)]
    = softplus(z) - y z, and delta^L = (a - y) / (batch * n_out)."""

    def value(self, be, z, a, y):
        return be.sum(be.softplus(z) - y * z) / float(z.shape[0] * z.shape[1])

    def delta(self, be, z, a, y):
        return (a - y) * (1.0 / float(z.shape[0] * z.shape[1]))


LOSSES: dict[str, type[Loss]] = {
    cls.name: cls
    for cls in (
        MeanSquaredError,
        Quadratic,
        CategoricalCrossentropy,
        SparseCategoricalCrossentropy,
        BinaryCrossentropy,
    )
}
ALIASES = {"mean_squared_error": "mse", "crossentropy": "categorical_crossentropy"}


def get_loss(spec: str | Loss) -> Loss:
    """A Loss from its name ("mse", "categorical_crossentropy", ...) or an instance."""
    if isinstance(spec, Loss):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"loss must be a name or a Loss, got {type(spec).__name__}")
    key = ALIASES.get(spec.lower(), spec.lower())
    if key not in LOSSES:
        raise ValueError(f"unknown loss {spec!r}; valid names are {', '.join(sorted(LOSSES))}")
    return LOSSES[key]()


def output_delta(
    be: Backend,
    activation: Activation,
    loss: Loss,
    z: Array,
    a: Array,
    y: Array,
    shortcut: bool = True,
) -> Array:
    """delta^L = dC/dz^L: the pairing's closed form when there is one (and `shortcut`), else
    the general path, the loss gradient dC/da through the activation's backward pass."""
    fused = loss.shortcut(activation) if shortcut else None
    if fused is not None:
        return fused.delta(be, z, a, y)
    return activation.backward(be, z, a, loss.gradient(be, a, y))


def output_cost(
    be: Backend,
    activation: Activation,
    loss: Loss,
    z: Array,
    a: Array,
    y: Array,
    shortcut: bool = True,
) -> Array:
    """The mean batch cost C (0-d, on the device), from z where the pairing allows it."""
    fused = loss.shortcut(activation) if shortcut else None
    if fused is not None:
        return fused.value(be, z, a, y)
    return loss.value(be, a, y)
