"""Sequential: a stack of Dense layers, owning its backend, with batch backpropagation.

forward:   a^0 = x;  z^l = a^{l-1} W^l + b^l,  a^l = f(z^l)
output:    delta^L = dC/dz^L                 (see losses.output_delta)
backward:  delta^l = f'(z^l) * (delta^{l+1} (W^{l+1})^T)
gradients: dC/dW^l = (a^{l-1})^T delta^l,    dC/db^l = sum over the batch of delta^l
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from backends import Array, Backend, get_backend

from . import data
from .initializers import host_generator
from .layers import Dense
from .losses import Loss, get_loss, output_cost, output_delta


class Sequential:
    """A feed-forward network of Dense layers on one backend.

    Parameters
    ----------
    layers : list of Dense
    input_dim : int, optional
        Features per sample. Without it the model is built on the first data it sees.
    backend : str or backends.Backend
        "numpy" (default), "cupy", "strict", or a Backend instance.
    dtype : {"float32", "float64"}
        Training dtype: float32 by default; float64 for gradient checks.
    seed : int, optional
        Seeds the host generator that draws the initial weights (and, in `fit`, the shuffling),
        so the same seed gives bit-identical initial weights on every backend.
    """

    def __init__(
        self,
        layers: Sequence[Dense],
        input_dim: int | None = None,
        backend: str | Backend = "numpy",
        dtype: str = "float32",
        seed: int | None = None,
    ) -> None:
        layers = list(layers)
        if not layers:
            raise ValueError("layers must hold at least one Dense layer, got an empty list")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Dense):
                raise TypeError(f"layers[{i}] must be a Dense layer, got {type(layer).__name__}")
            if layer.built:
                raise ValueError(f"layers[{i}] already belongs to a built model; make a new one")
        if input_dim is not None and (
            isinstance(input_dim, bool)
            or not isinstance(input_dim, numbers.Integral)
            or input_dim < 1
        ):
            raise ValueError(f"input_dim must be an integer >= 1, got {input_dim!r}")
        if seed is not None and (not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.layers = layers
        self.backend = get_backend(backend, dtype=dtype)
        self.dtype = self.backend.dtype_name
        self.seed = seed
        self.input_dim: int | None = None
        self.loss: Loss | None = None
        if input_dim is not None:
            self.build(int(input_dim))

    def __repr__(self) -> str:
        sizes = [self.input_dim, *(layer.units for layer in self.layers)]
        return (
            f"Sequential({'-'.join(map(str, sizes))}, backend={self.backend.name!r}, "
            f"dtype={self.dtype!r})"
        )

    # ------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self.input_dim is not None

    @property
    def output_dim(self) -> int:
        return self.layers[-1].units

    def build(self, input_dim: int) -> None:
        """Create every layer's W and b, drawn in order from one seeded host generator."""
        rng = host_generator(self.seed)
        n_in = input_dim
        for layer in self.layers:
            layer.build(n_in, self.backend, rng)
            n_in = layer.units
        self.input_dim = input_dim

    def _ensure_built(self, x: Any) -> None:
        if not self.built:
            shape = getattr(x, "shape", None)
            if shape is None or len(shape) != 2:
                raise ValueError(f"x must have shape (n_samples, n_features), got shape {shape}")
            self.build(int(shape[1]))

    def _require_built(self) -> None:
        if not self.built:
            raise RuntimeError(
                "the model is not built yet: pass input_dim to Sequential, or call it on data"
            )

    # ------------------------------------------------------------------ weights
    @property
    def params(self) -> list[Array]:
        """The backend arrays [W1, b1, W2, b2, ...]: the model's own, not copies."""
        return [p for layer in self.layers for p in layer.params]

    @property
    def grads(self) -> list[Array]:
        """The gradient arrays [dW1, db1, ...] filled by the last backward pass."""
        return [g for layer in self.layers for g in layer.grads]

    def count_params(self) -> int:
        self._require_built()
        return sum(math.prod(p.shape) for p in self.params)

    def get_weights(self) -> list[Any]:
        """Host NumPy copies of [W1, b1, W2, b2, ...]: W^l (n_in, n_out), b^l (n_out,)."""
        self._require_built()
        return [self.backend.to_numpy(p).copy() for p in self.params]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace the weights with host arrays in get_weights' order and shapes.

        Every array is checked before any is written, so a bad list changes nothing.
        """
        self._require_built()
        current = self.params
        weights = list(weights)
        if len(weights) != len(current):
            raise ValueError(
                f"weights must be a list of {len(current)} arrays [W1, b1, ...], got {len(weights)}"
            )
        staged = [
            data.check_weight(self.backend, w, tuple(p.shape), i)
            for i, (w, p) in enumerate(zip(weights, current, strict=True))
        ]
        for new, p in zip(staged, current, strict=True):
            self.backend.copy(new, out=p)

    # ------------------------------------------------------------------ backprop
    def _forward(self, X: Array) -> Array:
        a = X
        for layer in self.layers:
            a = layer.forward(a)
        return a

    def _cost(self, Y: Array, loss: Loss, shortcut: bool = True) -> Array:
        """The mean batch cost of the last forward pass (0-d, on the device), L2 included."""
        out = self.layers[-1]
        cost = output_cost(self.backend, out.activation, loss, out.z, out.a, Y, shortcut)
        for layer in self.layers:
            if layer.l2:
                cost = cost + layer.l2 * self.backend.sum(layer.W * layer.W)
        return cost

    def _backward(self, Y: Array, loss: Loss, shortcut: bool = True) -> None:
        """Fill every layer's dW and db from the last forward pass: delta^L, then down."""
        be, out = self.backend, self.layers[-1]
        delta = output_delta(be, out.activation, loss, out.z, out.a, Y, shortcut)
        da = out.backward_delta(delta, need_da_prev=len(self.layers) > 1)
        for depth in range(len(self.layers) - 2, -1, -1):
            da = self.layers[depth].backward(da, need_da_prev=depth > 0)

    def _loss(self, loss: str | Loss | None) -> Loss:
        if loss is not None:
            return get_loss(loss)
        if self.loss is None:
            raise RuntimeError("no loss: pass loss=... or call compile(loss=...) first")
        return self.loss

    def _device_data(self, x: Any, y: Any, loss: Loss) -> tuple[Array, Array]:
        self._ensure_built(x)
        X = data.check_x(self.backend, x, self.input_dim, "x")
        Y = data.check_y(self.backend, y, loss, self.output_dim, int(X.shape[0]), "y")
        return X, Y

    def gradients(
        self, x: Any, y: Any, loss: str | Loss | None = None, shortcut: bool = True
    ) -> list[Any]:
        """The gradient of the mean batch cost over (x, y), as host arrays in get_weights'
        order [dC/dW1, dC/db1, ...]. `loss` defaults to the compiled loss; `shortcut=False`
        forces the general output delta (for testing the closed forms against it)."""
        loss = self._loss(loss)
        X, Y = self._device_data(x, y, loss)
        self._forward(X)
        self._backward(Y, loss, shortcut)
        return [self.backend.to_numpy(g).copy() for g in self.grads]

    def cost(self, x: Any, y: Any, loss: str | Loss | None = None) -> float:
        """The mean cost over (x, y) as a host float (L2 terms included)."""
        loss = self._loss(loss)
        X, Y = self._device_data(x, y, loss)
        self._forward(X)
        return float(self.backend.to_numpy(self._cost(Y, loss)))
