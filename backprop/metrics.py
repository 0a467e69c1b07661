"""Metrics, recorded per sample on the device during an epoch and reduced once at its end.

A metric turns each row of outputs into what it compares (`classes`: the class a row stands
for, or the row itself) and each row of targets into the truth it compares against
(`truth`, once per pass), and reduces the comparison to one 0-d device value (`result`).
Names as in Keras, class-style spellings included: "accuracy" (or "acc"),
"categorical_accuracy", "sparse_categorical_accuracy" (the labels are one-hot rows by then),
"binary_accuracy", "mae", "mse", "precision", "recall", "auc"; or the objects themselves,
`metrics=[BinaryAccuracy(threshold=0.0), Precision(), AUC()]`, logged under their Keras
names. As in Keras's `metrics=`, they are not weighted by fit's sample weights.
"""

from __future__ import annotations

from typing import Any

from backends import Array, Backend

from .registry import lookup, resolve


class Metric:
    """A metric: `name` is the key of its figure in the logs and the History."""

    name = "metric"

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            if not (isinstance(name, str) and name):
                raise ValueError(f"name must be a non-empty string, got {name!r}")
            self.name = name

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        """What the metric compares of each row of outputs `a`: the row."""
        return a if out is None else be.copy(a, out=out)

    def truth(self, be: Backend, y: Array) -> Array:
        """What the metric compares the outputs against, from the targets y: as `classes`."""
        return self.classes(be, y)

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        """The metric over the rows, 0-d on the device."""
        raise NotImplementedError

    def arguments(self) -> dict[str, Any]:
        """The constructor's arguments besides the name (saved with a model)."""
        return {}

    def config(self) -> str | dict[str, Any]:
        """What get_metric rebuilds this metric from: a name, or a dict with its class and
        arguments."""
        arguments = self.arguments()
        if not arguments and resolve(METRICS, self.name) is not None:
            if type(get_metric(self.name)) is type(self):
                return self.name
        return {"class_name": type(self).__name__, "name": self.name, **arguments}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class Accuracy(Metric):
    """The fraction of samples classified right: argmax(a) == argmax(y) with several outputs,
    (a > 0.5) == (y > 0.5) with a single output (Keras's "accuracy" chooses the same way)."""

    name = "accuracy"

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        """The class each row of `a` (outputs or targets) stands for, as (batch,) int64."""
        if a.shape[1] == 1:
            return be.copy(be.astype(a[:, 0] > 0.5, "int64"), out=out)
        return be.argmax(a, axis=1, out=out)

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        """The fraction of equal classes, 0-d on the device."""
        return be.mean(be.astype(predicted == true, be.dtype))


class CategoricalAccuracy(Accuracy):
    """argmax(a) == argmax(y): the fraction of samples whose largest output is their class
    (for sparse labels too: they are one-hot rows on the device)."""

    name = "categorical_accuracy"

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        return be.argmax(a, axis=1, out=out)


class SparseCategoricalAccuracy(CategoricalAccuracy):
    name = "sparse_categorical_accuracy"


class BinaryAccuracy(Accuracy):
    """The fraction of outputs on the right side of `threshold`: (a > threshold) == (y > 0.5),
    over every output of every sample. threshold=0.0 reads logits (from_logits=True)."""

    name = "binary_accuracy"

    def __init__(self, name: str | None = None, threshold: float = 0.5) -> None:
        super().__init__(name)
        self.threshold = _check_threshold(threshold, "threshold")

    def arguments(self) -> dict[str, Any]:
        return {} if self.threshold == 0.5 else {"threshold": self.threshold}

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        return be.astype(a > self.threshold, "int64")

    def truth(self, be: Backend, y: Array) -> Array:
        return be.astype(y > 0.5, "int64")


