"""Network: a stack of layers on one backend, with its parameters in one flat buffer.

forward:   a^0 = x;  z^l = a^{l-1} W^l + b^l,  a^l = f(z^l)
output:    delta^L = dC/dz^L                 (see losses.output_delta)
backward:  delta^l = f'(z^l) * (delta^{l+1} (W^{l+1})^T)
gradients: dC/dW^l = (a^{l-1})^T delta^l,    dC/db^l = sum over the batch of delta^l

The derivation and nothing else: no loss chosen, no optimizer, no training loop (those are
the Trainer's, in training.py), no Keras spelling (model.py). Any `layers.Layer` stacks.
"""

from __future__ import annotations

import math
import re
from typing import Any

from backends import Array, Backend
from backends.base import on_backend_device

from . import data
from .layers import Input, Layer, layer_from_config, register_layer
from .losses import Loss

Shape = tuple[int, ...]
# each parameter array starts on a 64-byte boundary (16 float32s), as BLAS prefers
ALIGN = 16


def _default_name(layer: Layer) -> str:
    """Keras's default layer names: the class name in snake case ("dense", "dropout")."""
    name = getattr(layer, "default_name", None) or type(layer).__name__
    # Keras's to_snake_case: "BatchNormalization" -> "batch_normalization", "ReLU" -> "re_lu"
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


