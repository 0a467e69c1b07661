"""Sequential: a stack of layers, owning its backend, with batch backpropagation.

forward:   a^0 = x;  z^l = a^{l-1} W^l + b^l,  a^l = f(z^l)
output:    delta^L = dC/dz^L                 (see losses.output_delta)
backward:  delta^l = f'(z^l) * (delta^{l+1} (W^{l+1})^T)
gradients: dC/dW^l = (a^{l-1})^T delta^l,    dC/db^l = sum over the batch of delta^l

Any `layers.Layer` stacks: Dense, Activation, Dropout, Flatten; an `Input(shape=...)` may
stand first. Built as Keras builds: from an input shape given up front (input_dim=,
Input, or the first layer's input_dim/input_shape), else from the first data seen.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Sequence
from typing import Any

from backends import Array, Backend, get_backend

from . import data
from .initializers import host_generators
from .layers import Dense, Input, Layer
from .losses import Loss, get_loss
from .optimizers import Optimizer


def _default_name(layer: Layer) -> str:
    """Keras's default layer names: the class name in snake case ("dense", "dropout")."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", type(layer).__name__).lower()


def default_backend() -> str:
    """The backend a model gets when none is named: $BACKPROP_BACKEND, else "numpy"."""
    return os.environ.get("BACKPROP_BACKEND", "").strip() or "numpy"


def _check_verbose(verbose: Any) -> None:
    if verbose not in (0, 1, 2, "auto") or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")


