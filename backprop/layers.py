"""Layers, batch-first, each written as the derivation writes it, and the protocol they share.

The dense layer:

    forward:   z = a_prev @ W + b           a = f(z)
    backward:  delta = f'(z) * da           (da = dC/da, delta = dC/dz)
               dW = a_prev.T @ delta        db = sum of delta over the batch
               da_prev = delta @ W.T

W has shape (n_in, units * pieces), b has shape (units * pieces,); pieces is 1 except for
maxout. Each layer keeps its own forward cache for the backward pass, and preallocated
workspaces per batch size so a training step allocates no batch-sized arrays on backends
that write in place.

The protocol (`Layer`): a layer builds from the shape of one input sample and returns the
shape of one output sample; it owns zero or more parameters and their gradients, which the
model binds to views into its flat buffers; `forward` and `backward` are written against the
backend, with `training=True` only in training steps (Dropout acts only then); `config()`
rebuilds it, and `LAYERS` finds its class by name (as saved in a checkpoint).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from backends import Array, Backend

from . import data, regularizers
from .activations import ActivationFunction, get_activation
from .initializers import get_initializer
from .losses import Loss, output_delta
from .registry import lookup

Shape = tuple[int, ...]


def _shape(value: Any, name: str) -> Shape:
    """A per-sample shape: a positive int or a tuple of them."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value),)
    if not (
        isinstance(value, (tuple, list))
        and value
        and all(
            isinstance(d, numbers.Integral) and not isinstance(d, bool) and int(d) >= 1
            for d in value
        )
    ):
        raise ValueError(f"{name} must be a tuple of integers >= 1 such as (784,), got {value!r}")
    return tuple(int(d) for d in value)


