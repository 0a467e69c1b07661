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

import numpy as np

from backends import Array, Backend

from . import data, regularizers
from .activations import ActivationFunction, get_activation
from .checks import is_number
from .initializers import get_initializer, serialize_initializer
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
        #: Keras's layer.trainable: False keeps every parameter as it is through training
        #: (the network puts frozen ones back after each update; see Network.keep_frozen)
        self.trainable = True

    #: zeros the network keeps after this layer's parameters in its flat buffers (a nested
    #: model's spare slot, see network.ModelLayer)
    spare_slots = 0
    #: whether a training step's output depends on the other samples of the batch (batch
    #: normalization): such a layer cannot be split over data-parallel ranks as it is
    uses_batch_statistics = False

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

    def bind_flat(self, params: Array, grads: Array) -> None:
        """The stretch of the model's flat buffers that holds this layer's parameters (and
        its spare slots) and their gradients, after `bind`: a nested model adopts it."""

    def trainable_mask(self) -> list[bool]:
        """For each parameter, in `params`' order: whether training updates it."""
        return [bool(self.trainable)] * len(self.params)

    @property
    def weights(self) -> list[Array]:
        """Keras's layer.weights: every parameter array (backend arrays, not copies)."""
        return list(self.params)

    @property
    def trainable_weights(self) -> list[Array]:
        """The parameters training updates (none while `trainable` is False)."""
        return [p for p, t in zip(self.params, self.trainable_mask(), strict=True) if t]

    @property
    def non_trainable_weights(self) -> list[Array]:
        """The parameters training leaves as they are (BatchNormalization's moving
        statistics; all of them while `trainable` is False)."""
        return [p for p, t in zip(self.params, self.trainable_mask(), strict=True) if not t]

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

    def penalty_config(self) -> tuple[Any, ...]:
        """Its regularizers' settings (a recorded step holds them as constants)."""
        return ()

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

    def get_config(self) -> dict[str, Any]:
        """Keras's get_config: the constructor's arguments and `trainable`; from_config
        rebuilds the layer (unbuilt: weights are not part of it)."""
        return {**self.config(), "trainable": bool(self.trainable)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        config = dict(config)
        trainable = config.pop("trainable", True)
        if not isinstance(trainable, bool):
            raise ValueError(f"trainable must be True or False, got {trainable!r}")
        layer = cls(**config)
        layer.trainable = trainable
        return layer

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
    delta: Any = None  # dC/dz of the last backward pass (read by backprop.trace, GradientNorms)

    def _workspace(self, batch: int) -> dict[str, Array]:
        raise NotImplementedError

    def _ws_delta(self) -> Array:
        return self._workspace(self.z.shape[0])["delta"]

    def _ws_loss_gradient(self) -> Array:
        """As the output layer: the workspace dC/da goes into where the loss has no closed-form
        delta (made on first use: only the last layer needs one)."""
        ws = self._workspace(self.z.shape[0])
        if "loss_gradient" not in ws:
            ws["loss_gradient"] = self.be.empty(tuple(self.a.shape))
        return ws["loss_gradient"]

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
        self.delta = delta
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
            da_out=self._ws_loss_gradient,
        )
        self.delta = delta
        return self.backward_delta(delta, need_da_prev, has_db=True)


