"""Gradient checking: backprop's gradients against central finite differences."""

from __future__ import annotations

from typing import Any

from .losses import Loss
from .model import Sequential


def check_gradients(
    model: Sequential,
    x: Any,
    y: Any,
    loss: str | Loss | None = None,
    eps: float = 1e-6,
    training: bool = False,
) -> list[float]:
    """The max relative error between backprop's gradient and a central finite difference,
    one figure per parameter array, in get_weights' order [W1, b1, W2, b2, ...].

    For each weight w: g_fd = (C(w + eps) - C(w - eps)) / (2 eps), with C the mean batch cost.
    The error of an array is max |g_bp - g_fd| / max(max |g_bp|, max |g_fd|, 1e-12): the
    worst deviation relative to the array's largest gradient, so weights whose gradient is
    near zero do not divide by near zero.

    Needs a float64 model (dtype="float64"): in float32 the cost carries ~1e-7 relative
    rounding, so a difference quotient with eps = 1e-6 is mostly noise. The model's weights
    are restored exactly afterwards.
    """
    if model.dtype != "float64":
        raise ValueError(
            f"check_gradients needs a float64 model (dtype='float64'), got {model.dtype!r}: "
            "float32 rounding swamps finite differences"
        )
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    weights = model.get_weights()
    analytic = model.gradients(x, y, loss=loss, training=training)
    errors = []
    try:
        for index, w in enumerate(weights):
            numeric = w.copy()
            flat_w, flat_g = w.reshape(-1), numeric.reshape(-1)
            for k in range(flat_w.size):
                original = flat_w[k]
                flat_w[k] = original + eps
                model.set_weights(weights)
                plus = model.cost(x, y, loss=loss, training=training)
                flat_w[k] = original - eps
                model.set_weights(weights)
                minus = model.cost(x, y, loss=loss, training=training)
                flat_w[k] = original
                flat_g[k] = (plus - minus) / (2 * eps)
            diff = abs(analytic[index] - numeric).max()
            scale = max(abs(analytic[index]).max(), abs(numeric).max(), 1e-12)
            errors.append(float(diff / scale))
    finally:
        model.set_weights(weights)
    return errors
