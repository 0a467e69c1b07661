"""Sequential, the Keras facade: a Network (network.py) with a Trainer (training.py).

It checks what the user hands it (host or device arrays, Keras's arguments), converts data
to the backend once, and delegates: the layers and their math to the Network, training and
evaluation to the Trainer that compile() makes, files to saving.py. Nothing in backprop/
below it imports it.

Any `layers.Layer` stacks: Dense, Activation, Dropout, Flatten; an `Input(shape=...)` may
stand first. Built as Keras builds: from an input shape given up front (input_dim=,
Input, or the first layer's input_dim/input_shape), else from the first data seen.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from backends import BACKEND_NAMES, Array, Backend, get_backend
from backends.base import on_backend_device

from . import data, saving, utils
from .callbacks import Callback, CallbackList, TrainingContext
from .distributed import get_communicator
from .initializers import host_generators
from .layers import Dense, Input, Layer
from .losses import Loss, get_loss
from .metrics import get_metric
from .network import Network
from .optimizers import Optimizer, get_optimizer
from .training import (
    EVAL_BATCH_SIZE,
    Trainer,
    TrainingDivergedError,
    check_batch_size,
    check_fit_args,
    forward_in_batches,
)


def default_backend() -> str:
    """The backend a model gets when none is named: $BACKPROP_BACKEND, else "numpy"."""
    return os.environ.get("BACKPROP_BACKEND", "").strip() or "numpy"


def resolve_backend(backend: str | Backend | None, dtype: Any = None) -> Backend:
    """The Backend for `backend` (a name or an instance), or for $BACKPROP_BACKEND when None;
    an error from the variable names it."""
    if backend is not None:
        return get_backend(backend, dtype=dtype)
    name = default_backend()
    if name.lower() not in (*BACKEND_NAMES, "array_api_strict"):
        raise ValueError(
            f"$BACKPROP_BACKEND is {name!r}, which is not a backend; valid names are "
            + ", ".join(map(repr, BACKEND_NAMES))
            + " (unset it for numpy)"
        )
    try:
        return get_backend(name, dtype=dtype)
    except RuntimeError as exc:  # the backend cannot run here
        raise RuntimeError(f"$BACKPROP_BACKEND is {name!r}: {exc}") from exc


def _check_verbose(verbose: Any) -> None:
    if verbose not in (0, 1, 2, "auto") or isinstance(verbose, bool):
        raise ValueError(f"verbose must be 0, 1, 2 or 'auto', got {verbose!r}")


@on_backend_device("backend")  # array work on the backend's device (GPU k, not 0)
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
        Without one, backprop.utils.set_random_seed's stream gives it one (as in Keras), else
        each model draws fresh entropy.
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
        nested: list[Any] = [x for x in layers or [] if isinstance(x, Sequential)]
        if backend is None and nested:  # a model of models: on theirs (the probability model)
            backend = nested[0].backend
        self.backend = resolve_backend(backend, dtype)
        self.network = Network(self.backend)
        self.dtype = self.backend.dtype_name
        self.seed = utils.next_model_seed() if seed is None else int(seed)
        self._rng: Any = None
        self.loss: Loss | None = None
        self.optimizer: Optimizer | None = None
        self.metrics: list[str] = []
        self.trainer: Trainer | None = None  # made by compile
        self.history: Any = None
        self.epochs_done = 0  # epochs trained so far, across fit calls and save/load
        self._context: TrainingContext | None = None  # of the fit under way, or the last
        if input_dim is not None:
            self.network.input_shape = (int(input_dim),)
        for i, layer in enumerate(layers or []):
            self.network.add(layer, f"layers[{i}]")
        self._build_if_known()

    def __repr__(self) -> str:
        sizes = [
            self.input_dim,
            *(layer.units for layer in self.network.layers if isinstance(layer, Dense)),
        ]
        return (
            f"Sequential({'-'.join(map(str, sizes))}, backend={self.backend.name!r}, "
            f"dtype={self.dtype!r})"
        )

    # ------------------------------------------------------------------ the stack
    @property
    def layers(self) -> list[Layer]:
        """The layers, in order (a copy of the list: change the stack with add and pop)."""
        return list(self.network.layers)

    def add(self, layer: Layer | Input) -> None:
        """Append a layer (Keras's Sequential.add); an Input may come first. A built model
        keeps its weights and is built again with the new layer when next used."""
        self.network.add(layer)
        self._build_if_known()

    def pop(self) -> Layer:
        """Remove and return the last layer (Keras's Sequential.pop); the others keep their
        weights, and the model is built again without it when next used."""
        layer = self.network.pop()
        self._build_if_known()
        return layer

    def get_layer(self, name: str | None = None, index: int | None = None) -> Layer:
        """A layer by its name or its index (Keras's get_layer)."""
        layers = self.network.layers
        if (name is None) == (index is None):
            raise ValueError("get_layer takes a name or an index, not both and not neither")
        if index is not None:
            try:
                return layers[index]
            except (IndexError, TypeError):
                raise ValueError(
                    f"index {index!r} is out of range for a model of {len(layers)} layers"
                ) from None
        for layer in layers:
            if layer.name == name:
                return layer
        names = ", ".join(repr(layer.name) for layer in layers)
        raise ValueError(f"no layer named {name!r}; the layers are {names}")

    # ------------------------------------------------------------------ building
    @property
    def built(self) -> bool:
        return self.network.built

    @property
    def input_shape(self) -> tuple[Any, ...] | None:
        """Keras's model.input_shape: (None, *sample shape), None for the batch axis; None
        while the input shape is unknown."""
        shape = self.network.input_shape
        return None if shape is None else (None, *shape)

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The shape of one input sample (input_shape without the batch axis)."""
        return self.network.input_shape

    @property
    def input_dim(self) -> int | None:
        """Features per sample (the size of one input sample), None until known."""
        shape = self.network.input_shape
        return None if shape is None else math.prod(shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        self._require_built()
        return self.network.output_shape

    @property
    def output_dim(self) -> int:
        return math.prod(self.output_shape)

    def _build_if_known(self) -> None:
        if self.network.input_shape is not None and self.network.layers:
            self.build(self.network.input_shape)

    def build(self, input_shape: int | tuple[int, ...]) -> None:
        """Create the parameters of every layer not yet built, drawn in order from one seeded
        host generator, and put all of them in the model's flat buffers."""
        if isinstance(input_shape, (tuple, list)):
            shape = tuple(int(d) for d in input_shape)
        else:  # an int, NumPy's included
            shape = (int(input_shape),)
        if self._rng is None:
            self._rng, self.shuffle_rng = host_generators(self.seed)
        self.network.build(shape, self._rng)
        if self.optimizer is not None:  # its state belonged to the old buffer
            self.optimizer.build([self.network.flat_params], self.backend)

    def _ensure_built(self, x: Any) -> None:
        if self.network.built:
            return
        if self.network.input_shape is None:
            self.network.input_shape = data.sample_shape(x)
        self.build(self.network.input_shape)

    def _require_built(self) -> None:
        if self.network.built:
            return
        if self.network.input_shape is not None and self.network.layers:
            self.build(self.network.input_shape)
            return
        if not self.network.layers:
            raise RuntimeError("the model has no layers yet: add some with model.add(Dense(...))")
        raise RuntimeError(
            "the model is not built yet: pass input_dim to Sequential (or Input(shape=...), "
            "or input_dim= to its first layer), or call it on data"
        )

    # ------------------------------------------------------------------ weights
    @property
    def flat_params(self) -> Array:
        """Every parameter in one backend array (the layers' W and b are views into it)."""
        self._require_built()
        return self.network.flat_params

    @property
    def flat_grads(self) -> Array:
        self._require_built()
        return self.network.flat_grads

    @property
    def params(self) -> list[Array]:
        """The backend arrays [W1, b1, W2, b2, ...]: the model's own, not copies."""
        return self.network.params

    @property
    def states(self) -> list[Array]:
        """The layers' state arrays (Dropout's random-number key)."""
        return self.network.states

    @property
    def weights(self) -> list[Array]:
        """Keras's model.weights: every parameter array (backend arrays, not copies)."""
        self._require_built()
        return self.network.params

    @property
    def grads(self) -> list[Array]:
        """The gradient arrays [dW1, db1, ...] filled by the last backward pass."""
        return self.network.grads

    @property
    def trainable_weights(self) -> list[Array]:
        """The parameters training updates (Keras's): not those of layers whose `trainable`
        is False, nor BatchNormalization's moving statistics."""
        self._require_built()
        return [p for layer in self.network.layers for p in layer.trainable_weights]

    @property
    def non_trainable_weights(self) -> list[Array]:
        """The parameters training leaves as they are."""
        self._require_built()
        return [p for layer in self.network.layers for p in layer.non_trainable_weights]

    @property
    def trainable(self) -> bool:
        """False when no layer trains; setting it sets every layer's `trainable` (Keras's
        `base_model.trainable = False`), taking effect at the next training step."""
        return any(layer.trainable for layer in self.network.layers)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ValueError(f"trainable must be True or False, got {value!r}")
        for layer in self.network.layers:
            layer.trainable = value

    def count_params(self) -> int:
        self._require_built()
        return sum(math.prod(p.shape) for p in self.network.params)

    def get_weights(self) -> list[Any]:
        """Host NumPy copies of [W1, b1, W2, b2, ...]: W^l (n_in, n_out), b^l (n_out,)."""
        self._require_built()
        return self.network.get_weights()

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace the weights with host arrays in get_weights' order and shapes.

        Every array is checked before any is written, so a bad list changes nothing.
        """
        self._require_built()
        self.network.set_weights(list(weights))

    # ------------------------------------------------------------------ backprop
    @property
    def has_l2(self) -> bool:
        return self.network.has_l2

    def _loss(self, loss: str | Loss | None) -> Loss:
        if loss is not None:
            return get_loss(loss)
        if self.loss is None:
            raise RuntimeError("no loss: pass loss=... or call compile(loss=...) first")
        return self.loss

    def _device_x(self, x: Any) -> Array:
        self._ensure_built(x)
        return data.check_x(self.backend, x, self.network.input_shape, "x")

    def _device_data(self, x: Any, y: Any, loss: Loss) -> tuple[Array, Array]:
        X = self._device_x(x)
        Y = data.check_y(self.backend, y, loss, self.output_dim, int(X.shape[0]), "y")
        return X, Y

    def gradients(
        self,
        x: Any,
        y: Any,
        loss: str | Loss | None = None,
        shortcut: bool = True,
        training: bool = False,
    ) -> list[Any]:
        """The gradient of the mean batch cost over (x, y), as host arrays in get_weights'
        order [dC/dW1, dC/db1, ...]. `loss` defaults to the compiled loss; `shortcut=False`
        forces the general output delta (for testing the closed forms against it);
        `training=True`: the forward pass of a training step (BatchNormalization's batch
        statistics, which it then also averages into its moving ones)."""
        loss = self._loss(loss)
        X, Y = self._device_data(x, y, loss)
        self.network.forward(X, training=training)
        self.network.backward(Y, loss, shortcut)
        return [self.backend.to_numpy(g).copy() for g in self.network.grads]

    def cost(self, x: Any, y: Any, loss: str | Loss | None = None, training: bool = False) -> float:
        """The mean cost over (x, y) as a host float (L2 terms included); `training` as in
        `gradients`."""
        loss = self._loss(loss)
        X, Y = self._device_data(x, y, loss)
        self.network.forward(X, training=training)
        return float(self.backend.to_numpy(self.network.cost(Y, loss)))

    # ------------------------------------------------------------------ training API
    def compile(
        self,
        loss: str | Loss,
        optimizer: str | dict[str, Any] | Optimizer = "sgd",
        metrics: Sequence[Any] | None = None,
    ) -> None:
        """Choose the loss, the optimizer (a name, config or object) and the metrics (none by
        default, as in Keras: evaluate then returns the loss alone). A new Trainer: what the
        last one recorded (a captured epoch) is let go."""
        self.loss = get_loss(loss)
        self.optimizer = get_optimizer(optimizer)
        if isinstance(metrics, str):
            metrics = [metrics]
        metric_objects = [get_metric(m) for m in (metrics or [])]
        self.metrics = [m.name for m in metric_objects]
        self.trainer = Trainer(self.network, self.loss, self.optimizer, metric_objects)
        if self.built:
            self.optimizer.build([self.network.flat_params], self.backend)

    def _require_compiled(self) -> Trainer:
        if self.trainer is None:
            raise RuntimeError("the model is not compiled: call compile(loss=..., optimizer=...)")
        return self.trainer

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
        sample_weight: Any = None,
        class_weight: dict[int, float] | None = None,
    ) -> Any:
        """Train for `epochs` more epochs; returns a History of per-epoch figures.

        initial_epoch: as in Keras, `epochs` is then the index of the last epoch. verbose:
        0 silent, 1 (or "auto") a progress bar and a line per epoch, 2 the lines only.
        batch_size=None trains full-batch (a larger one is clamped). The data cross to the
        backend once; loss and metrics are read once per epoch. validation_split holds out
        the last fraction of (x, y), before shuffling, as Keras does.

        sample_weight (n,) and class_weight ({class: weight}) weight each cost as Keras
        does (data.sample_weights); validation_data may carry weights as a third element.

        distributed=True trains data-parallel over MPI (under mpiexec, every rank passing the
        same x and y): one all-reduce per step, the same result as one process (see
        backprop.distributed). capture=True lets the backend record chunks of up to 64
        steps and replay them (CUDA graphs on CuPy; eager after one warning where capture
        fails)."""
        first, epochs = self._epochs(epochs, initial_epoch)
        mode: Any = 1 if verbose == "auto" else verbose
        self._ensure_built(x)
        trainer = self._require_compiled()
        check_fit_args(epochs, mode, shuffle, capture)
        batch_size = check_batch_size(batch_size)
        trainer.communicator = get_communicator(distributed)
        X, Y, S, validation = self._fit_data(
            x, y, trainer.loss, validation_data, validation_split, sample_weight, class_weight
        )
        cbs = self._callbacks(trainer, callbacks, mode)
        with self._training_on(X):
            return trainer.fit(
                X,
                Y,
                epochs=epochs,
                batch_size=batch_size,
                callbacks=cbs,
                first_epoch=first,
                rng=self.shuffle_rng if shuffle else None,
                validation=validation,
                capture=capture,
                keep=X is x and trainer.communicator.size == 1,
                weights=S,
            )

    @contextmanager
    def _training_on(self, X: Array) -> Iterator[None]:
        """Training on X: a divergence on unscaled X says so; the input is let go after."""
        try:
            yield
        except TrainingDivergedError as exc:
            hint = _scale_hint(self.backend, X)
            if hint is None:
                raise
            raise TrainingDivergedError(f"{exc} {hint}") from exc
        finally:
            self.network.release_input()

    def _fit_data(
        self,
        x: Any,
        y: Any,
        loss: Loss,
        validation_data: Any,
        validation_split: Any,
        sample_weight: Any,
        class_weight: Any,
    ) -> tuple[Array, Array, Array | None, tuple[Array, Array, Array | None] | None]:
        """fit's data on the device: X, Y, their weights (None: unweighted) and the
        validation triple (None without one)."""
        X, Y = self._device_data(x, y, loss)
        weights = (
            data.sample_weights(self.backend, Y, sample_weight, class_weight),
            data.sample_weights(self.backend, Y, sample_weight),
        )
        return data.hold_out(
            self.backend, X, Y, validation_data, validation_split, loss, self.sample_shape, weights
        )

    def _epochs(self, epochs: Any, initial_epoch: Any) -> tuple[int, Any]:
        """The first epoch's number and how many epochs to train (Keras's initial_epoch)."""
        if initial_epoch is None:
            return self.epochs_done, epochs
        if (
            isinstance(initial_epoch, bool)
            or not isinstance(initial_epoch, numbers.Integral)
            or int(initial_epoch) < 0
        ):
            raise ValueError(f"initial_epoch must be an integer >= 0, got {initial_epoch!r}")
        if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
            raise ValueError(
                f"epochs must be an integer (with initial_epoch, the index of the last epoch), "
                f"got {epochs!r}"
            )
        if not initial_epoch < epochs:
            raise ValueError(
                f"initial_epoch={initial_epoch} leaves no epoch to train: with it, epochs "
                f"(here {epochs}) is the index of the last epoch, as in Keras"
            )
        return int(initial_epoch), int(epochs) - int(initial_epoch)

    def _callbacks(self, trainer: Trainer, callbacks: Any, verbose: int) -> CallbackList:
        """The fit's callbacks, after History, the progress report and the epoch counter,
        all seeing a new context (and this model, for Keras callbacks)."""
        context = self._new_context(trainer)
        counter = _EpochCounter(self)
        cbs = CallbackList([counter, *(callbacks or [])], context, verbose, model=self)
        self.history = cbs.history
        return cbs

    def _new_context(self, trainer: Trainer) -> TrainingContext:
        context = TrainingContext(
            optimizer=trainer.optimizer,
            get_weights=self.get_weights,
            set_weights=self.set_weights,
            save=self.save,
            save_weights=self.save_weights,
            is_chief=trainer.communicator.rank == 0,
        )
        self._context = context
        return context

    @property
    def stop_training(self) -> bool:
        """Set it True (from a callback) to end training after the current epoch."""
        return self._context is not None and self._context.stop_training

    @stop_training.setter
    def stop_training(self, value: bool) -> None:
        if self._context is not None:
            self._context.stop_training = bool(value)

    @property
    def communicator(self) -> Any:
        """The process group of the last fit (a single process before any)."""
        return None if self.trainer is None else self.trainer.communicator

    def train_on_batch(
        self,
        x: Any,
        y: Any,
        sample_weight: Any = None,
        class_weight: dict[int, float] | None = None,
        return_dict: bool = False,
    ) -> Any:
        """One training step (forward, backward, update) on the batch (x, y), as `fit` takes
        it (weights too), without shuffling. Returns the batch's mean cost before the update,
        as Keras does (a float; [loss, *metrics] when compiled with metrics): one device
        read."""
        trainer = self._require_compiled()
        X, Y = self._device_data(x, y, trainer.loss)
        S = data.sample_weights(self.backend, Y, sample_weight, class_weight)
        try:
            logs = trainer.train_step(X, Y, S)
        finally:
            self.network.release_input()
        return logs if return_dict else _keras_result(logs)

    def test_on_batch(
        self, x: Any, y: Any, sample_weight: Any = None, return_dict: bool = False
    ) -> Any:
        """The loss (and metrics) of the batch (x, y), no update (Keras's test_on_batch)."""
        trainer = self._require_compiled()
        X, Y = self._device_data(x, y, trainer.loss)
        S = data.sample_weights(self.backend, Y, sample_weight)
        try:
            logs = trainer.test_step(X, Y, S)
        finally:
            self.network.release_input()
        return logs if return_dict else _keras_result(logs)

    def predict_on_batch(self, x: Any) -> Any:
        """Outputs a^L for the batch x in one forward pass, as a host NumPy array (n, n_out)
        (Keras's predict_on_batch)."""
        return self.backend.to_numpy(self._outputs(x, None))

    def evaluate(
        self,
        x: Any,
        y: Any,
        batch_size: int | None = None,
        verbose: int | str = "auto",
        sample_weight: Any = None,
        *,
        return_dict: bool = False,
    ) -> Any:
        """The mean loss (and metrics) over (x, y): a float (compiled without metrics, as
        Keras), [loss, *metrics], or a dict. sample_weight (n,) weights the loss as in fit.
        `verbose` is accepted for Keras programs; nothing is printed."""
        _check_verbose(verbose)
        trainer = self._require_compiled()
        X, Y = self._device_data(x, y, trainer.loss)
        S = data.sample_weights(self.backend, Y, sample_weight)
        try:
            size = check_batch_size(batch_size) or EVAL_BATCH_SIZE
            logs = trainer.evaluate(X, Y, size, weights=S)
        finally:
            self.network.release_input()
        return logs if return_dict else _keras_result(logs)

    def predict(self, x: Any, batch_size: int | None = None, verbose: int | str = "auto") -> Any:
        """Outputs a^L for every row of x, as a host NumPy array (n, n_out). `verbose` is
        accepted for Keras programs; nothing is printed."""
        _check_verbose(verbose)
        size = check_batch_size(batch_size) or EVAL_BATCH_SIZE
        return self.backend.to_numpy(self._outputs(x, size))

    def __call__(self, x: Any) -> Array:
        """The model's outputs for x, inference mode (Keras's model(x)): a backend array."""
        return self._outputs(x, EVAL_BATCH_SIZE)

    def _outputs(self, x: Any, batch_size: int | None) -> Array:
        X = self._device_x(x)
        try:
            return forward_in_batches(self.network, X, batch_size)
        finally:
            self.network.release_input()

    def summary(self, print_fn: Any = print) -> None:
        """Print the layers, their output shapes and parameter counts, and the backend."""
        self._require_built()
        rows = [("Layer (activation)", "Output shape", "Params")]
        for layer in self.network.layers:
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
            f"Trainable params: {_size(self.trainable_weights):,}",
            f"Non-trainable params: {_size(self.non_trainable_weights):,}",
            f"Backend: {self.backend.name} ({self.backend.device_name}), {self.dtype}",
        ]
        print_fn("\n".join(lines))

    @property
    def is_chief(self) -> bool:
        """True in a single process, and on rank 0 of data-parallel training: the process that
        reports progress and writes checkpoints."""
        return self.communicator is None or self.communicator.rank == 0

    # ------------------------------------------------------------------ files
    def save_weights(self, path: Any) -> None:
        """Write only the weights to one .npz file, atomically (Keras's save_weights)."""
        self._require_built()
        saving.save_weights(path, self.network)

    def load_weights(self, path: Any) -> None:
        """Set the weights from a file of save_weights, or of save (Keras's load_weights)."""
        self._require_built()
        saving.load_weights(path, self.network)

    def save(self, path: Any) -> None:
        """Write the whole model (architecture, weights, optimizer state, RNG state) to one
        .npz file, atomically; reload it with backprop.load_model on any backend."""
        self._require_built()
        config = {
            "name": self.name,
            "dtype": self.dtype,
            "seed": self.seed,
            "epochs_done": self.epochs_done,
            "shuffle_rng": self.shuffle_rng.bit_generator.state,
            "loss": self.loss.config() if self.loss is not None else None,
            "metrics": [m.config() for m in self.trainer.metrics] if self.trainer else [],
        }
        saving.save_model(path, self.network, self.optimizer, config)


#: inputs larger than this in magnitude are named as the likely cause when training diverges
UNSCALED_INPUT = 1e3


def _scale_hint(be: Backend, X: Array) -> str | None:
    """What to say when training diverged on unscaled inputs (None for scaled ones): a smaller
    learning rate does not cure inputs of 1e30."""
    largest = float(be.to_numpy(be.max(be.abs(X))))
    if largest <= UNSCALED_INPUT:
        return None
    return (
        f"But x holds values up to {largest:.3g} in magnitude: the likelier cause is unscaled "
        "input; scale x to about [0, 1] (or standardize each feature) and train again."
    )


class _EpochCounter(Callback):
    """Keeps Sequential.epochs_done current as each epoch ends, before the callbacks after
    it run (a checkpoint saved then records it)."""

    def __init__(self, model: Sequential) -> None:
        self.counted = model

    def on_epoch_end(self, epoch, logs=None):
        self.counted.epochs_done = epoch + 1


def _size(arrays: list[Array]) -> int:
    return sum(math.prod(a.shape) for a in arrays)


def _keras_result(logs: dict[str, float]) -> Any:
    """Keras's return value: the loss alone without metrics, else [loss, *metrics]."""
    return logs["loss"] if len(logs) == 1 else list(logs.values())


_READ_ERRORS = (KeyError, TypeError, ValueError, AttributeError, OverflowError)


def load_model(path: str | os.PathLike[str], backend: str | Backend | None = None) -> Sequential:
    """Rebuild a model saved by `Sequential.save` on `backend` (any backend, whichever saved it):
    architecture, weights, loss, optimizer and its state, and the shuffling generator, so
    training resumes exactly where it stopped. `backend` defaults as Sequential's does
    ($BACKPROP_BACKEND, else numpy)."""
    be = resolve_backend(backend)  # its errors are not the file's
    saved = saving.read_model(path)
    config = saved.config
    try:
        input_shape, layers = saved.layers()
        model = Sequential(
            [Input(shape=input_shape), *layers],
            backend=be,
            dtype=config["dtype"],
            seed=config["seed"],
            name=config.get("name"),
        )
        saved.restore_network(model.network)
        model.epochs_done = int(config["epochs_done"])
        if model.epochs_done < 0:
            raise ValueError(f"epochs_done is {model.epochs_done}")
        model.shuffle_rng.bit_generator.state = config["shuffle_rng"]
    except _READ_ERRORS as exc:
        raise saved.invalid(f"its contents are inconsistent ({type(exc).__name__}: {exc})") from exc
    try:
        if config["loss"] is not None:
            record = config["optimizer"]
            optimizer = get_optimizer(record["config"]) if record is not None else "sgd"
            model.compile(loss=config["loss"], optimizer=optimizer, metrics=config["metrics"])
            if record is not None:
                trainer = model._require_compiled()
                trainer.ready()
                saved.restore_optimizer(trainer.optimizer, model.backend)
    except saving.ModelFileError:
        raise
    except _READ_ERRORS as exc:
        raise saved.invalid(
            f"its optimizer record is inconsistent ({type(exc).__name__}: {exc})"
        ) from exc
    return model
