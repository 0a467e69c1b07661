"""Keras's `keras.backend`, as far as MLP programs use it: `clear_session()`.

(The array backends themselves are the `backends` package; a model's is `model.backend`.)
"""

from __future__ import annotations


def clear_session() -> None:
    """Keras frees its global graph state here. This library keeps none (each model owns its
    backend, buffers and recorded steps), so there is nothing to clear: a no-op, kept so
    Keras programs run. To repeat a run, use backprop.utils.set_random_seed."""


__all__ = ["clear_session"]