class Dense(_ActivationCache):
    """A fully connected layer: `units` outputs, activation f, weights W and bias b.

    Parameters
    ----------
    units : int
        Number of outputs.
    activation : str, dict or ActivationFunction
        By name ("sigmoid", "relu", "softmax", "maxout", ...), config or object; None is linear.
    use_bias : bool
        False: no b (z = a_prev W), as before a BatchNormalization layer.
    kernel_initializer, bias_initializer : str or initializer object
        "glorot_uniform" (default for W), "he_normal", "lecun_normal", "normal" (std
        1/sqrt(n_in)), "zeros" (default for b), ..., or an object such as HeNormal() or
        GlorotUniform(seed=1) (backprop.initializers).
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
    use_bias: bool
    kernel_initializer: Any
    bias_initializer: Any
    kernel_regularizer: regularizers.Regularizer | None
    bias_regularizer: regularizers.Regularizer | None
    a_prev: Any  # the input of the last forward pass (None once released)

    def __init__(
        self,
        units: int,
        activation: str | dict[str, Any] | ActivationFunction | None = None,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        l2: float = 0.0,
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        input_dim: int | None = None,
        input_shape: Any = None,
        name: str | None = None,
        use_bias: bool = True,
    ) -> None:
        if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units < 1:
            raise ValueError(f"units must be an integer >= 1, got {units!r}")
        if not (is_number(l2) and l2 >= 0.0):
            raise ValueError(f"l2 must be a number >= 0, got {l2!r}")
        if l2 and kernel_regularizer is not None:
            raise ValueError("give l2 or kernel_regularizer, not both (l2=x is L2(x))")
        if input_dim is not None and input_shape is not None:
            raise ValueError("give input_dim or input_shape, not both")
        super().__init__(name, input_shape if input_dim is None else _shape(input_dim, "input_dim"))
        if not isinstance(use_bias, bool):
            raise ValueError(f"use_bias must be True or False, got {use_bias!r}")
        self.units = int(units)
        self.activation = get_activation(activation)
        self.kernel_initializer = get_initializer(kernel_initializer)
        self.bias_initializer = get_initializer(bias_initializer)
        self.use_bias = use_bias
        self.param_names = ("kernel", "bias") if use_bias else ("kernel",)
        kernel = regularizers.L2(float(l2)) if l2 else kernel_regularizer
        self.kernel_regularizer = regularizers.get(kernel)
        # Keras: a layer without a bias has nothing for bias_regularizer to act on
        self.bias_regularizer = regularizers.get(bias_regularizer) if use_bias else None

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
            "activation": self.activation.serialize(),
            "use_bias": self.use_bias,
            "kernel_initializer": serialize_initializer(self.kernel_initializer),
            "bias_initializer": serialize_initializer(self.bias_initializer),
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
        W = self.kernel_initializer(rng, n_in, self.width)
        self.params = [be.asarray(W, dtype=be.dtype)]
        self.grads = [be.zeros((n_in, self.width))]
        if self.use_bias:
            b = self.bias_initializer(rng, 1, self.width)[0]
            self.params.append(be.asarray(b, dtype=be.dtype))
            self.grads.append(be.zeros((self.width,)))
        self._workspaces: dict[int, dict[str, Array]] = {}
        return shape

    @property
    def W(self) -> Array:
        return self.params[0]

    @property
    def b(self) -> Array | None:
        return self.params[1] if self.use_bias else None

    @property
    def dW(self) -> Array:
        return self.grads[0]

    @property
    def db(self) -> Array | None:
        return self.grads[1] if self.use_bias else None

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
        if not has_db and self.db is not None:
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

    def penalty_config(self) -> tuple[Any, ...]:
        regs = (self.kernel_regularizer, self.bias_regularizer)
        return tuple(regularizers.serialize(r) for r in regs)

    def l2_cost(self) -> Array | None:
        """The regularizers' penalties (L1, L2 or both) on W and b, 0-d, or None."""
        terms = [
            reg.penalty(self.be, p)
            for reg, p in ((self.kernel_regularizer, self.W), (self.bias_regularizer, self.b))
            if reg is not None
        ]
        return None if not terms else terms[0] if len(terms) == 1 else self.be.add(*terms)


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
        config: dict[str, Any] = {"activation": self.activation.serialize(), "name": self.name}
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


def _with_input_shape(layer: Layer, config: dict[str, Any]) -> dict[str, Any]:
    if layer.requested_input_shape is not None:
        config["input_shape"] = list(layer.requested_input_shape)
    return config


class Softmax(Activation):
    """Keras's Softmax layer: softmax over the last axis, as a layer of its own (the
    tutorial's `Sequential([model, Softmax()])` "probability model"). As the last layer with
    cross-entropy, the loss takes its fused shortcut as Dense(..., "softmax") does."""

    def __init__(self, axis: int = -1, name: str | None = None, input_shape: Any = None) -> None:
        if axis not in (-1, 1):
            raise ValueError(f"axis must be -1 (the features of flat samples), got {axis!r}")
        super().__init__("softmax", name, input_shape)

    def __repr__(self) -> str:
        return "Softmax()"

    def config(self) -> dict[str, Any]:
        return _with_input_shape(self, {"axis": -1, "name": self.name})


