"""Metrics accumulated on the device during an epoch and read back once at its end."""

from __future__ import annotations

from backends import Array, Backend


class Accuracy:
    """The fraction of samples classified right: argmax(a) == argmax(y) for several outputs,
    (a > 0.5) == (y > 0.5) for a single output."""

    name = "accuracy"

    def count(self, be: Backend, a: Array, y: Array) -> Array:
        """The number of right answers in the batch, as a 0-d float array on the device."""
        if a.shape[1] == 1:
            right = (a > 0.5) == (y > 0.5)
        else:
            right = be.argmax(a, axis=1) == be.argmax(y, axis=1)
        return be.sum(be.astype(right, be.dtype))


METRICS = {"accuracy": Accuracy, "acc": Accuracy}


def get_metric(name: str) -> Accuracy:
    if not isinstance(name, str) or name.lower() not in METRICS:
        raise ValueError(f"unknown metric {name!r}; valid names are accuracy")
    return METRICS[name.lower()]()