def _check_threshold(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


class Precision(Metric):
    """true positives / predicted positives, over every output of every sample: an output
    counts as positive above `thresholds` (Keras's default 0.5), a target above 0.5;
    0 when nothing is predicted positive (as Keras)."""

    name = "precision"

    def __init__(self, thresholds: float | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.thresholds = 0.5 if thresholds is None else _check_threshold(thresholds, "thresholds")

    def arguments(self) -> dict[str, Any]:
        return {} if self.thresholds == 0.5 else {"thresholds": self.thresholds}

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        return be.astype(a > self.thresholds, be.dtype)

    def truth(self, be: Backend, y: Array) -> Array:
        return be.astype(y > 0.5, be.dtype)

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        true_positives = be.sum(predicted * true)
        return true_positives / be.maximum(be.sum(self._denominator(predicted, true)), 1.0)

    def _denominator(self, predicted: Array, true: Array) -> Array:
        return predicted  # predicted positives (counts: >= 1 whenever there are any)


class Recall(Precision):
    """true positives / actual positives (targets above 0.5); 0 when there are none."""

    name = "recall"

    def _denominator(self, predicted: Array, true: Array) -> Array:
        return true


class AUC(Metric):
    """The area under the ROC curve as Keras computes it: the outputs (every output of every
    sample) against `num_thresholds` thresholds, 0 - eps, i / (num_thresholds - 1) for
    i = 1 .. num_thresholds - 2, 1 + eps; at each, the true- and false-positive rates of
    `output > threshold`; the area by the trapezoidal rule over those points. Targets above
    0.5 are positives. Close to the exact (rank) AUC for outputs in [0, 1]: within about
    1 / num_thresholds. from_logits=True takes the sigmoid of the outputs first."""

    name = "auc"

    def __init__(
        self, num_thresholds: int = 200, name: str | None = None, from_logits: bool = False
    ) -> None:
        super().__init__(name)
        if isinstance(num_thresholds, bool) or not (
            isinstance(num_thresholds, int) and num_thresholds > 1
        ):
            raise ValueError(f"num_thresholds must be an integer > 1, got {num_thresholds!r}")
        if not isinstance(from_logits, bool):
            raise ValueError(f"from_logits must be True or False, got {from_logits!r}")
        self.num_thresholds, self.from_logits = num_thresholds, from_logits

    def arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if self.num_thresholds != 200:
            arguments["num_thresholds"] = self.num_thresholds
        if self.from_logits:
            arguments["from_logits"] = True
        return arguments

    def classes(self, be: Backend, a: Array, out: Array | None = None) -> Array:
        """The outputs as probabilities: a itself, or sigmoid(a) for logits."""
        return be.sigmoid(a, out=out) if self.from_logits else super().classes(be, a, out)

    def host_thresholds(self) -> list[float]:
        n, eps = self.num_thresholds, 1e-7
        return [0.0 - eps, *((i + 1) / (n - 1) for i in range(n - 2)), 1.0 + eps]

    def truth(self, be: Backend, y: Array) -> Array:
        return be.astype(be.reshape(y > 0.5, (-1, 1)), be.dtype)

    def result(self, be: Backend, predicted: Array, true: Array) -> Array:
        # (samples * outputs, thresholds): which outputs lie above each threshold
        thresholds = be.asarray([self.host_thresholds()], dtype=be.dtype)
        above = be.astype(be.reshape(predicted, (-1, 1)) > thresholds, be.dtype)
        positives = be.sum(true)
        negatives = float(true.shape[0]) - positives
        tpr = be.sum(above * true, axis=0) / be.maximum(positives, 1.0)
        fpr = be.sum(above * (1.0 - true), axis=0) / be.maximum(negatives, 1.0)
        heights = (tpr[:-1] + tpr[1:]) * 0.5
        return be.sum((fpr[:-1] - fpr[1:]) * heights)


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
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "precision": Precision,
    "recall": Recall,
    "auc": AUC,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
}
CLASSES: dict[str, type[Metric]] = {cls.__name__.lower(): cls for cls in set(METRICS.values())}


def get_metric(spec: str | dict[str, Any] | Metric) -> Metric:
    """A metric from its name (as Keras spells it, "accuracy", "mae", or class-style,
    "CategoricalAccuracy"), a config (`Metric.config`) or an instance. Its figure is logged
    under the name given."""
    if isinstance(spec, Metric):
        return spec
    if isinstance(spec, dict):
        kwargs = dict(spec)
        cls = lookup(CLASSES, "metric class", kwargs.pop("class_name", None))
        return cls(**kwargs)
    key = resolve(METRICS, spec)
    if key is None:
        lookup(METRICS, "metric", spec)  # raises, naming the valid metrics
    metric: Any = METRICS[str(key)]()
    metric.name = "accuracy" if key == "acc" else key
    return metric


__all__ = [
    "AUC",
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "Metric",
    "Precision",
    "Recall",
    "SparseCategoricalAccuracy",
    "get_metric",
]