class Layer:
    """The layer protocol; subclasses override what they need.

    After `build(input_shape, backend, rng)`: `input_shape` and `output_shape` (one sample's,
    without the batch axis), `params`/`grads` (backend arrays; views into the model's flat
    buffers once bound). `name` is unique within its model ("dense", "dense_1", ...).
    """

    #: parameters this kind of layer owns, in get_weights' order (Dense: ["kernel", "bias"])
    param_names: tuple[str, ...] = ()
    name: str | None
    a: Array  # the output of the last forward pass

    def __init__(self, name: str | None = None, input_shape: Any = None) -> None:
        if name is not None and not (isinstance(name, str) and name):
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.requested_input_shape = (
            None if input_shape is None else _shape(input_shape, "input_shape")
        )
        self.built = False
        self.params: list[Array] = []
        self.grads: list[Array] = []
        #: device arrays a step changes besides the parameters (Dropout's random-number
        #: counter): snapshotted and saved with them, so a replayed or resumed run repeats
        self.states: list[Array] = []
        self.owner: Any = None  # the network this layer belongs to

    # ------------------------------------------------------------------ building
    def build(self, input_shape: Shape, be: Backend, rng: Any) -> Shape:
        """Make the parameters (drawn from `rng`, a seeded host generator), return the output
        shape of one sample."""
        self.be, self.input_shape = be, tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        self.built = True
        return self.output_shape

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def bind(self, params: list[Array], grads: list[Array]) -> None:
        """Keep the parameters and gradients in the given arrays (views into the model's flat
        buffers), copying the parameters' current values into them."""
        be = self.be
        self.params = [be.copy(p, out=view) for p, view in zip(self.params, params, strict=True)]
        self.grads = list(grads)

    # ------------------------------------------------------------------ math
    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        """This layer's output for the batch x (written into `out` when given); `training`:
        as in a training step (Dropout drops), else as at inference."""
        raise NotImplementedError

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        """From da = dC/d(output): fill the gradients, return dC/d(input) (None if not
        needed)."""
        raise NotImplementedError

    def output_backward(
        self, loss: Loss, y: Array, shortcut: bool = True, need_da_prev: bool = True
    ) -> Array | None:
        """backward() as the model's last layer, from the loss: dC/d(output) first."""
        return self.backward(loss.gradient(self.be, self.a, y), need_da_prev)

    def l2_cost(self) -> Array | None:
        """This layer's regularization term of the cost (0-d), or None."""
        return None

    def release_input(self) -> None:
        """Forget the forward cache's reference to the input batch: as the first layer, it
        would keep the caller's (converted) x alive after predict or fit."""

    @property
    def has_l2(self) -> bool:
        return False

    # ------------------------------------------------------------------ Keras's API
    def get_weights(self) -> list[Any]:
        """Host copies of this layer's parameters (Dense: [W, b])."""
        return [self.be.to_numpy(p).copy() for p in self.params] if self.built else []

    def set_weights(self, weights: list[Any]) -> None:
        """Replace this layer's parameters with host arrays in get_weights' order; every one
        is checked before any is written."""
        if not self.built:
            raise RuntimeError(f"layer {self.name!r} is not built yet: build its model first")
        weights = list(weights)
        if len(weights) != len(self.params):
            raise ValueError(
                f"layer {self.name!r} takes {len(self.params)} arrays "
                f"({', '.join(self.param_names) or 'none'}), got {len(weights)}"
            )
        staged = [
            data.check_weight(self.be, w, tuple(p.shape), i)
            for i, (w, p) in enumerate(zip(weights, self.params, strict=True))
        ]
        for new, p in zip(staged, self.params, strict=True):
            self.be.copy(new, out=p)

    def count_params(self) -> int:
        return sum(math.prod(p.shape) for p in self.params)

    def config(self) -> dict[str, Any]:
        """What the constructor needs to rebuild this layer (saved with a model)."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        return cls(**config)

    def describe(self) -> str:
        """The summary's description: the layer's name and what it does."""
        return self.name or type(self).__name__.lower()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class _ActivationCache(Layer):
    """A layer whose output is an activation function of a pre-activation z: it can be the
    output layer of a fused loss shortcut (delta^L in one job)."""

    activation: ActivationFunction
    z: Any  # the pre-activations of the last forward pass (None once released)

    def _workspace(self, batch: int) -> dict[str, Array]:
        raise NotImplementedError

    def _ws_delta(self) -> Array:
        return self._workspace(self.z.shape[0])["delta"]

    def backward_delta(
        self, delta: Array, need_da_prev: bool = True, has_db: bool = False
    ) -> Array | None:
        raise NotImplementedError

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        """From da = dC/da: delta = f'(z) * da (with db, in one job where there is a bias),
        then the rest of backward_delta."""
        delta = self.activation.backward(
            self.be, self.z, self.a, da, out=self._ws_delta(), bias_grad=self._bias_grad()
        )
        return self.backward_delta(delta, need_da_prev, has_db=True)

    def _bias_grad(self) -> Array | None:
        return None

    def output_backward(
        self, loss: Loss, y: Array, shortcut: bool = True, need_da_prev: bool = True
    ) -> Array | None:
        delta = output_delta(
            self.be,
            self.activation,
            loss,
            self.z,
            self.a,
            y,
            shortcut,
            out=self._ws_delta(),
            bias_grad=self._bias_grad(),
        )
        return self.backward_delta(delta, need_da_prev, has_db=True)


class Dense(_ActivationCache):
    """A fully connected layer: `units` outputs, activation f, weights W and bias b.

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : str, dict or ActivationFunction
        By name ("sigmoid", "relu", "softmax", "maxout", ...), config or object; None is linear.
    kernel_initializer, bias_initializer : str
        "glorot_uniform" (default for W), "he_normal", "normal" (std 1/sqrt(n_in)), "zeros"
        (default for b).
    l2 : float
        L2 regularization strength: adds l2 * sum(W^2) to the cost (Keras's convention), so
        dW gains 2 * l2 * W; the shorthand for kernel_regularizer=regularizers.L2(l2).
    kernel_regularizer, bias_regularizer : Regularizer, str or None
        Keras's: a penalty on W (or b) added to the cost, its gradient to dW (or db), e.g.
        regularizers.l2(1e-4), regularizers.l1_l2(l1=1e-5, l2=1e-4).
    input_dim, input_shape : int or tuple, optional
        The input size, for the first layer of a model (Keras's spelling): input_dim=784 is
        input_shape=(784,).
    name : str, optional
        Unique within the model; by default "dense", "dense_1", ...
    """

    param_names = ("kernel", "bias")
    units: int
    kernel_initializer: str
    bias_initializer: str
    kernel_regularizer: regularizers.Regularizer | None
    bias_regularizer: regularizers.Regularizer | None
    a_prev: Any  # the input of the last forward pass (None once released)

    def __init__(
        self,
        units: int,
        activation: str | dict[str, Any] | ActivationFunction | None = None,
        kernel_initializer: str = "glorot_uniform",
        bias_initializer: str = "zeros",
        l2: float = 0.0,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        input_dim: int | None = None,
        input_shape: Any = None,
        name: str | None = None,
    ) -> None:
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"units must be an integer >= 1, got {units!r}")
        if not (isinstance(l2, (int, float)) and l2 >= 0.0):
            raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
        if l2 and kernel_regularizer is not None:
            raise ValueError("give l2 or kernel_regularizer, not both (l2=x is L2(x))")
        if input_dim is not None and input_shape is not None:
            raise ValueError("give input_dim or input_shape, not both")
        super().__init__(name, input_shape if input_dim is None else _shape(input_dim, "input_dim"))
        self.units = int(units)
        self.activation = get_activation(activation)
        self.kernel_initializer = get_initializer(kernel_initializer).__name__
        self.bias_initializer = get_initializer(bias_initializer).__name__
        kernel = regularizers.L2(float(l2)) if l2 else kernel_regularizer
        self.kernel_regularizer = regularizers.get(kernel)
        self.bias_regularizer = regularizers.get(bias_regularizer)

    def __repr__(self) -> str:
        return f"Dense({self.units}, activation={self.activation.name!r})"

    def describe(self) -> str:
        return f"{self.name} ({self.activation.name})"

    @property
    def width(self) -> int:
        """Columns of W: units times the activation's pieces."""
        return self.units * self.activation.pieces

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "units": self.units,
            "activation": self.activation.config(),
            "kernel_initializer": self.kernel_initializer,
            "bias_initializer": self.bias_initializer,
            "kernel_regularizer": regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "name": self.name,
        }
        if self.requested_input_shape is not None:
            config["input_shape"] = list(self.requested_input_shape)
        return config

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ValueError(
                f"Dense takes flat samples, but its input has shape {input_shape} per sample: "
                "put Flatten() before it"
            )
        return (self.units,)

    def build(self, input_shape: Shape, be: Backend, rng: Any) -> Shape:
        """Draw W and b on the host from `rng` (a seeded numpy.random.Generator), then move
        them to `be`."""
        shape = super().build(input_shape, be, rng)
        n_in = self.n_in = input_shape[0]
        W = get_initializer(self.kernel_initializer)(rng, n_in, self.width)
        b = get_initializer(self.bias_initializer)(rng, 1, self.width)[0]
        self.params = [be.asarray(W, dtype=be.dtype), be.asarray(b, dtype=be.dtype)]
        self.grads = [be.zeros((n_in, self.width)), be.zeros((self.width,))]
        self._workspaces: dict[int, dict[str, Array]] = {}
        return shape

    @property
    def W(self) -> Array:
        return self.params[0]

    @property
    def b(self) -> Array:
        return self.params[1]

    @property
    def dW(self) -> Array:
        return self.grads[0]

    @property
    def db(self) -> Array:
        return self.grads[1]

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

    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        """a = f(x @ W + b), keeping x (as a_prev), z and a for the backward pass.

        `a` is written into `out` when given, else into this layer's workspace, where the next
        forward pass with the same batch size overwrites it: copy it to keep it.
        """
        be, ws = self.be, self._workspace(x.shape[0])
        z = be.matmul(x, self.W, out=ws["z"])
        # z += b and a = f(z) in one pass (one kernel on a GPU); z keeps a_prev W + b
        a = self.activation.forward(be, z, out=ws["a"] if out is None else out, bias=self.b)
        if out is not None and a is not out:  # an activation that returns z itself (linear)
            a = be.copy(a, out=out)
        self.a_prev, self.z, self.a = x, z, a
        return a

    def _bias_grad(self) -> Array | None:
        return self.db

    def release_input(self) -> None:
        self.a_prev = None

    def backward_delta(
        self, delta: Array, need_da_prev: bool = True, has_db: bool = False
    ) -> Array | None:
        """From delta = dC/dz: dW = a_prev.T @ delta, db = sum(delta) (unless `has_db`: it
        came with delta), da_prev = delta @ W.T."""
        be = self.be
        be.matmul(self.a_prev.T, delta, out=self.dW)
        if not has_db:
            be.sum(delta, axis=0, out=self.db)
        if self.kernel_regularizer is not None:
            be.add(self.dW, self.kernel_regularizer.gradient(be, self.W), out=self.dW)
        if self.bias_regularizer is not None:
            be.add(self.db, self.bias_regularizer.gradient(be, self.b), out=self.db)
        if not need_da_prev:
            return None
        return be.matmul(delta, self.W.T, out=self._workspace(delta.shape[0])["da_prev"])

    @property
    def has_l2(self) -> bool:
        return self.kernel_regularizer is not None or self.bias_regularizer is not None

    def l2_cost(self) -> Array | None:
        """The regularizers' penalties (L1, L2 or both) on W and b, 0-d, or None."""
        terms = [
            reg.penalty(self.be, p)
            for reg, p in ((self.kernel_regularizer, self.W), (self.bias_regularizer, self.b))
            if reg is not None
        ]
        return None if not terms else terms[0] if len(terms) == 1 else terms[0] + terms[1]


class Activation(_ActivationCache):
    """An activation function as a layer of its own: a = f(x), for models written as
    Dense(10) followed by Activation("softmax") (Keras's style). No parameters."""

    def __init__(
        self,
        activation: str | dict[str, Any] | ActivationFunction,
        name: str | None = None,
        input_shape: Any = None,
    ) -> None:
        super().__init__(name, input_shape)
        self.activation = get_activation(activation)
        if self.activation.pieces != 1:
            raise ValueError("maxout changes the width: use it inside Dense(units, 'maxout')")

    def __repr__(self) -> str:
        return f"Activation({self.activation.name!r})"

    def describe(self) -> str:
        return f"{self.name} ({self.activation.name})"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"activation": self.activation.config(), "name": self.name}
        if self.requested_input_shape is not None:
            config["input_shape"] = list(self.requested_input_shape)
        return config

    def build(self, input_shape: Shape, be: Backend, rng: Any) -> Shape:
        shape = super().build(input_shape, be, rng)
        self._workspaces: dict[int, dict[str, Array]] = {}
        return shape

    def _workspace(self, batch: int) -> dict[str, Array]:
        ws = self._workspaces.get(batch)
        if ws is None:
            be = self.be
            full = (batch, *self.input_shape)
            ws = {"a": be.empty(full), "delta": be.empty(full)}
            self._workspaces[batch] = ws
        return ws

    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        be, ws = self.be, self._workspace(x.shape[0])
        z = x  # the input is z (read, never written: no bias here)
        a = self.activation.forward(be, z, out=ws["a"] if out is None else out)
        if out is not None and a is not out:
            a = be.copy(a, out=out)
        self.z, self.a = z, a
        return a

    def backward_delta(
        self, delta: Array, need_da_prev: bool = True, has_db: bool = False
    ) -> Array | None:
        """dC/d(input) is delta = dC/dz itself: the input is z."""
        return delta if need_da_prev else None

    def release_input(self) -> None:
        self.z = None


