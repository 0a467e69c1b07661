"""Metrics, recorded per sample on the device during an epoch and reduced once at its end.

A metric turns each row of outputs or targets into what it compares (`classes`: the class a
row stands for, or the row itself), once for the targets of a pass, and reduces the
comparison to one 0-d device value (`result`). Names as in Keras, class-style spellings
included: "accuracy" (or "acc"), "categorical_accuracy", "sparse_categorical_accuracy"
(the labels are one-hot rows by then), "binary_accuracy", "mae", "mse".
"""

from __future__ import annotations

from typing import Any

from backends import Array, Backend

from .registry import lookup, resolve


class Metric:
    """A metric: `name` is the key of its figure in the logs and the History."""

    name = "metric"

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        """What the metric compares of each row of `a` (outputs or targets): the row."""
        return a if out is None else be.copy(a, out=out)

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        """The metric over the rows, 0-d on the device."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Accuracy(Metric):
    """The fraction of samples classified right: argmax(a) == argmax(y) with several outputs,
    (a > 0.5) == (y > 0.5) with a single output."""

    name = "accuracy"

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        """The class each row of `a` (outputs or targets) stands for, as (batch,) int64."""
        if a.shape[1] == 1:
            return be.copy(be.astype(a[:, 0] > 0.5, "int64"), out=out)
        return be.argmax(a, axis=1, out=out)

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        """The fraction of equal classes, 0-d on the device."""
        return be.mean(be.astype(predicted == true, be.dtype))


class BinaryAccuracy(Accuracy):
    """The fraction of outputs on the right side of 0.5: (a > 0.5) == (y > 0.5), over every
    output of every sample."""

    name = "binary_accuracy"

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        return be.astype(a > 0.5, "int64")


class MeanAbsoluteError(Metric):
    """mean |a - y| over every output of every sample."""

    name = "mae"

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        return be.mean(be.abs(predicted - true))


class MeanSquaredError(Metric):
    """mean (a - y)^2 over every output of every sample."""

    name = "mse"

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        diff = predicted - true
        return be.mean(diff * diff)


METRICS: dict[str, type[Metric]] = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "categorical_accuracy": Accuracy,
    "sparse_categorical_accuracy": Accuracy,
    "binary_accuracy": BinaryAccuracy,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
}


def get_metric(spec: str | Metric) -> Metric:
    """A metric from its name (as Keras spells it, "accuracy", "mae", or class-style,
    "CategoricalAccuracy") or an instance. Its figure is logged under the name given."""
    if isinstance(spec, Metric):
        return spec
    key = resolve(METRICS, spec)
    if key is None:
        lookup(METRICS, "metric", spec)  # raises, naming the valid metrics
    metric: Any = METRICS[str(key)]()
    metric.name = "accuracy" if key == "acc" else key
    return metric