@on_backend_device("backend")  # array work on the backend's device (GPU k, not 0)
class Network:
    """Layers in order on `backend`; built from the shape of one input sample.

    Once built, every parameter is a view into `flat_params` and every gradient into
    `flat_grads`, so an optimizer step is one fused update over the whole network and a
    data-parallel all-reduce is one call. The slot at `status_index` (past the last array)
    is spare: data-parallel steps count failed ranks there, in the same all-reduce.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.layers: list[Layer] = []
        self.input_shape: Shape | None = None
        self.built = False
        self.flat_params: Array = None  # both made by build
        self.flat_grads: Array = None
        self.status_index = 0
        self.nested_in: Layer | None = None  # the ModelLayer that uses this network as a layer
        self._spans: list[tuple[int, int]] = []  # each parameter's stretch of flat_params
        self._kept: dict[tuple[int, int], Array] = {}  # copies of frozen stretches
        self._frozen_now: list[tuple[Array, Array]] = []

    # ------------------------------------------------------------------ the stack
    def add(self, layer: Layer | Input, what: str = "layer") -> None:
        """Append a layer (an Input only first); `what` names it in errors. The network must
        be built again before use."""
        self._check_not_nested()
        inner = getattr(layer, "network", None)
        if isinstance(inner, Network):  # a model used as a layer: Sequential([model, ...])
            if not inner.built:
                raise ValueError(
                    f"{what} is a model that is not built yet: give it input_dim= or an Input "
                    "(or train it) before using it as a layer"
                )
            name = getattr(layer, "name", None)
            layer = ModelLayer(inner, name=None if name == "sequential" else name)
            if self.layers:  # its input shape is checked when built, not imposed
                layer.requested_input_shape = None
        if isinstance(layer, Input):
            if self.layers or self.input_shape is not None:
                raise ValueError(f"{what}: Input may only come first, before any layer")
            self.input_shape = layer.shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{what} must be a layer (Dense, Dropout, ...), got {type(layer).__name__}"
            )
        if layer.built or layer.owner is not None:
            raise ValueError(f"{what} already belongs to a model; make a new layer")
        if layer.requested_input_shape is not None:
            if self.layers:
                raise ValueError(
                    f"{what} has an input shape, but only the first layer may give one"
                )
            if self.input_shape is not None and self.input_shape != layer.requested_input_shape:
                raise ValueError(
                    f"{what} expects input shape {layer.requested_input_shape} but the model's "
                    f"input shape is {self.input_shape}"
                )
            self.input_shape = layer.requested_input_shape
        names = {existing.name for existing in self.layers}
        if layer.name is None:
            base, k = _default_name(layer), 0
            layer.name = base
            while layer.name in names:
                k += 1
                layer.name = f"{base}_{k}"
        elif layer.name in names:
            raise ValueError(f"{what}: the model already has a layer named {layer.name!r}")
        layer.owner = self
        self.layers.append(layer)
        self.built = False

    def pop(self) -> Layer:
        """Remove and return the last layer; the others keep their weights."""
        self._check_not_nested()
        if not self.layers:
            raise IndexError("pop from a model with no layers")
        layer = self.layers.pop()
        layer.owner = None
        self.built = False
        return layer

    def _check_not_nested(self) -> None:
        if self.nested_in is not None:
            raise ValueError(
                f"this model is used as the layer {self.nested_in.name!r} of another model, "
                "which shares its weights: its layers cannot change now"
            )

    @property
    def output_shape(self) -> Shape:
        return self.layers[-1].output_shape

    @property
    def output_dim(self) -> int:
        return math.prod(self.output_shape)

    # ------------------------------------------------------------------ building
    def build(self, input_shape: Shape, rng: Any) -> None:
        """Create the parameters of every layer not yet built, drawn in order from `rng` (a
        seeded host generator), and put all of them in new flat buffers."""
        if not self.layers:
            raise ValueError("the model has no layers: add some before building it")
        if self.built and self.nested_in is not None:  # its buffers are its user's
            if input_shape != self.input_shape:
                raise ValueError(
                    f"the model takes samples of shape {self.input_shape}, not {input_shape}"
                )
            return
        if self.input_shape is not None and input_shape != self.input_shape:
            raise ValueError(
                f"the model takes samples of shape {self.input_shape}, not {input_shape}"
            )
        shape = input_shape
        for layer in self.layers:
            if not layer.built:
                shape = layer.build(shape, self.backend, rng)
                continue
            if layer.input_shape != shape:
                raise ValueError(
                    f"layer {layer.name!r} was built for inputs of shape {layer.input_shape}, "
                    f"but now gets {shape}"
                )
            shape = layer.output_shape
        if len(shape) != 1:
            raise ValueError(
                f"the last layer's output has shape {shape} per sample; a model's output must "
                "be flat: put Flatten() or a Dense layer last"
            )
        self._bind_flat_buffers()
        self.input_shape = tuple(self.layers[0].input_shape)
        self.built = True

    def _bind_flat_buffers(self, flat_params: Array = None, flat_grads: Array = None) -> None:
        """Lay every parameter (and its gradient) out in one flat buffer, each array on an
        ALIGN boundary, a layer's spare slots after its arrays, and one spare ALIGN block at
        the end; new zero buffers, or the given ones (a nested model's stretch of its user's
        buffers, of exactly that size)."""
        be = self.backend
        offsets, blocks, spans, total = [], [], [], 0
        for layer in self.layers:  # the padding between arrays stays zero in both buffers
            start = total
            for p in layer.params:
                offsets.append(total)
                total += -(-math.prod(p.shape) // ALIGN) * ALIGN
                spans.append((offsets[-1], total))
            total += layer.spare_slots
            blocks.append((start, total))
        self.status_index = total
        if flat_params is None:
            flat_params, flat_grads = be.zeros((total + ALIGN,)), be.zeros((total + ALIGN,))
        elif tuple(flat_params.shape) != (total + ALIGN,):
            raise ValueError(f"a nested model needs {total + ALIGN} slots, got {flat_params.shape}")
        self.flat_params, self.flat_grads = flat_params, flat_grads
        shapes = [tuple(p.shape) for layer in self.layers for p in layer.params]
        views: list[list[Array]] = [[], []]
        for s, offset in zip(shapes, offsets, strict=True):
            for flat, out in zip((self.flat_params, self.flat_grads), views, strict=True):
                out.append(be.reshape(flat[offset : offset + math.prod(s)], s))
        k = 0
        for layer, (start, stop) in zip(self.layers, blocks, strict=True):
            n = len(layer.params)
            layer.bind(views[0][k : k + n], views[1][k : k + n])
            layer.bind_flat(self.flat_params[start:stop], self.flat_grads[start:stop])
            k += n
        self._spans, self._kept = spans, {}

    # ------------------------------------------------------------------ arrays
    @property
    def params(self) -> list[Array]:
        """The backend arrays [W1, b1, W2, b2, ...]: the network's own, not copies."""
        return [p for layer in self.layers for p in layer.params]

    @property
    def grads(self) -> list[Array]:
        """The gradient arrays [dW1, db1, ...] filled by the last backward pass."""
        return [g for layer in self.layers for g in layer.grads]

    def trainable_mask(self) -> list[bool]:
        """For each parameter, in `params`' order: whether training updates it."""
        return [t for layer in self.layers for t in layer.trainable_mask()]

    @property
    def uses_batch_statistics(self) -> bool:
        return any(layer.uses_batch_statistics for layer in self.layers)

    def keep_frozen(self) -> None:
        """Before an optimizer update: zero the gradients of the parameters that are not
        trainable (frozen layers', BatchNormalization's moving statistics) and copy those
        parameters aside, so that `put_back_frozen` keeps them bit for bit whatever the update
        does (momentum, weight decay) to the one flat buffer it updates. Device copies into
        buffers made once, so a captured step replays them."""
        be, runs = self.backend, self._frozen_runs()
        frozen: list[tuple[Array, Array]] = []
        for start, stop in runs:  # one fill and one copy per run of adjacent frozen arrays
            kept = self._kept.get((start, stop))
            if kept is None:
                kept = self._kept[(start, stop)] = be.empty((stop - start,))
            self.flat_grads[start:stop] = 0.0
            params = self.flat_params[start:stop]
            frozen.append((params, be.copy(params, out=kept)))
        self._frozen_now = frozen

    def _frozen_runs(self) -> list[tuple[int, int]]:
        """The stretches of flat_params that hold frozen arrays, adjacent ones merged (a
        frozen Dense layer's W and b: one stretch)."""
        runs: list[tuple[int, int]] = []
        for (start, stop), trained in zip(self._spans, self.trainable_mask(), strict=True):
            if trained:
                continue
            if runs and runs[-1][1] == start:
                runs[-1] = (runs[-1][0], stop)
            else:
                runs.append((start, stop))
        return runs

    def put_back_frozen(self) -> None:
        """After the update: the frozen parameters as `keep_frozen` found them."""
        for params, kept in self._frozen_now:
            self.backend.copy(kept, out=params)
        self._frozen_now = []

    @property
    def states(self) -> list[Array]:
        """The layers' state arrays (Dropout's random-number key): what a step changes besides
        the parameters and the optimizer's state."""
        return [x for layer in self.layers for x in layer.states]

    def get_weights(self) -> list[Any]:
        """Host NumPy copies of [W1, b1, W2, b2, ...]."""
        return [self.backend.to_numpy(p).copy() for p in self.params]

    def set_weights(self, weights: list[Any]) -> None:
        """Replace the weights with host arrays in get_weights' order and shapes; every
        array is checked before any is written, so a bad list changes nothing."""
        current = self.params
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

    def snapshot(self) -> list[Array]:
        """Device copies of what a step changes in the network: the parameters and the
        layers' states (such as Dropout's random-number counter)."""
        be = self.backend
        return [be.copy(self.flat_params), *(be.copy(x) for x in self.states)]

    def restore(self, snapshot: list[Array]) -> None:
        be = self.backend
        be.copy(snapshot[0], out=self.flat_params)
        for saved, current in zip(snapshot[1:], self.states, strict=True):
            be.copy(saved, out=current)

    # ------------------------------------------------------------------ backprop
    def forward(self, X: Array, out: Array | None = None, training: bool = False) -> Array:
        """a^L for the batch X, written into `out` (batch, n_out) when given. `training`:
        the layers act as in a training step (Dropout drops)."""
        a = X
        for layer in self.layers[:-1]:
            a = layer.forward(a, training=training)
        return self.layers[-1].forward(a, out=out, training=training)

    def backward(
        self, Y: Array, loss: Loss, shortcut: bool = True, need_da_prev: bool = False
    ) -> Array | None:
        """Fill every layer's gradients from the last forward pass: delta^L (the last layer
        with the loss, in one fused job where a closed form exists), then down. Returns
        dC/d(input) with `need_da_prev` (a nested model's), else None."""
        layers = self.layers
        da = layers[-1].output_backward(
            loss, Y, shortcut, need_da_prev=len(layers) > 1 or need_da_prev
        )
        return self.backward_from(da, len(layers) - 1, need_da_prev)

    def backward_from(self, da: Any, top: int, need_da_prev: bool = True) -> Array | None:
        """From da = dC/d(output of layer `top - 1`): the layers below `top`, downwards."""
        for depth in range(top - 1, -1, -1):
            da = self.layers[depth].backward(da, need_da_prev=depth > 0 or need_da_prev)
        return da

    @property
    def has_l2(self) -> bool:
        return any(layer.has_l2 for layer in self.layers)

    def l2_cost(self) -> Array | None:
        """sum over the layers of l2 * sum(W^2) (0-d, on the device), or None without L2."""
        total = None
        for layer in self.layers:
            term = layer.l2_cost()
            if term is not None:
                total = term if total is None else self.backend.add(total, term)
        return total

    def penalty_config(self) -> tuple[Any, ...]:
        """Every layer's regularizer settings, in order."""
        return tuple(layer.penalty_config() for layer in self.layers)

    def cost(self, Y: Array, loss: Loss) -> Array:
        """The mean batch cost of the last forward pass (0-d, on the device), L2 included."""
        cost = loss.value(self.backend, self.layers[-1].a, Y)
        l2 = self.l2_cost()
        return cost if l2 is None else self.backend.add(cost, l2)

    def release_input(self) -> None:
        """Drop the first layer's forward cache, a view of the last input batch: after a
        call it would keep the converted copy of the caller's whole x alive (hundreds of MB
        for float64 data converted to float32) until the next forward pass."""
        if self.layers:
            self.layers[0].release_input()