class ReLU(Activation):
    """Keras's ReLU layer: max(x, 0)."""

    def __init__(self, name: str | None = None, input_shape: Any = None) -> None:
        super().__init__("relu", name, input_shape)

    def __repr__(self) -> str:
        return "ReLU()"

    def config(self) -> dict[str, Any]:
        return _with_input_shape(self, {"name": self.name})


class LeakyReLU(Activation):
    """Keras's LeakyReLU layer: x where x > 0 else negative_slope * x (Keras 3's default
    0.3; Keras 2's `alpha=` is accepted too)."""

    def __init__(
        self,
        negative_slope: float = 0.3,
        name: str | None = None,
        input_shape: Any = None,
        alpha: float | None = None,
    ) -> None:
        slope = negative_slope if alpha is None else alpha
        if isinstance(slope, bool) or not (isinstance(slope, (int, float)) and slope >= 0):
            raise ValueError(f"negative_slope must be a number >= 0, got {slope!r}")
        super().__init__({"name": "leaky_relu", "alpha": float(slope)}, name, input_shape)
        self.negative_slope = float(slope)

    def __repr__(self) -> str:
        return f"LeakyReLU(negative_slope={self.negative_slope})"

    def config(self) -> dict[str, Any]:
        return _with_input_shape(self, {"negative_slope": self.negative_slope, "name": self.name})


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
        if not (is_number(rate) and 0.0 <= rate < 1.0):
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