class Dropout(Layer):
    """Inverted dropout (Srivastava et al., 2014): in training steps each value is kept with
    probability 1 - rate and scaled by 1 / (1 - rate), so inference, which keeps everything
    unscaled, needs no change; backward passes da through the same mask.

    The random numbers come from a counter-based generator on the device
    (`Backend.dropout`): a (seed, counter) pair in a small device array, the counter advanced
    by one each training step, so a step reads nothing from the host and every backend draws
    the same masks for the same seed. `seed` defaults to one drawn from the model's seeded
    generator, so the model's seed makes the whole run reproducible.
    """

    def __init__(
        self,
        rate: float,
        seed: int | None = None,
        name: str | None = None,
        input_shape: Any = None,
    ) -> None:
        if isinstance(rate, bool) or not (isinstance(rate, (int, float)) and 0.0 <= rate < 1.0):
            raise ValueError(f"rate must be a number in [0, 1), got {rate!r}")
        if seed is not None and not (
            isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and 0 <= seed < 2**32
        ):
            raise ValueError(f"seed must be an integer in [0, 2**32) or None, got {seed!r}")
        super().__init__(name, input_shape)
        self.rate = float(rate)
        self.seed = None if seed is None else int(seed)

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"

    def describe(self) -> str:
        return f"{self.name} (rate {self.rate:g})"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"rate": self.rate, "seed": self.seed, "name": self.name}
        if self.requested_input_shape is not None:
            config["input_shape"] = list(self.requested_input_shape)
        return config

    def build(self, input_shape: Shape, be: Backend, rng: Any) -> Shape:
        shape = super().build(input_shape, be, rng)
        seed = int(rng.integers(2**32)) if self.seed is None else self.seed
        # (seed, counter) on the device: the counter is this layer's step count
        self.key = be.asarray([seed, 0], dtype="uint32")
        self.states = [self.key]
        self._workspaces: dict[int, dict[str, Array]] = {}
        return shape

    def _workspace(self, batch: int) -> dict[str, Array]:
        ws = self._workspaces.get(batch)
        if ws is None:
            be, full = self.be, (batch, *self.input_shape)
            ws = {"a": be.empty(full), "mask": be.empty(full), "delta": be.empty(full)}
            self._workspaces[batch] = ws
        return ws

    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        be = self.be
        self.dropping = training and self.rate > 0.0
        if not self.dropping:  # inference: the identity
            self.a = x if out is None else be.copy(x, out=out)
            return self.a
        ws = self._workspace(x.shape[0])
        self.a, self.mask = be.dropout(
            x, self.key, self.rate, out=ws["a"] if out is None else out, mask=ws["mask"]
        )
        counter = self.key[1:]
        be.add(counter, 1, out=counter)  # the next step's numbers (in place, on the device)
        return self.a

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        if not need_da_prev:
            return None
        if not self.dropping:
            return da
        return self.be.multiply(da, self.mask, out=self._workspace(da.shape[0])["delta"])