@register_layer
class ModelLayer(Layer):
    """A model used as a layer (Keras's `Sequential([model, Softmax()])`): its layers run
    inside this one and its weights are shared, not copied. The outer network lays the inner
    network's parameters out in its own flat buffers, and the inner network adopts that
    stretch (`bind_flat`), so training either model trains the one set of weights and each
    model's predict sees the other's updates. Made by Network.add from a Sequential; saved as
    its layers' configs."""

    default_name = "Sequential"
    network: Any  # the inner Network (None only before a loaded one is built)

    def __init__(
        self,
        network: Network | None = None,
        name: str | None = None,
        input_shape: Any = None,
        layers: list[Layer] | None = None,
    ) -> None:
        if network is not None and network.nested_in is not None:
            raise ValueError(
                f"this model is already a layer ({network.nested_in.name!r}) of another model"
            )
        if network is not None and input_shape is None:
            input_shape = network.input_shape
        super().__init__(name, input_shape)
        self.network = network
        self._layers = list(layers or [])
        if network is not None:
            network.nested_in = self

    def __repr__(self) -> str:
        return f"ModelLayer({len(self.inner_layers)} layers)"

    @property
    def inner_layers(self) -> list[Layer]:
        return self.network.layers if self.network is not None else self._layers

    def describe(self) -> str:
        return f"{self.name} (Sequential)"

    def config(self) -> dict[str, Any]:
        layers = [
            {"class_name": type(x).__name__, "config": x.get_config()} for x in self.inner_layers
        ]
        config: dict[str, Any] = {"layers": layers, "name": self.name}
        if self.requested_input_shape is not None:
            config["input_shape"] = list(self.requested_input_shape)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Layer:
        config = dict(config)
        trainable = config.pop("trainable", True)
        layers = [layer_from_config(c["class_name"], c["config"]) for c in config.pop("layers")]
        layer = cls(layers=layers, **config)
        layer.trainable = bool(trainable)
        return layer

    def build(self, input_shape: Shape, be: Backend, rng: Any) -> Shape:
        if self.network is None:
            self.network = Network(be)
            for layer in self._layers:
                self.network.add(layer)
            self.network.nested_in = self
        inner = self.network
        theirs = inner.backend
        if type(theirs) is not type(be) or theirs.dtype_name != be.dtype_name:
            raise ValueError(
                f"the nested model is on backend {theirs.name!r} ({theirs.dtype_name}), this "
                f"model on {be.name!r} ({be.dtype_name}): make both on the same backend"
            )
        if not inner.built:
            inner.nested_in = None
            inner.build(tuple(input_shape), rng)
            inner.nested_in = self
        elif inner.input_shape != tuple(input_shape):
            raise ValueError(
                f"the nested model takes samples of shape {inner.input_shape}, not {input_shape}"
            )
        super().build(input_shape, be, rng)
        self._expose()
        return self.output_shape

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return self.network.output_shape if self.network is not None else input_shape

    def _expose(self) -> None:
        inner = self.network
        self.params, self.grads, self.states = inner.params, inner.grads, inner.states
        self.param_names = tuple(
            f"{layer.name}/{n}" for layer in inner.layers for n in layer.param_names
        )

    spare_slots = ALIGN  # the inner network's own spare block (its data-parallel status slot)

    def bind(self, params: list[Array], grads: list[Array]) -> None:
        """Nothing here: `bind_flat` hands the inner network its whole stretch."""

    def bind_flat(self, params: Array, grads: Array) -> None:
        self.network._bind_flat_buffers(params, grads)  # copies the weights in
        self._expose()

    @property
    def uses_batch_statistics(self) -> bool:  # type: ignore[override]
        return bool(self.network.uses_batch_statistics)

    def trainable_mask(self) -> list[bool]:
        mask = self.network.trainable_mask()
        return mask if self.trainable else [False] * len(mask)

    def forward(self, x: Array, out: Array | None = None, training: bool = False) -> Array:
        self.a = self.network.forward(x, out=out, training=training)
        return self.a

    def backward(self, da: Array, need_da_prev: bool = True) -> Array | None:
        return self.network.backward_from(da, len(self.network.layers), need_da_prev)

    def output_backward(
        self, loss: Loss, y: Array, shortcut: bool = True, need_da_prev: bool = True
    ) -> Array | None:
        return self.network.backward(y, loss, shortcut, need_da_prev)

    @property
    def has_l2(self) -> bool:
        return self.network.has_l2

    def l2_cost(self) -> Array | None:
        return self.network.l2_cost()

    def penalty_config(self) -> tuple[Any, ...]:
        return self.network.penalty_config()

    def release_input(self) -> None:
        self.network.release_input()
