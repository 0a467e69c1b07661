"""Metrics, recorded per sample on the device during an epoch and reduced once at its end."""

from __future__ import annotations

from backends import Array, Backend

from .registry import lookup


class Accuracy:
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


METRICS = {"accuracy": Accuracy, "acc": Accuracy}


def get_metric(name: str) -> Accuracy:
    return lookup(METRICS, "metric", name)()