class Flatten(Layer):
    """Each sample as one flat row: (batch, 28, 28) -> (batch, 784), a view. No parameters."""

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name}
        if self.requested_input_shape is not None:
            config["input_shape"] = list(self.requested_input_shape)
        return config

    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        flat = self.be.reshape(x, (int(x.shape[0]), *self.output_shape))
        self.a = flat if out is None else self.be.copy(flat, out=out)
        return self.a

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        if not need_da_prev:
            return None
        return self.be.reshape(da, (int(da.shape[0]), *self.input_shape))


class Input:
    """Keras's Input(shape=...): the shape of one input sample, as a model's first element
    (Sequential([Input(shape=(784,)), Dense(...), ...])). Not a layer: it computes nothing."""

    def __init__(self, shape: Any, name: str | None = None) -> None:
        self.shape = _shape(shape, "shape")
        self.name = name

    def __repr__(self) -> str:
        return f"Input(shape={self.shape})"


LAYERS: dict[str, type[Layer]] = {
    cls.__name__.lower(): cls for cls in (Dense, Activation, Dropout, Flatten)
}


def register_layer(cls: type[Layer]) -> type[Layer]:
    """Make a Layer subclass loadable from checkpoints by its class name."""
    LAYERS[cls.__name__.lower()] = cls
    return cls


def layer_from_config(kind: str, config: dict[str, Any]) -> Layer:
    """Rebuild a layer saved as (class name, config)."""
    return lookup(LAYERS, "layer", kind).from_config(dict(config))


def __getattr__(name: str) -> Any:
    """`from backprop.layers import Conv2D`: an ImportError that says which layers exist
    (a Keras layer name, capitalized; other missing names are plain AttributeErrors)."""
    if name[:1].isupper():
        have = ", ".join(n for n in __all__ if n[:1].isupper() and n != "LAYERS")
        raise ImportError(
            f"backprop.layers has no layer {name!r}: this library builds multilayer "
            f"perceptrons, and its layers are {have}"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LAYERS",
    "Activation",
    "Dense",
    "Dropout",
    "Flatten",
    "Input",
    "Layer",
    "layer_from_config",
    "register_layer",
]