class Sequential:
    """A feed-forward stack of layers on one backend.

    Parameters
    ----------
    layers : list of Layer, optional
        The layers in order (an `Input(shape=...)` may come first); more with `add`.
    input_dim : int, optional
        Features per sample. Without it (or an Input, or a first layer's input_dim or
        input_shape) the model is built on the first data it sees.
    backend : str or backends.Backend, optional
        "numpy", "cupy", "strict", or a Backend instance; by default $BACKPROP_BACKEND, else
        "numpy" (as Keras reads $KERAS_BACKEND: a program runs on the GPU unchanged with
        BACKPROP_BACKEND=cupy).
    dtype : {"float32", "float64"}
        Training dtype: float32 by default; float64 for gradient checks.
    seed : int, optional
        Seeds the host generator that draws the initial weights (and, in `fit`, the shuffling),
        so the same seed gives bit-identical initial weights on every backend.
    name : str, optional
    """

    def __init__(
        self,
        layers: Sequence[Layer | Input] | None = None,
        input_dim: int | None = None,
        backend: str | Backend | None = None,
        dtype: str = "float32",
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        if layers is not None and (
            isinstance(layers, (str, Layer)) or not hasattr(layers, "__iter__")
        ):
            raise TypeError(
                f"layers must be a list of layers, got {type(layers).__name__}: "
                "write Sequential([Dense(...), ...]) or use model.add(...)"
            )
        if input_dim is not None and (
            isinstance(input_dim, bool)
            or not isinstance(input_dim, numbers.Integral)
            or input_dim < 1
        ):
            raise ValueError(f"input_dim must be an integer >= 1, got {input_dim!r}")
        if seed is not None and (not isinstance(seed, numbers.Integral) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.name = name or "sequential"
        self._layers: list[Layer] = []
        self.backend = get_backend(default_backend() if backend is None else backend, dtype=dtype)
        self.dtype = self.backend.dtype_name
        self.seed = seed
        self.input_shape: tuple[int, ...] | None = None
        self._built = False
        self._rng: Any = None
        self.loss: Loss | None = None
        self.optimizer: Optimizer | None = None
        self.metrics: list[str] = []
        self.stop_training = False
        self.history: Any = None
        self._metric_objects: list[Any] = []
        self.epochs_done = 0  # epochs trained so far, across fit calls and save/load
        self.communicator: Any = None  # set by fit: the process group it trains in
        # fit's last pass over device data and its recorded epoch, replayed by the next fit
        # with the same x (see training.fit)
        self._captured_pass: Any = None
        if input_dim is not None:
            self.input_shape = (int(input_dim),)
        for i, layer in enumerate(layers or []):
            self._add(layer, f"layers[{i}]", build=False)
        self._build_if_known()

    def __repr__(self) -> str:
        sizes = [
            self.input_dim,
            *(layer.units for layer in self._layers if isinstance(layer, Dense)),
        ]
        return (
            f"Sequential({'-'.join(map(str, sizes))}, backend={self.backend.name!r}, "
            f"dtype={self.dtype!r})"
        )

    # ------------------------------------------------------------------ the stack
    @property
    def layers(self) -> list[Layer]:
        """The layers, in order (a copy of the list: change the stack with add and pop)."""
        return list(self._layers)

    def add(self, layer: Layer | Input) -> None:
        """Append a layer (Keras's Sequential.add); an Input may come first. A built model
        keeps its weights and is built again with the new layer when next used."""
        self._add(layer, "layer", build=True)

    def _add(self, layer: Any, what: str, build: bool) -> None:
        if isinstance(layer, Input):
            if self._layers or self.input_shape is not None:
                raise ValueError(f"{what}: Input may only come first, before any layer")
            self.input_shape = layer.shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(
                f"{what} must be a layer (Dense, Dropout, ...), got {type(layer).__name__}"
            )
        if layer.built or getattr(layer, "_model", None) is not None:
            raise ValueError(f"{what} already belongs to a model; make a new layer")
        if layer.requested_input_shape is not None:
            if self._layers:
                raise ValueError(
                    f"{what} has an input shape, but only the first layer may give one"
                )
            if self.input_shape is not None and self.input_shape != layer.requested_input_shape:
                raise ValueError(
                    f"{what} expects input shape {layer.requested_input_shape} but the model's "
                    f"input shape is {self.input_shape}"
                )
            self.input_shape = layer.requested_input_shape
        names = {existing.name for existing in self._layers}
        if layer.name is None:
            base, k = _default_name(layer), 0
            layer.name = base
            while layer.name in names:
                k += 1
                layer.name = f"{base}_{k}"
        elif layer.name in names:
            raise ValueError(f"{what}: the model already has a layer named {layer.name!r}")
        layer._model = self
        self._layers.append(layer)
        self._built = False
        if build:
            self._build_if_known()

    def pop(self) -> Layer:
        """Remove and return the last layer (Keras's Sequential.pop); the others keep their
        weights, and the model is built again without it when next used."""
        if not self._layers:
            raise IndexError("pop from a model with no layers")
        layer = self._layers.pop()
        layer._model = None
        self._built = False
        self._build_if_known()
        return layer

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """A layer by its name or its index (Keras's get_layer)."""
        if (name is None) == (index is None):
            raise ValueError("get_layer takes a name or an index, not both and not neither")
        if index is not None:
            try:
                return self._layers[index]
            except (IndexError, TypeError):
                raise ValueError(
                    f"index {index!r} is out of range for a model of {len(self._layers)} layers"
                ) from None
        for layer in self._layers:
            if layer.name == name:
                return layer
        names = ", ".join(repr(layer.name) for layer in self._layers)
        raise ValueError(f"no layer named {name!r}; the layers are {names}")

    # ------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self._built

    @property
    def input_dim(self) -> int | None:
        """Features per sample (the size of one input sample), None until known."""
        return None if self.input_shape is None else math.prod(self.input_shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        self._require_built()
        return self._layers[-1].output_shape

    @property
    def output_dim(self) -> int:
        return math.prod(self.output_shape)

    def _build_if_known(self) -> None:
        if self.input_shape is not None and self._layers:
            self.build(self.input_shape)

    def build(self, input_shape: int | tuple[int, ...]) -> None:
        """Create the parameters of every layer not yet built, drawn in order from one seeded
        host generator, and put all of them in the model's flat buffers."""
        be = self.backend
        if not self._layers:
            raise ValueError("the model has no layers: add some before building it")
        shape: tuple[int, ...] = (
            (int(input_shape),) if isinstance(input_shape, int) else tuple(input_shape)
        )
        if self.input_shape is not None and shape != self.input_shape:
            raise ValueError(f"the model takes samples of shape {self.input_shape}, not {shape}")
        if self._rng is None:
            self._rng, self.shuffle_rng = host_generators(self.seed)
        for layer in self._layers:
            if layer.built:
                if layer.input_shape != shape:
                    raise ValueError(
                        f"layer {layer.name!r} was built for inputs of shape {layer.input_shape}, "
                        f"but now gets {shape}"
                    )
                shape = layer.output_shape
            else:
                shape = layer.build(shape, be, self._rng)
        if len(shape) != 1:
            raise ValueError(
                f"the last layer's output has shape {shape} per sample; a model's output must "
                "be flat: put Flatten() or a Dense layer last"
            )
        # One flat buffer holds every parameter and one every gradient; each layer's
        # parameters and gradients are views into them, so an optimizer step is one fused
        # update over the whole model and an all-reduce (data-parallel training) is one call.
        shapes = [tuple(p.shape) for layer in self._layers for p in layer.params]
        # each array starts on a 64-byte boundary (16 float32s), as BLAS prefers; the padding
        # between them stays zero in parameters and gradients alike
        offsets, total = [], 0
        for s in shapes:
            offsets.append(total)
            total += -(-math.prod(s) // 16) * 16
        # one spare slot after the last array: data-parallel steps use the gradient's to
        # count failed ranks in the same all-reduce as the gradient
        self.status_index = total
        total += 16
        self.flat_params, self.flat_grads = be.zeros((total,)), be.zeros((total,))
        views: list[list[Array]] = [[], []]
        for s, offset in zip(shapes, offsets, strict=True):
            size = math.prod(s)
            for flat, out in zip((self.flat_params, self.flat_grads), views, strict=True):
                out.append(be.reshape(flat[offset : offset + size], s))
        k = 0
        for layer in self._layers:
            n = len(layer.params)
            layer.bind(views[0][k : k + n], views[1][k : k + n])
            k += n
        self.input_shape = tuple(self._layers[0].input_shape)
        self._built = True
        self._captured_pass = None  # a recorded graph refers to the old buffers
        if self.optimizer is not None:  # its state belongs to the old buffer
            self.optimizer.build([self.flat_params], be)

    def _ensure_built(self, x: Any) -> None:
        if not self._built:
            if self.input_shape is None:
                shape = getattr(x, "shape", None)
                if shape is None or len(shape) < 2:
                    raise ValueError(
                        f"x must have shape (n_samples, n_features), got shape {shape}"
                    )
                self.input_shape = tuple(int(d) for d in shape[1:])
            self.build(self.input_shape)

    def _require_built(self) -> None:
        if not self._built:
            if self.input_shape is not None and self._layers:
                self.build(self.input_shape)
                return
            raise RuntimeError(
                "the model is not built yet: pass input_dim to Sequential (or Input(shape=...), "
                "or input_dim= to its first layer), or call it on data"
            )

    # ------------------------------------------------------------------ weights
    @property
    def params(self) -> list[Array]:
        """The backend arrays [W1, b1, W2, b2, ...]: the model's own, not copies."""
        return [p for layer in self._layers for p in layer.params]

    @property
    def states(self) -> list[Array]:
        """The layers' state arrays (Dropout's random-number key): what a step changes besides
        the parameters and the optimizer's state."""
        return [x for layer in self._layers for x in layer.states]

    @property
    def weights(self) -> list[Array]:
        """Keras's model.weights: every parameter array (backend arrays, not copies)."""
        self._require_built()
        return self.params

    @property
    def grads(self) -> list[Array]:
        """The gradient arrays [dW1, db1, ...] filled by the last backward pass."""
        return [g for layer in self._layers for g in layer.grads]

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
    def _forward(self, X: Array, out: Array | None = None, training: bool = False) -> Array:
        """a^L for the batch X, written into `out` (batch, n_out) when given. `training`:
        the layers act as in a training step (Dropout drops)."""
        a = X
        for layer in self._layers[:-1]:
            layer.training = training
            a = layer.forward(a)
        last = self._layers[-1]
        last.training = training
        return last.forward(a, out=out)

    def _l2_cost(self) -> Array | None:
        """sum over the layers of l2 * sum(W^2) (0-d, on the device), or None without L2."""
        total = None
        for layer in self._layers:
            term = layer.l2_cost()
            if term is not None:
                total = term if total is None else total + term
        return total

    @property
    def has_l2(self) -> bool:
        return any(layer.has_l2 for layer in self._layers)

    def _cost(self, Y: Array, loss: Loss) -> Array:
        """The mean batch cost of the last forward pass (0-d, on the device), L2 included."""
        cost = loss.value(self.backend, self._layers[-1].a, Y)
        l2 = self._l2_cost()
        return cost if l2 is None else cost + l2

    def _backward(self, Y: Array, loss: Loss, shortcut: bool = True) -> None:
        """Fill every layer's gradients from the last forward pass: delta^L (the last layer
        with the loss, in one fused job where a closed form exists), then down."""
        layers = self._layers
        da = layers[-1].output_backward(loss, Y, shortcut, need_da_prev=len(layers) > 1)
        for depth in range(len(layers) - 2, -1, -1):
            da = layers[depth].backward(da, need_da_prev=depth > 0)

    def _loss(self, loss: str | Loss | None) -> Loss:
        if loss is not None:
            return get_loss(loss)
        if self.loss is None:
            raise RuntimeError("no loss: pass loss=... or call compile(loss=...) first")
        return self.loss

    def _device_data(self, x: Any, y: Any, loss: Loss) -> tuple[Array, Array]:
        self._ensure_built(x)
        X = data.check_x(self.backend, x, self.input_shape, "x")
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

    # ------------------------------------------------------------------ training API
    def compile(
        self,
        loss: str | Loss,
        optimizer: str | dict[str, Any] | Optimizer = "sgd",
        metrics: Sequence[Any] | None = None,
    ) -> None:
        """Choose the loss, the optimizer (a name, config or object) and the metrics (none by
        default, as in Keras: evaluate then returns the loss alone)."""
        from .metrics import get_metric
        from .optimizers import get_optimizer

        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer)
        if isinstance(metrics, str):
            metrics = [metrics]
        self._metric_objects = [get_metric(m) for m in (metrics or [])]
        self.metrics = [m.name for m in self._metric_objects]
        if self.built:
            self.optimizer.build([self.flat_params], self.backend)

    def _require_compiled(self) -> tuple[Loss, Optimizer]:
        if self.loss is None or self.optimizer is None:
            raise RuntimeError("the model is not compiled: call compile(loss=..., optimizer=...)")
        if not self.optimizer.built:
            self.optimizer.build([self.flat_params], self.backend)
        return self.loss, self.optimizer

    def fit(
        self,
        x: Any,
        y: Any,
        epochs: int = 1,
        batch_size: int | None = 32,
        shuffle: bool = True,
        validation_data: tuple[Any, Any] | None = None,
        validation_split: float = 0.0,
        callbacks: Sequence[Any] | None = None,
        verbose: int | str = "auto",
        distributed: Any = False,
        capture: bool = True,
        initial_epoch: int | None = None,
    ) -> Any:
        """Train for `epochs` more epochs; returns a History of per-epoch figures.

        Keras's initial_epoch: with it, `epochs` is the index of the last epoch, as in
        Keras (fit(epochs=10, initial_epoch=4) trains epochs 5 to 10, numbered so).
        verbose: 0 silent, 1 (or "auto") a progress bar, 2 one line per epoch.

        batch_size=None trains full-batch (plain gradient descent on the mean cost); a
        batch_size larger than the training set is clamped to its size. The training set
        crosses to the backend once; each epoch draws one permutation on the host (seeded)
        and gathers batches on the device. Loss and metrics accumulate on the device and are
        read once per epoch (and at throttled progress-bar refreshes). validation_split
        holds out the last fraction of (x, y), before shuffling, as Keras does.

        distributed=True trains data-parallel over MPI (run under mpiexec; every rank passes
        the same x and y): each global batch is split across the ranks and one all-reduce
        per step combines their gradients, so the result equals single-process training on
        the same batches. See backprop.distributed.

        capture=True (the default) lets the backend record an epoch's steps once and replay
        them: on CuPy a CUDA graph, one host launch per epoch instead of some twenty per step
        (the first epoch of a fit runs eagerly to warm up; where capture is unavailable or
        fails, training goes on eagerly after one warning saying why). Calling fit again with
        the same device arrays x and y replays the same graph. NumPy and strict always run
        eagerly. capture=False turns it off.
        """
        from .training import fit

        if initial_epoch is not None:
            if (
                isinstance(initial_epoch, bool)
                or not isinstance(initial_epoch, numbers.Integral)
                or not 0 <= initial_epoch
            ):
                raise ValueError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}")
            if isinstance(epochs, numbers.Integral) and not initial_epoch < epochs:
                raise ValueError(
                    f"initial_epoch={initial_epoch} leaves no epoch to train: with it, epochs "
                    f"(here {epochs}) is the index of the last epoch, as in Keras"
                )
            self.epochs_done = int(initial_epoch)
            epochs = epochs - initial_epoch
        mode: Any = 1 if verbose == "auto" else verbose
        self._ensure_built(x)
        try:
            return fit(
                self,
                x,
                y,
                epochs,
                batch_size,
                shuffle,
                validation_data,
                validation_split,
                callbacks,
                mode,
                distributed,
                capture,
            )
        finally:
            self._release_inputs()

    def _release_inputs(self) -> None:
        """Drop the first layer's forward cache, a view of the last input batch: after a
        call it would keep the converted copy of the caller's whole x alive (hundreds of MB
        for float64 data converted to float32) until the next forward pass."""
        if self._layers:
            self._layers[0].release_input()

    def train_on_batch(self, x: Any, y: Any) -> Any:
        """One training step (forward, backward, update) on the batch (x, y), as `fit` takes
        it, without shuffling. Returns the batch's mean cost before the update, as Keras does
        (a float; [loss, *metrics] when compiled with metrics): one device read."""
        from .training import _step

        loss, _ = self._require_compiled()
        X, Y = self._device_data(x, y, loss)
        be = self.backend
        A = be.empty((int(X.shape[0]), self.output_dim))
        l2 = self._l2_cost()  # of the weights the step starts from, as the cost is
        _step(self, X, Y, out=A)
        cost = loss.value(be, A, Y)
        if l2 is not None:
            cost = cost + l2
        results = [float(be.to_numpy(cost))]
        for m in self._metric_objects:
            results.append(float(be.to_numpy(m.result(be, m.classes(be, A), m.classes(be, Y)))))
        return results[0] if len(results) == 1 else results

    def evaluate(
        self,
        x: Any,
        y: Any,
        batch_size: int | None = None,
        verbose: int | str = "auto",
        *,
        return_dict: bool = False,
    ) -> Any:
        """The mean loss (and metrics) over (x, y): a float (compiled without metrics, as
        Keras), [loss, *metrics], or a dict. `verbose` is accepted for Keras programs; nothing
        is printed."""
        _check_verbose(verbose)
        from .training import EVAL_BATCH_SIZE, check_batch_size, evaluate_device

        loss, _ = self._require_compiled()
        X, Y = self._device_data(x, y, loss)
        try:
            logs = evaluate_device(self, X, Y, check_batch_size(batch_size) or EVAL_BATCH_SIZE)
        finally:
            self._release_inputs()
        if return_dict:
            return logs
        return logs["loss"] if len(logs) == 1 else list(logs.values())

    def predict(self, x: Any, batch_size: int | None = None, verbose: int | str = "auto") -> Any:
        """Outputs a^L for every row of x, as a host NumPy array (n, n_out). `verbose` is
        accepted for Keras programs; nothing is printed."""
        _check_verbose(verbose)
        from .training import EVAL_BATCH_SIZE, check_batch_size, predict_host

        self._ensure_built(x)
        X = data.check_x(self.backend, x, self.input_shape, "x")
        try:
            return predict_host(self, X, check_batch_size(batch_size) or EVAL_BATCH_SIZE)
        finally:
            self._release_inputs()

    def summary(self, print_fn: Any = print) -> None:
        """Print the layers, their output shapes and parameter counts, and the backend."""
        self._require_built()
        rows = [("Layer (activation)", "Output shape", "Params")]
        for layer in self._layers:
            shape = ", ".join(str(d) for d in layer.output_shape)
            rows.append((layer.describe(), f"(None, {shape})", f"{layer.count_params():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        rule = "-" * (sum(widths) + 6)
        lines = [f"Sequential: input_dim={self.input_dim}", rule]
        for j, r in enumerate(rows):
            lines.append(f"{r[0]:<{widths[0]}}   {r[1]:<{widths[1]}}   {r[2]:>{widths[2]}}")
            if j == 0:
                lines.append(rule)
        lines += [
            rule,
            f"Total params: {self.count_params():,}",
            f"Backend: {self.backend.name} ({self.backend.device_name}), {self.dtype}",
        ]
        print_fn("\n".join(lines))

    def __call__(self, x: Any) -> Array:
        """The model's outputs for x, inference mode (Keras's model(x)): a backend array."""
        from .training import EVAL_BATCH_SIZE, forward_device

        self._ensure_built(x)
        X = data.check_x(self.backend, x, self.input_shape, "x")
        try:
            return forward_device(self, X, EVAL_BATCH_SIZE)
        finally:
            self._release_inputs()

    @property
    def is_chief(self) -> bool:
        """True in a single process, and on rank 0 of data-parallel training: the process that
        reports progress and writes checkpoints."""
        return self.communicator is None or self.communicator.rank == 0

    def save_weights(self, path: Any) -> None:
        """Write only the weights to one .npz file, atomically (Keras's save_weights)."""
        from .saving import save_weights

        save_weights(self, path)

    def load_weights(self, path: Any) -> None:
        """Set the weights from a file of save_weights, or of save (Keras's load_weights)."""
        from .saving import load_weights

        load_weights(self, path)

    def save(self, path: Any) -> None:
        """Write the whole model (architecture, weights, optimizer state, RNG state) to one
        .npz file, atomically; reload it with backprop.load_model on any backend."""
        from .saving import save_model

        save_model(self, path)
