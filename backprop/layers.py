"""The dense layer, batch-first, written as the derivation writes it.

    forward:   z = a_prev @ W + b           a = f(z)
    backward:  delta = f'(z) * da           (da = dC/da, delta = dC/dz)
               dW = a_prev.T @ delta        db = sum of delta over the batch
               da_prev = delta @ W.T

W has shape (n_in, units * pieces), b has shape (units * pieces,); pieces is 1 except for
maxout. Each layer keeps its own forward cache (a_prev, z, a) for the backward pass, and
preallocated workspaces per batch size so a training step allocates no batch-sized arrays on
backends that write in place.
"""

from __future__ import annotations

import numbers
from typing import Any

from backends import Array, Backend

from .activations import Activation, get_activation
from .initializers import get_initializer


class Dense:
    """A fully connected layer: `units` outputs, activation f, weights W and bias b.

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : str, dict or Activation
        By name ("sigmoid", "relu", "softmax", "maxout", ...), config or object; None is linear.
    kernel_initializer, bias_initializer : str
        "glorot_uniform" (default for W), "he_normal", "normal" (std 1/sqrt(n_in)), "zeros"
        (default for b).
    l2 : float
        L2 regularization strength: adds l2 * sum(W^2) to the cost (Keras's convention), so
        dW gains 2 * l2 * W. Biases are not regularized.
    """

    units: int
    activation: Activation
    kernel_initializer: str
    bias_initializer: str
    l2: float
    built: bool

    def __init__(
        self,
        units: int,
        activation: str | dict[str, Any] | Activation | None = None,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        l2: float = 0.0,
    ) -> None:
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"units must be an integer >= 1, got {units!r}")
        if not (isinstance(l2, (int, float)) and l2 >= 0.0):
            raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
        self.units = int(units)
        self.activation = get_activation(activation)
        self.kernel_initializer = get_initializer(kernel_initializer).__name__
        self.bias_initializer = get_initializer(bias_initializer).__name__
        self.l2 = float(l2)
        self.built = False

    def __repr__(self) -> str:
        return f"Dense({self.units}, activation={self.activation.name!r})"

    @property
    def width(self) -> int:
        """Columns of W: units times the activation's pieces."""
        return self.units * self.activation.pieces

    def config(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "activation": self.activation.config(),
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "l2": self.l2,
        }

    def build(self, n_in: int, be: Backend, rng: Any) -> None:
        """Draw W and b on the host from `rng` (a seeded numpy.random.Generator), then move
        them to `be`."""
        self.be, self.n_in = be, n_in
        W = get_initializer(self.kernel_initializer)(rng, n_in, self.width)
        b = get_initializer(self.bias_initializer)(rng, 1, self.width)[0]
        self.W = be.asarray(W, dtype=be.dtype)
        self.b = be.asarray(b, dtype=be.dtype)
        self.dW = be.zeros((n_in, self.width))
        self.db = be.zeros((self.width,))
        self._workspaces: dict[int, dict[str, Array]] = {}
        self.built = True

    def bind(self, W: Array, b: Array, dW: Array, db: Array) -> None:
        """Keep W, b and their gradients in the given arrays (views into the model's flat
        parameter and gradient buffers), copying the current values of W and b into them."""
        be = self.be
        self.W, self.b = be.copy(self.W, out=W), be.copy(self.b, out=b)
        self.dW, self.db = dW, db

    @property
    def params(self) -> list[Array]:
        return [self.W, self.b]

    @property
    def grads(self) -> list[Array]:
        return [self.dW, self.db]

    def _workspace(self, batch: int) -> dict[str, Array]:
        ws = self._workspaces.get(batch)
        if ws is None:
            be = self.be
            ws = {
                "z": be.empty((batch, self.width)),
                "a": be.empty((batch, self.units)),
                "delta": be.empty((batch, self.width)),
                "da_prev": be.empty((batch, self.n_in)),
            }
            self._workspaces[batch] = ws
        return ws

    def forward(self, a_prev: Array, out: Array | None = None) -> Array:
        """a = f(a_prev @ W + b), keeping a_prev, z and a for the backward pass.

        `a` is written into `out` when given, else into this layer's workspace, where the next
        forward pass with the same batch size overwrites it: copy it to keep it.
        """
        be, ws = self.be, self._workspace(a_prev.shape[0])
        z = be.matmul(a_prev, self.W, out=ws["z"])
        # z += b and a = f(z) in one pass (one kernel on a GPU); z keeps a_prev W + b
        a = self.activation.forward(be, z, out=ws["a"] if out is None else out, bias=self.b)
        if out is not None and a is not out:  # an activation that returns z itself (linear)
            a = be.copy(a, out=out)
        self.a_prev, self.z, self.a = a_prev, z, a
        return a

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        """From da = dC/da, store dW and db and return dC/da_prev (None if not needed). db
        comes with delta, from the activation's backward pass (one kernel on a GPU)."""
        delta = self.activation.backward(
            self.be, self.z, self.a, da, out=self._ws_delta(), bias_grad=self.db
        )
        return self.backward_delta(delta, need_da_prev, has_db=True)

    def _ws_delta(self) -> Array:
        return self._workspace(self.z.shape[0])["delta"]

    def backward_delta(
        self, delta: Array, need_da_prev: bool = True, has_db: bool = False
    ) -> Array | None:
        """From delta = dC/dz: dW = a_prev.T @ delta, db = sum(delta) (unless `has_db`: it
        came with delta), da_prev = delta @ W.T."""
        be = self.be
        be.matmul(self.a_prev.T, delta, out=self.dW)
        if not has_db:
            be.sum(delta, axis=0, out=self.db)
        if self.l2:
            self.dW += (2.0 * self.l2) * self.W
        if not need_da_prev:
            return None
        return be.matmul(delta, self.W.T, out=self._workspace(delta.shape[0])["da_prev"])