class BatchNormalization(Layer):
    """Batch normalization (Ioffe and Szegedy, 2015), Keras's defaults and names.

    In a training step each feature is normalized with the batch's statistics,
    x_hat = (x - mean) / sqrt(var + epsilon) (the biased variance), then out = gamma x_hat +
    beta, and the moving statistics become momentum * moving + (1 - momentum) * batch's. At
    inference (and while `trainable` is False, as in Keras) the moving statistics are used
    instead. Each direction of a training step is one backend job (one kernel on CuPy).

    Weights, in Keras's order: gamma (with `scale`), beta (with `center`), moving_mean,
    moving_variance; the last two are non-trainable (updated by the forward pass, not the
    optimizer), saved and restored with the others.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        name: str | None = None,
        input_shape: Any = None,
    ) -> None:
        if axis not in (-1, 1):
            raise ValueError(f"axis must be -1 (the features of flat samples), got {axis!r}")
        if isinstance(momentum, bool) or not (
            isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0
        ):
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        if isinstance(epsilon, bool) or not (isinstance(epsilon, (int, float)) and epsilon > 0):
            raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}")
        for arg, value in (("center", center), ("scale", scale)):
            if not isinstance(value, bool):
                raise ValueError(f"{arg} must be True or False, got {value!r}")
        super().__init__(name, input_shape)
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = center, scale
        self.param_names = (
            *(("gamma",) if scale else ()),
            *(("beta",) if center else ()),
            "moving_mean",
            "moving_variance",
        )

    uses_batch_statistics = True

    def __repr__(self) -> str:
        return f"BatchNormalization(momentum={self.momentum}, epsilon={self.epsilon})"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"axis": -1, "momentum": self.momentum, "epsilon": self.epsilon}
        config.update(center=self.center, scale=self.scale, name=self.name)
        return _with_input_shape(self, config)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        if len(input_shape) != 1:
            raise ValueError(
                f"BatchNormalization takes flat samples, but its input has shape {input_shape} "
                "per sample: put Flatten() before it"
            )
        return input_shape

    def build(self, input_shape: Shape, be: Backend, rng: Any) -> Shape:
        shape = super().build(input_shape, be, rng)
        n = shape[0]
        self.ones, self.zeros = be.full((n,), 1.0), be.zeros((n,))
        values = [1.0] * self.scale + [0.0] * self.center + [0.0, 1.0]
        self.params = [be.full((n,), v) for v in values]
        self.grads = [be.zeros((n,)) for _ in values]
        self.inv_std = be.empty((n,))
        self._unused = [be.zeros((n,)), be.zeros((n,))]  # dgamma, dbeta without scale, center
        self._workspaces: dict[int, dict[str, Array]] = {}
        return shape

    def trainable_mask(self) -> list[bool]:
        return [bool(self.trainable)] * (len(self.params) - 2) + [False, False]

    def _vectors(self) -> tuple[Array, Array, Array, Array, Array, Array]:
        """gamma, beta (ones and zeros where absent), their gradients (unused arrays where
        absent), the moving mean and variance."""
        params, grads = self.params, self.grads
        gamma, dgamma = (params[0], grads[0]) if self.scale else (self.ones, self._unused[0])
        k = int(self.scale)
        beta, dbeta = (params[k], grads[k]) if self.center else (self.zeros, self._unused[1])
        return gamma, beta, dgamma, dbeta, params[-2], params[-1]

    def _workspace(self, batch: int) -> dict[str, Array]:
        ws = self._workspaces.get(batch)
        if ws is None:
            be, full = self.be, (batch, *self.input_shape)
            ws = {"a": be.empty(full), "x_hat": be.empty(full), "delta": be.empty(full)}
            self._workspaces[batch] = ws
        return ws

    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        be, ws = self.be, self._workspace(x.shape[0])
        gamma, beta, _, _, mean, var = self._vectors()
        a = ws["a"] if out is None else out
        self.batch_statistics = training and self.trainable
        if self.batch_statistics:
            be.batch_norm(
                x, gamma, beta, mean, var, self.momentum, self.epsilon, a, ws["x_hat"], self.inv_std
            )
        else:  # the moving statistics: an affine map per feature
            inv_std = be.sqrt(be.add(var, self.epsilon, out=self.inv_std), out=self.inv_std)
            be.divide(self.ones, inv_std, out=inv_std)
            x_hat = be.multiply(be.subtract(x, mean, out=ws["x_hat"]), inv_std, out=ws["x_hat"])
            be.add(be.multiply(x_hat, gamma, out=a), beta, out=a)
        self.a = a
        return a

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        be, ws = self.be, self._workspace(da.shape[0])
        gamma, _, dgamma, dbeta, _, _ = self._vectors()
        if self.batch_statistics:
            delta, _, _ = be.batch_norm_backward(
                da, ws["x_hat"], gamma, self.inv_std, ws["delta"], dgamma, dbeta
            )
            return delta if need_da_prev else None
        # the statistics are constants here: out = gamma inv_std (x - mean) + beta
        be.sum(be.multiply(da, ws["x_hat"], out=ws["delta"]), axis=0, out=dgamma)
        be.sum(da, axis=0, out=dbeta)
        if not need_da_prev:
            return None
        delta = be.multiply(da, self.inv_std, out=ws["delta"])
        return be.multiply(delta, gamma, out=delta)


class Normalization(Layer):
    """Keras's Normalization: (x - mean) / max(sqrt(variance), 1e-7) per feature, with the
    mean and variance given or learned from data by `adapt(x)` (on the host, once, before
    training). They are non-trainable weights, saved and loaded with the model."""

    epsilon = 1e-7

    def __init__(
        self,
        axis: int = -1,
        mean: Any = None,
        variance: Any = None,
        name: str | None = None,
        input_shape: Any = None,
    ) -> None:
        if axis not in (-1, 1):
            raise ValueError(f"axis must be -1 (the features of flat samples), got {axis!r}")
        if (mean is None) != (variance is None):
            raise ValueError("give both mean and variance, or neither (then call adapt(x))")
        super().__init__(name, input_shape)
        self.param_names = ("mean", "variance")
        self._given = None if mean is None else (_host_vector(mean), _host_vector(variance))
        self.adapted = mean is not None

    def __repr__(self) -> str:
        return "Normalization()"

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"axis": -1, "name": self.name}
        if self._given is not None and not self.built:
            config.update(mean=self._given[0].tolist(), variance=self._given[1].tolist())
        return _with_input_shape(self, config)

    def trainable_mask(self) -> list[bool]:
        return [False, False]

    def adapt(self, data_x: Any) -> None:
        """Learn each feature's mean and (biased) variance from `data_x` (n, features): a host
        array (or one of the model's backend)."""
        on_device = self.built and self.be.is_array(data_x)
        x = self.be.to_numpy(data_x) if on_device else np.asarray(data_x, dtype=np.float64)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"adapt takes x of shape (n_samples, n_features), got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("adapt: x holds NaN or infinite values")
        mean, variance = x.mean(axis=0), x.var(axis=0)
        if self.built:
            if mean.shape != tuple(self.params[0].shape):
                raise ValueError(
                    f"adapt got {mean.shape[0]} features, but the layer was built for "
                    f"{self.params[0].shape[0]}"
                )
            self.set_weights([mean, variance])
        else:
            self._given = (mean, variance)
        self.adapted = True

    def build(self, input_shape: Shape, be: Backend, rng: Any) -> Shape:
        shape = super().build(input_shape, be, rng)
        if len(shape) != 1:
            raise ValueError(
                f"Normalization takes flat samples, but its input has shape {shape} per "
                "sample: put Flatten() before it"
            )
        n = shape[0]
        mean, variance = self._given if self._given is not None else (np.zeros(n), np.ones(n))
        if mean.shape != (n,):
            raise ValueError(f"mean and variance have {mean.shape[0]} features, the input {n}")
        self.params = [be.asarray(mean, dtype=be.dtype), be.asarray(variance, dtype=be.dtype)]
        self.grads = [be.zeros((n,)), be.zeros((n,))]
        self.scale = be.empty((n,))
        self.ones = be.full((n,), 1.0)
        self._workspaces: dict[int, dict[str, Array]] = {}
        return shape

    def _workspace(self, batch: int) -> dict[str, Array]:
        ws = self._workspaces.get(batch)
        if ws is None:
            full = (batch, *self.input_shape)
            ws = self._workspaces[batch] = {"a": self.be.empty(full), "delta": self.be.empty(full)}
        return ws

    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        be, ws = self.be, self._workspace(x.shape[0])
        mean, variance = self.params
        scale = be.maximum(be.sqrt(variance, out=self.scale), self.epsilon, out=self.scale)
        be.divide(self.ones, scale, out=scale)  # 1 / max(sqrt(variance), epsilon)
        a = ws["a"] if out is None else out
        self.a = be.multiply(be.subtract(x, mean, out=a), scale, out=a)
        return self.a

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        if not need_da_prev:
            return None
        return self.be.multiply(da, self.scale, out=self._workspace(da.shape[0])["delta"])


def _host_vector(values: Any) -> Any:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(vector)):
        raise ValueError("mean and variance must be finite numbers")
    return vector


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


class InputLayer(Input):
    """Keras's InputLayer(input_shape=(8,)) (or shape=): the shape of one input sample, as a
    model's first element; like Input, it computes nothing."""

    def __init__(
        self,
        input_shape: Any = None,
        shape: Any = None,
        name: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        if (input_shape is None) == (shape is None):
            raise ValueError("InputLayer takes shape= (or input_shape=), exactly one of them")
        super().__init__(shape if input_shape is None else input_shape, name)

    def __repr__(self) -> str:
        return f"InputLayer(shape={self.shape})"


LAYERS: dict[str, type[Layer]] = {
    cls.__name__.lower(): cls
    for cls in (
        Dense,
        Activation,
        Dropout,
        Flatten,
        BatchNormalization,
        Normalization,
        Softmax,
        ReLU,
        LeakyReLU,
    )
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
    "BatchNormalization",
    "Dense",
    "Dropout",
    "Flatten",
    "Input",
    "InputLayer",
    "Layer",
    "LeakyReLU",
    "Normalization",
    "ReLU",
    "Softmax",
    "layer_from_config",
    "register_layer",
]
