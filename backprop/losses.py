"""Losses: each with its per-sample cost and its gradient dC/da side by side, plus the
shortcuts that hold only for one activation x loss pairing.

Shapes: a and y are (batch, n_out). `sample_costs` gives one cost per sample, (batch,); the
cost C of a batch is their mean, and dC/da already carries the 1 / batch. Everything stays on
the device: fit writes each batch's sample costs into an epoch-long buffer and reads their
mean once per epoch.

The output delta, delta^L = dC/dz^L, is in general the loss gradient dC/da pushed through
the output activation's backward pass (for softmax, its Jacobian-vector product). Two
pairings have a closed form that skips that pass and is exactly equal to it:

- softmax + (sparse_)categorical_crossentropy: delta^L = (a - y) / batch
- sigmoid + binary_crossentropy:               delta^L = (a - y) / (batch * n_out)

With `from_logits=True` (Keras's argument) the loss takes the output layer's z itself (a
linear last layer) and applies the softmax or sigmoid inside: the cost is computed from
log_softmax(z) or softplus(z), which never overflow, and after a linear layer the same two
closed forms hold with softmax(z) or sigmoid(z) in place of a.

Sample weights (fit's sample_weight and class_weight) multiply each sample's cost; the batch
cost stays their sum over the batch size, as Keras reduces it (`weighted`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from backends import Array, Backend

from .activations import ActivationFunction, Linear, Sigmoid, Softmax
from .registry import lookup

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] before a log, as in Keras


def _clip_probability(be: Backend, a: Array) -> Array:
    return be.clip(a, EPSILON, 1.0 - EPSILON)


class Loss:
    """A per-sample cost c(a, y), averaged over the batch into C, and its gradient dC/da."""

    name = "loss"
    #: what y holds: "dense" (real targets shaped like a), "one_hot" (class probabilities),
    #: "labels" (integer class indices), or "binary" (targets in [0, 1])
    targets = "dense"
    from_logits = False

    def config(self) -> str | dict[str, Any]:
        """What get_loss rebuilds this loss from: its name, or a dict with its arguments."""
        return self.name if not self.from_logits else {"name": self.name, "from_logits": True}

    def sample_costs(self, be: Backend, a: Array, y: Array, out: Array | None = None) -> Array:
        """The cost of each sample, shape (batch,) (written into `out` when given)."""
        raise NotImplementedError

    def value(self, be: Backend, a: Array, y: Array) -> Array:
        """C, the mean of the sample costs over the batch: a 0-d array on the device."""
        return be.mean(self.sample_costs(be, a, y))

    def gradient(self, be: Backend, a: Array, y: Array, out: Array | None = None) -> Array:
        """dC/da, shape (batch, n_out), written into `out` (a workspace of that shape) where
        the loss can; use the returned array. A loss that computes it with backend methods
        into `out` leaves a training step that the CPU records and a GPU captures whole."""
        raise NotImplementedError

    def uninformed_cost(self, be: Backend, y: Array) -> float:
        """The cost of an uninformed guess at targets y (every output 1/n_out), as a host
        float: the scale the training loop's explosion rule measures a loss against."""
        guess = be.full(tuple(y.shape), 1.0 / int(y.shape[1]))
        return float(be.to_numpy(self.value(be, guess, y)))

    def shortcut(self, activation: ActivationFunction) -> Shortcut | None:
        """The closed-form output delta for this loss after `activation`, if there is one."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MeanSquaredError(Loss):
    """c = (1 / n_out) * sum over the outputs of (a - y)^2, so C = 1 / (batch * n_out) * sum
    over the batch and the outputs of (a - y)^2: the mean over the batch of each sample's mean
    squared error (Keras's `mse`); dC/da = 2 (a - y) / (batch * n_out)."""

    name = "mse"

    def sample_costs(self, be, a, y, out=None):
        diff = a - y
        return be.multiply(be.sum(diff * diff, axis=1), 1.0 / a.shape[1], out=out)

    def gradient(self, be, a, y, out=None):
        return be.scaled_difference(a, y, 2.0 / float(a.shape[0] * a.shape[1]), out=out)


class Quadratic(Loss):
    """c = ||a - y||^2 / 2, so C = 1 / (2 batch) * sum over the batch of ||a - y||^2
    (Nielsen's quadratic cost); dC/da = (a - y) / batch."""

    name = "quadratic"

    def sample_costs(self, be, a, y, out=None):
        diff = a - y
        return be.multiply(be.sum(diff * diff, axis=1), 0.5, out=out)

    def gradient(self, be, a, y, out=None):
        return be.scaled_difference(a, y, 1.0 / float(a.shape[0]), out=out)


def _check_from_logits(from_logits: Any) -> bool:
    if not isinstance(from_logits, bool):
        raise ValueError(f"from_logits must be True or False, got {from_logits!r}")
    return from_logits


class CategoricalCrossentropy(Loss):
    """c = -sum_j y_j log a_j, with y one-hot (or class probabilities), so
    C = -(1 / batch) * sum over the batch of sum_j y_j log a_j; dC/da = -y / (a * batch).

    from_logits=True: a holds logits z, c = -sum_j y_j log_softmax(z)_j and
    dC/dz = (softmax(z) - y) / batch."""

    name = "categorical_crossentropy"
    targets = "one_hot"

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = _check_from_logits(from_logits)

    def sample_costs(self, be, a, y, out=None):
        log_p = be.log_softmax(a) if self.from_logits else be.log(_clip_probability(be, a))
        return be.multiply(be.sum(y * log_p, axis=1), -1.0, out=out)

    def gradient(self, be, a, y, out=None):
        if self.from_logits:
            return (be.softmax(a) - y) * (1.0 / float(a.shape[0]))
        return -y / (_clip_probability(be, a) * float(a.shape[0]))

    def shortcut(self, activation):
        if self.from_logits:
            return LOGITS_SOFTMAX_CROSSENTROPY if isinstance(activation, Linear) else None
        return SOFTMAX_CROSSENTROPY if isinstance(activation, Softmax) else None

    def uninformed_cost(self, be, y):
        return math.log(int(y.shape[1]))  # -sum_j y_j log(1 / n_out), rows of y summing to 1


class SparseCategoricalCrossentropy(CategoricalCrossentropy):
    """Categorical cross-entropy with integer labels in [0, n_out) instead of one-hot rows.

    The labels are turned into one-hot rows once, when the data crosses to the backend, so the
    cost and its gradient are categorical cross-entropy's."""

    name = "sparse_categorical_crossentropy"
    targets = "labels"


class BinaryCrossentropy(Loss):
    """c = -(1 / n_out) * sum_j [y_j log a_j + (1 - y_j) log(1 - a_j)], targets in [0, 1];
    dC/da = (a - y) / (a (1 - a) batch n_out).

    from_logits=True: a holds logits z; with a = sigmoid(z), -log a = softplus(-z) and
    -log(1 - a) = softplus(z), so c = (1 / n_out) sum_j [softplus(z_j) - y_j z_j] (never
    overflows) and dC/dz = (sigmoid(z) - y) / (batch n_out)."""

    name = "binary_crossentropy"
    targets = "binary"

    def __init__(self, from_logits: bool = False) -> None:
        self.from_logits = _check_from_logits(from_logits)

    def sample_costs(self, be, a, y, out=None):
        if self.from_logits:
            total = be.sum(be.softplus(a) - y * a, axis=1)
            return be.multiply(total, 1.0 / a.shape[1], out=out)
        a = _clip_probability(be, a)
        total = be.sum(y * be.log(a) + (1.0 - y) * be.log(1.0 - a), axis=1)
        return be.multiply(total, -1.0 / a.shape[1], out=out)

    def gradient(self, be, a, y, out=None):
        if self.from_logits:
            return (be.sigmoid(a) - y) * (1.0 / float(a.shape[0] * a.shape[1]))
        a = _clip_probability(be, a)
        return (a - y) / (a * (1.0 - a) * float(a.shape[0] * a.shape[1]))

    def shortcut(self, activation):
        if self.from_logits:
            return LOGITS_SIGMOID_BINARY_CROSSENTROPY if isinstance(activation, Linear) else None
        return SIGMOID_BINARY_CROSSENTROPY if isinstance(activation, Sigmoid) else None

    def uninformed_cost(self, be, y):
        return math.log(2.0)  # every output 1/2: a coin toss per target


class Shortcut:
    """A closed form of delta^L for one activation x loss pairing, skipping the activation's
    backward pass."""

    def delta(
        self,
        be: Backend,
        z: Array,
        a: Array,
        y: Array,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        """delta^L, with its column sums (the output layer's db) into `bias_grad` when given."""
        raise NotImplementedError


class SoftmaxCrossentropy(Shortcut):
    """Softmax output with cross-entropy: delta^L = (a - y) / batch, because the softmax
    Jacobian contracted with -y / a gives a * sum_j y_j - y, and sum_j y_j = 1."""

    def delta(self, be, z, a, y, out=None, bias_grad=None):
        return be.scaled_difference(a, y, 1.0 / z.shape[0], out=out, bias_grad=bias_grad)


class SigmoidBinaryCrossentropy(Shortcut):
    """Sigmoid output with binary cross-entropy: delta^L = (a - y) / (batch * n_out), because
    sigmoid' = a (1 - a) cancels the denominator of dC/da."""

    def delta(self, be, z, a, y, out=None, bias_grad=None):
        scale = 1.0 / (z.shape[0] * z.shape[1])
        return be.scaled_difference(a, y, scale, out=out, bias_grad=bias_grad)


class LogitsSoftmaxCrossentropy(Shortcut):
    """A linear output with from_logits cross-entropy: delta^L = (softmax(z) - y) / batch,
    the softmax pairing's closed form with the softmax taken inside the loss."""

    def delta(self, be, z, a, y, out=None, bias_grad=None):
        p = be.softmax(z, out=out)
        return be.scaled_difference(p, y, 1.0 / z.shape[0], out=p, bias_grad=bias_grad)


class LogitsSigmoidBinaryCrossentropy(Shortcut):
    """A linear output with from_logits binary cross-entropy: delta^L =
    (sigmoid(z) - y) / (batch * n_out)."""

    def delta(self, be, z, a, y, out=None, bias_grad=None):
        p = be.sigmoid(z, out=out)
        scale = 1.0 / (z.shape[0] * z.shape[1])
        return be.scaled_difference(p, y, scale, out=p, bias_grad=bias_grad)


# The shortcuts hold no state: one of each, handed out every step instead of made anew.
SOFTMAX_CROSSENTROPY = SoftmaxCrossentropy()
SIGMOID_BINARY_CROSSENTROPY = SigmoidBinaryCrossentropy()
LOGITS_SOFTMAX_CROSSENTROPY = LogitsSoftmaxCrossentropy()
LOGITS_SIGMOID_BINARY_CROSSENTROPY = LogitsSigmoidBinaryCrossentropy()


class Weighted(Loss):
    """`loss` with each sample's cost multiplied by its weight w (shape (batch, 1), on the
    device): C = sum_i w_i c_i / batch, Keras's "sum over batch size" reduction, so
    dC/da and delta^L gain the factor w_i row by row (the output activation acts row by
    row, so weighting delta^L is weighting dC/da)."""

    def __init__(self, loss: Loss, weights: Array) -> None:
        self.loss, self.weights = loss, weights
        self.name, self.targets, self.from_logits = loss.name, loss.targets, loss.from_logits

    def sample_costs(self, be, a, y, out=None):
        return be.multiply(self.loss.sample_costs(be, a, y), self.weights[:, 0], out=out)

    def gradient(self, be, a, y, out=None):
        return be.multiply(loss_gradient(self.loss, be, a, y, out), self.weights, out=out)

    def uninformed_cost(self, be, y):
        mean_weight = float(be.to_numpy(be.mean(self.weights)))
        return self.loss.uninformed_cost(be, y) * mean_weight

    def shortcut(self, activation):
        fused = self.loss.shortcut(activation)
        return None if fused is None else WeightedShortcut(fused, self.weights)


class WeightedShortcut(Shortcut):
    """A closed form of delta^L with each row scaled by its sample's weight; the bias
    gradient is summed after the weighting."""

    def __init__(self, fused: Shortcut, weights: Array) -> None:
        self.fused, self.weights = fused, weights

    def delta(self, be, z, a, y, out=None, bias_grad=None):
        delta = be.multiply(self.fused.delta(be, z, a, y, out=out), self.weights, out=out)
        if bias_grad is not None:
            be.sum(delta, axis=0, out=bias_grad)
        return delta


def weighted(loss: Loss, weights: Array | None) -> Loss:
    """`loss` with per-sample weights (batch, 1), or itself without."""
    return loss if weights is None else Weighted(loss, weights)


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


def get_loss(spec: str | dict[str, Any] | Loss) -> Loss:
    """A Loss from its name ("mse", "categorical_crossentropy", ...), a config
    ({"name": ..., "from_logits": True}, as `Loss.config` gives) or an instance."""
    if isinstance(spec, Loss):
        return spec
    table = {**LOSSES, **{alias: LOSSES[name] for alias, name in ALIASES.items()}}
    if isinstance(spec, dict):
        kwargs = dict(spec)
        return lookup(table, "loss", kwargs.pop("name", None))(**kwargs)
    if not isinstance(spec, str):
        raise TypeError(f"loss must be a name or a Loss, got {type(spec).__name__}")
    return lookup(table, "loss", spec)()


def output_delta(
    be: Backend,
    activation: ActivationFunction,
    loss: Loss,
    z: Array,
    a: Array,
    y: Array,
    shortcut: bool = True,
    out: Array | None = None,
    bias_grad: Array | None = None,
    da_out: Callable[[], Array] | None = None,
) -> Array:
    """delta^L = dC/dz^L: the pairing's closed form when there is one (and `shortcut`), else
    the general path, the loss gradient dC/da (into the workspace `da_out()` gives, where the
    loss can) through the activation's backward pass. Its column sums (the output layer's db) go
    into `bias_grad` when given."""
    fused = loss.shortcut(activation) if shortcut else None
    if fused is not None:
        return fused.delta(be, z, a, y, out=out, bias_grad=bias_grad)
    da = loss_gradient(loss, be, a, y, None if da_out is None else da_out())
    return activation.backward(be, z, a, da, out=out, bias_grad=bias_grad)


def loss_gradient(loss: Loss, be: Backend, a: Array, y: Array, out: Array | None) -> Array:
    """loss.gradient, into `out` where the loss's gradient takes one: a user's Loss written
    with gradient(be, a, y), as before `out=` existed, still trains (eagerly on the CPU)."""
    if out is not None and _takes_out(type(loss)):
        return loss.gradient(be, a, y, out=out)
    return loss.gradient(be, a, y)


_TAKES_OUT: dict[type, bool] = {}


def _takes_out(cls: type[Loss]) -> bool:
    known = _TAKES_OUT.get(cls)
    if known is None:
        known = _TAKES_OUT[cls] = "out" in inspect.signature(cls.gradient).parameters
    return known
