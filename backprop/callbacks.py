"""Training history and callbacks, Keras-style: hooks called by the training loop at the
start and end of training, of each epoch and (where asked for) of each batch, with `logs`
holding the epoch's host-side figures ("loss", "accuracy", "val_loss", "val_accuracy"; and
"learning_rate" where a callback that sets it runs, as in Keras).

Callbacks see a `TrainingContext`, not the model's insides: the history, the optimizer, the
stop flag, whether this process is the chief, and hooks to save or read the weights.
History and the progress report are callbacks too, so the loop only calls a
`CallbackList`, which ends every callback it began, however training ends.
"""

from __future__ import annotations

import csv
import inspect
import math
import operator
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .checks import is_integer, is_number
from .saving import check_writable

PROGRESS_REFRESH_S = 1.0  # the most often a progress bar reads the running loss


@dataclass
class TrainingContext:
    """What a callback may see and change of a training run.

    `optimizer` is the one training (set its learning_rate between epochs); `stop_training`
    ends training after the current epoch; `is_chief` is True in a single process and on
    rank 0 of data-parallel training (the process that reports and writes files); `save`,
    `save_weights`, `get_weights`, `set_weights` act on the model being trained (None where
    it cannot be saved)."""

    optimizer: Any
    get_weights: Callable[[], list[Any]]
    set_weights: Callable[[list[Any]], None]
    save: Callable[[str], None] | None = None
    save_weights: Callable[[str], None] | None = None
    is_chief: bool = True
    stop_training: bool = False
    history: History | None = None
    params: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class: override the hooks you need. `self.context` (a TrainingContext) and
    `self.params` (the fit's epochs, steps, batch_size, samples, and "metrics": the keys
    each epoch's logs will hold) are set before training starts; `self.model` too, for Keras
    programs that reach the model from a callback."""

    model: Any = None
    context: TrainingContext
    params: dict[str, Any] = {}  # noqa: RUF012  (replaced per fit by set_params)

    def set_model(self, model: Any) -> None:
        self.model = model

    def set_context(self, context: TrainingContext) -> None:
        self.context = context

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        pass

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        pass

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        pass

    def on_epoch_progress(self, seen: int, loss: Callable[[], float] | None) -> None:
        """Called as an epoch goes (after each step, or each replayed chunk of steps): `seen`
        samples done so far; `loss()` reads their mean loss from the device (None where it
        cannot be read mid-epoch). Unlike the batch hooks, this keeps a captured epoch."""

    #: True for a callback that adds the learning rate to each epoch's logs (Keras's
    #: LearningRateScheduler and ReduceLROnPlateau): "learning_rate" is then a logged figure
    logs_learning_rate = False

    #: per-batch hooks get {"loss": running mean loss of the epoch} only when this is True:
    #: that costs a device read per step, which the training loop otherwise never makes
    batch_logs = False

    def on_train_batch_begin(self, batch: int, logs: dict[str, float] | None = None) -> None:
        pass

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        pass

    def step_function(self, network: Any) -> Callable[[], None] | None:
        """Device work for every training step, or None (the default: none).

        Called when fit starts, with the Network being trained. The function it returns is
        called in every training step, after the backward pass and before the update (so it
        sees the gradients as backprop computed them, before any clipping), and is recorded
        with the step into a captured chunk: it may only issue backend operations on arrays
        it keeps (no host reads, no host values that change between steps). Return the same
        function object as long as it writes to the same arrays: a later fit replays a
        recorded chunk only with the same functions. Unlike the batch hooks, this keeps the
        captured epoch."""
        return None

    def epoch_figures(self) -> dict[str, float]:
        """Figures this callback adds to each epoch's logs (read when the epoch's steps are
        done, before any callback's on_epoch_end, so History, the progress line and
        CSVLogger see them as they see the loss). None by default."""
        return {}

    def has_batch_hooks(self) -> bool:
        """Whether this callback wants to be called between steps (then fit runs the epoch
        step by step instead of as captured replays)."""
        cls = type(self)
        return (
            cls.on_train_batch_begin is not Callback.on_train_batch_begin
            or cls.on_train_batch_end is not Callback.on_train_batch_end
        )


class History(Callback):
    """What fit returns: `history[key]` is the list of per-epoch values of one figure,
    `epoch` the epoch numbers (0-based, continuing across fit calls and resumes), `seconds`
    the wall time of each epoch."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.seconds: list[float] = []
        self.params: dict[str, Any] = {}
        self._started = 0.0

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.append(epoch, dict(logs or {}))
        self.seconds.append(time.perf_counter() - self._started)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


def format_logs(logs: dict[str, float]) -> str:
    """The progress line's figures: the loss and metrics (per-layer figures such as
    "grad_norm/dense" stay in the history, out of the line)."""
    return " - ".join(
        f"{k}: {v:.4f}" for k, v in logs.items() if k != "learning_rate" and "/" not in k
    )


class ProgbarLogger(Callback):
    """The progress report (Keras's ProgbarLogger): verbose=1, a tqdm bar per epoch (on a
    terminal; its running loss read at most once a second) and a line per epoch; verbose=2,
    the line only. The line holds figures only, so the same seed prints the same lines
    (times are in History.seconds)."""

    def __init__(self, verbose: int = 1) -> None:
        self.verbose = verbose
        self.bar: Any = None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar, self.last_refresh = None, time.monotonic()
        if self.verbose != 1:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is a dependency, but a bare environment still trains
            return
        # disable=None: drawn on a terminal, left out when stderr is a file or a pipe
        self.bar = tqdm(
            total=self.params.get("samples"),
            desc=f"Epoch {epoch + 1}/{self.params.get('last_epoch')}",
            unit="sample",
            leave=False,
            dynamic_ncols=True,
            disable=None,
        )
        self.seen = 0

    def on_epoch_progress(self, seen, loss):
        if self.bar is None:
            return
        self.bar.update(seen - self.seen)
        self.seen = seen
        if loss is not None and time.monotonic() - self.last_refresh > PROGRESS_REFRESH_S:
            self.bar.set_postfix(loss=f"{loss():.4f}")
            self.last_refresh = time.monotonic()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_epoch_end(self, epoch, logs=None):
        self._close()
        line = format_logs(dict(logs or {}))
        print(f"Epoch {epoch + 1}/{self.params.get('last_epoch')} - {line}", flush=True)

    def on_train_end(self, logs=None):
        self._close()


class CallbackList:
    """The callbacks of one fit, History and the progress report first, all given the same
    context. `training()` begins them and ends every one that began, however training ends
    (so a CSVLogger's file is closed when fit raises)."""

    def __init__(
        self,
        callbacks: Sequence[Callback] | None,
        context: TrainingContext,
        verbose: int = 0,
        model: Any = None,
    ) -> None:
        given = list(callbacks or [])
        for cb in given:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be Callback objects, got {type(cb).__name__}")
        self.history = History()
        self.context = context
        context.history = self.history
        report = [ProgbarLogger(verbose)] if verbose and context.is_chief else []
        # History last, as in Keras: it records the logs after every callback added to them
        self.callbacks: list[Callback] = [*report, *given, self.history]
        for cb in self.callbacks:
            cb.set_context(context)
            if model is not None:
                cb.set_model(model)
        self.batch_hooks = [cb for cb in self.callbacks if cb.has_batch_hooks()]
        self.batch_logs = any(cb.batch_logs for cb in self.batch_hooks)

    def set_params(self, params: dict[str, Any]) -> None:
        if any(cb.logs_learning_rate for cb in self.callbacks):
            params = {**params, "metrics": [*params.get("metrics", []), "learning_rate"]}
        self.context.params = self.history.params = params
        for cb in self.callbacks:
            cb.set_params(params)

    @contextmanager
    def training(self) -> Iterator[None]:
        """on_train_begin for each callback in order; on exit, on_train_end for each that
        began, in order, even when training (or another callback) raised: then the error
        of training is the one raised."""
        self.context.stop_training = False
        begun: list[Callback] = []
        try:
            for cb in self.callbacks:
                cb.on_train_begin()
                begun.append(cb)
            yield
        except BaseException:
            self._end(begun, quiet=True)
            raise
        self._end(begun, quiet=False)

    @staticmethod
    def _end(begun: list[Callback], quiet: bool) -> None:
        error: Exception | None = None
        for cb in begun:
            try:
                cb.on_train_end()
            except Exception as exc:  # the others still end; the first error is raised
                error = error or exc
        if error is not None and not quiet:
            raise error

    def on_epoch_begin(self, epoch: int) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch)

    def step_functions(self, network: Any) -> tuple[Callable[[], None], ...]:
        """The callbacks' per-step device functions for this fit (see Callback.step_function)."""
        found = (cb.step_function(network) for cb in self.callbacks)
        return tuple(fn for fn in found if fn is not None)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        for cb in self.callbacks:
            logs.update(cb.epoch_figures())
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_epoch_progress(self, seen: int, loss: Callable[[], float] | None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_progress(seen, loss)

    def on_train_batch_begin(self, batch: int) -> None:
        for cb in self.batch_hooks:
            cb.on_train_batch_begin(batch, {})

    def on_train_batch_end(self, batch: int, loss: Callable[[], float]) -> None:
        # the running loss costs a device read: only for a callback that asks
        logs = {"loss": loss()} if self.batch_logs else {}
        for cb in self.batch_hooks:
            cb.on_train_batch_end(batch, logs)


def _say(callback: Callback, message: str) -> None:
    """Print a callback's message (Keras's wording) when its verbose is on, on the chief."""
    if callback.verbose and callback.context.is_chief:  # type: ignore[attr-defined]
        print(message, flush=True)


def _monitored(logs: dict[str, float] | None, monitor: str, who: str) -> float:
    logs = logs or {}
    if monitor not in logs:
        raise ValueError(
            f"{who} monitors {monitor!r}, which this training does not report; available: "
            f"{', '.join(sorted(logs))} (val_* figures need validation_data or "
            "validation_split)"
        )
    return logs[monitor]


def _check_monitored(params: dict[str, Any], monitor: str, who: str) -> None:
    """Refuse, when training starts, a figure this training will not report."""
    _monitored(dict.fromkeys(params.get("metrics", []), 0.0), monitor, who)


def _check_verbose(verbose: Any) -> int:
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0 (silent) or 1 or 2 (print messages), got {verbose!r}")
    return int(verbose)


def _better(mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by more than `min_delta` for `patience` epochs.

    With restore_best_weights=True the model ends training with the weights of its best epoch.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        verbose: int = 0,
    ) -> None:
        if not is_integer(patience) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        if not (is_number(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, int(patience), float(min_delta)
        self.mode = _better(mode, monitor)
        self.restore_best_weights = restore_best_weights
        self.verbose = _check_verbose(verbose)
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None):
        _check_monitored(self.params, self.monitor, "EarlyStopping")
        self.wait = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None
        self.stopped_epoch = None

    def _improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs=None):
        value = _monitored(logs, self.monitor, "EarlyStopping")
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.context.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.context.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch is not None:
            _say(self, f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.best_weights is not None:
            if self.best_epoch is not None:
                _say(
                    self,
                    "Restoring model weights from the end of the best epoch: "
                    f"{self.best_epoch + 1}.",
                )
            self.context.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model to `filepath` after every epoch, or only when `monitor` improved
    (save_best_only=True); with save_weights_only=True only the weights
    (`Sequential.save_weights`). `filepath` may name "{epoch}" (1-based) and any figure of
    the epoch's logs ("{epoch:02d}-{val_loss:.2f}"), formatted per save. The pattern, the
    monitored figure and the place are checked when training starts (missing directories
    are made), not after the first epoch. Each save is atomic: an interrupted one leaves the
    previous file intact. (A name ending in .keras or .h5 holds this library's format.)"""

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        verbose: int = 0,
    ) -> None:
        self.path = os.fspath(filepath)
        self.monitor, self.save_best_only = monitor, bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        self.mode = _better(mode, monitor)
        self.verbose = _check_verbose(verbose)
        self.best = math.inf if self.mode == "min" else -math.inf

    @property
    def filepath(self) -> str:
        return self.path

    def on_train_begin(self, logs=None):
        # self.best is kept across fit calls (as Keras keeps it): a later fit that does worse
        # must not overwrite the best file
        keys = list(self.params.get("metrics", []))
        if self.save_best_only:  # a figure this training lacks: say so now
            _check_monitored(self.params, self.monitor, "ModelCheckpoint")
        example = self._format(0, dict.fromkeys(keys, 0.0))
        if self._save() is None:
            raise ValueError("ModelCheckpoint: this training has no model to save")
        if not self.save_weights_only:  # a model that cannot be saved: say so before epoch 1
            try:
                self.context.optimizer.config()
            except ValueError as exc:
                raise ValueError(f"ModelCheckpoint cannot save this model: {exc}") from None
        if self.context.is_chief:
            check_writable(example, create=True)

    def _save(self) -> Callable[[str], None] | None:
        return self.context.save_weights if self.save_weights_only else self.context.save

    def _format(self, epoch: int, logs: dict[str, float]) -> str:
        try:
            return self.path.format(epoch=epoch + 1, **logs)
        except KeyError as exc:
            available = ", ".join(["epoch", *logs])
            raise ValueError(
                f"ModelCheckpoint path {self.path!r} names {{{exc.args[0]}}}, which this "
                f"training does not report; it may name {available}"
            ) from None
        except (IndexError, ValueError) as exc:
            raise ValueError(
                f"ModelCheckpoint path {self.path!r} is not a valid file-name pattern: {exc} "
                "(write literal braces as {{ and }})"
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        path = self._format(epoch, dict(logs or {}))
        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            improved = value < self.best if self.mode == "min" else value > self.best
            best = "None" if math.isinf(self.best) else f"{self.best:.5f}"  # Keras's wording
            if not improved:
                _say(self, f"\nEpoch {epoch + 1}: {self.monitor} did not improve from {best}")
                return
            _say(
                self,
                f"\nEpoch {epoch + 1}: {self.monitor} improved from {best} to {value:.5f}, "
                f"saving model to {path}",
            )
            self.best = value
        else:
            _say(self, f"\nEpoch {epoch + 1}: saving model to {path}")
        save = self._save()
        if self.context.is_chief and save is not None:  # data-parallel: rank 0 writes
            check_writable(path, create=True)  # a directory named after the epoch, say
            save(path)


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments `fn` takes (2 when it cannot be told)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return 2
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


class LearningRateScheduler(Callback):
    """At the start of each epoch, set the optimizer's learning rate to
    schedule(epoch, current_learning_rate), or schedule(epoch) for a one-argument function
    (both as in Keras). It applies from that epoch's first step."""

    def __init__(self, schedule: Callable[..., float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(
                "schedule must be a callable (epoch) -> float or (epoch, learning_rate) -> float"
            )
        self.schedule, self.verbose = schedule, _check_verbose(verbose)
        self._takes_rate = _arity(schedule) >= 2

    logs_learning_rate = True

    def on_epoch_begin(self, epoch, logs=None):
        optimizer = self.context.optimizer
        if self._takes_rate:
            value = self.schedule(epoch, optimizer.current_learning_rate())
        else:
            value = self.schedule(epoch)
        lr = float(value)
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(
                f"the schedule returned learning rate {lr!r} at epoch {epoch}; "
                "it must be a positive number"
            )
        optimizer.learning_rate = lr
        _say(self, f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.context.optimizer.current_learning_rate()


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when `monitor` has not improved by more than
    `min_delta` for `patience` epochs, then wait `cooldown` epochs; never below `min_lr`
    (Keras's ReduceLROnPlateau). It applies from the next epoch's first step."""

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        verbose: int = 0,
    ) -> None:
        if not (is_number(factor) and 0.0 < factor < 1.0):
            raise ValueError(f"factor must be a number in (0, 1), got {factor!r}")
        for name, value in (("patience", patience), ("cooldown", cooldown)):
            if not is_integer(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if not (is_number(min_lr) and min_lr >= 0.0):
            raise ValueError(f"min_lr must be a number >= 0, got {min_lr!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.mode = _better(mode, monitor)
        self.min_delta, self.cooldown, self.min_lr = float(min_delta), int(cooldown), float(min_lr)
        self.verbose = _check_verbose(verbose)

    logs_learning_rate = True

    def on_train_begin(self, logs=None):
        _check_monitored(self.params, self.monitor, "ReduceLROnPlateau")
        if callable(self.context.optimizer.learning_rate):
            raise ValueError(
                "ReduceLROnPlateau sets the learning rate, but this optimizer's follows a "
                "schedule; use one or the other"
            )
        self.best = math.inf if self.mode == "min" else -math.inf
        self.wait = self.cooldown_left = 0

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:  # the rate this epoch trained with, as Keras logs it
            logs["learning_rate"] = self.context.optimizer.current_learning_rate()
        value = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        improved = (
            value < self.best - self.min_delta
            if self.mode == "min"
            else value > self.best + self.min_delta
        )
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.wait = 0
        if improved:
            self.best, self.wait = value, 0
            return
        if self.cooldown_left > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            optimizer = self.context.optimizer
            old = optimizer.current_learning_rate()
            new = max(old * self.factor, self.min_lr)
            if new < old:
                optimizer.learning_rate = new
                _say(
                    self, f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new}."
                )
            self.cooldown_left, self.wait = self.cooldown, 0


class CSVLogger(Callback):
    """One CSV row per epoch: the epoch (0-based, as Keras) and every figure of its logs
    (Keras's CSVLogger). The file is checked and opened when training starts; append=True
    continues an existing file under its own header: a figure it has no column for is
    refused then (write to a new file), and one of its columns this training lacks stays
    empty."""

    def __init__(
        self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False
    ):
        self.filename, self.separator, self.append = os.fspath(filename), separator, append

    def on_train_begin(self, logs=None):
        self.keys = [k for k in self.params.get("metrics", [])]
        if not self.context.is_chief:
            self._file = None
            return
        check_writable(self.filename, create=True)
        header = self._existing_header() if self.append else None
        if header is not None:
            self.keys = header[1:]
        self._file = open(self.filename, "a" if self.append else "w", newline="")
        self._writer = csv.writer(self._file, delimiter=self.separator)
        if header is None:
            self._writer.writerow(["epoch", *self.keys])
            self._file.flush()

    def _existing_header(self) -> list[str] | None:
        """The header of the file appended to (None when there is none yet), checked
        against this training's figures."""
        if not os.path.exists(self.filename) or os.path.getsize(self.filename) == 0:
            return None
        with open(self.filename, newline="") as f:
            header = next(csv.reader(f, delimiter=self.separator), [])
        missing = [k for k in self.keys if k not in header[1:]]
        if not header or header[0] != "epoch" or missing:
            raise ValueError(
                f"CSVLogger(append=True): {self.filename} has the columns "
                f"{self.separator.join(header) or '(none)'}, but this training reports "
                f"{', '.join(['epoch', *self.keys])}; append to a file of the same figures, "
                "or log to a new file"
            )
        return header

    def on_epoch_end(self, epoch, logs=None):
        if self._file is None:
            return
        logs = logs or {}
        self._writer.writerow([epoch, *(logs.get(k, "") for k in self.keys)])
        self._file.flush()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.close()
            self._file = None


class GradientNorms(Callback):
    """Watch gradients vanish: per epoch, for each layer with weights, the mean over the
    epoch's steps of ||dC/dW^l|| (the Frobenius norm; history key "grad_norm/<layer>") and of
    mean |delta^l| (delta = dC/dz, averaged over the batch and the units; "delta/<layer>").

    The sums accumulate on the device inside each training step (recorded into the captured
    epoch with it) and are read once per epoch: no host read per step. dW is the gradient
    backprop computed, its L2 term included, before any clipping; data-parallel, dW is the
    whole batch's (after the all-reduce) and delta this rank's shard's. Plot the result with
    `backprop.plotting.plot_gradients(history.history)`."""

    def __init__(self) -> None:
        self.layers: list[Any] = []
        self.keys: list[str] = []
        self._grads: list[Any] = []  # the dW arrays the step function reads
        self._step: Callable[[], None] | None = None

    def step_function(self, network: Any) -> Callable[[], None]:
        layers = [layer for layer in network.layers if layer.grads and hasattr(layer, "delta")]
        if not layers:
            raise ValueError("GradientNorms: the model has no layer with weights to watch")
        grads = [layer.grads[0] for layer in layers]
        same = len(grads) == len(self._grads) and all(map(operator.is_, grads, self._grads))
        if self._step is not None and same:
            return self._step  # the same arrays: a recorded epoch may replay it
        self.be, self.layers, self._grads = network.backend, layers, grads
        self.keys = [f"{kind}/{layer.name}" for kind in ("grad_norm", "delta") for layer in layers]
        self._step = self._make_step()
        return self._step

    def _make_step(self) -> Callable[[], None]:
        be, n = self.be, len(self.layers)
        self._sums = be.zeros((2 * n,))  # per layer: sum of ||dW^l||, then of sum|delta^l|/batch
        self._zeros = be.zeros((2 * n,))
        norm_sums, delta_sums = be.reshape(self._sums[:n], (n, 1, 1)), self._sums[n:]
        squares, partials = be.zeros((n, 1, 1)), be.zeros((n,))
        rows = [be.reshape(g, (1, math.prod(g.shape))) for g in self._grads]  # views of dW

        def step() -> None:  # 3 operations per layer and 4 for all: few graph nodes on a GPU
            for i, (layer, row) in enumerate(zip(self.layers, rows, strict=True)):
                be.matmul(row, row.T, out=squares[i, ...])  # ||dW||^2, one BLAS dot product
                be.sum(be.abs(layer.delta), out=partials[i, ...])
            be.add(norm_sums, be.sqrt(squares, out=squares), out=norm_sums)
            batch = int(self.layers[0].delta.shape[0])  # fixed per recorded step
            be.add(delta_sums, be.multiply(partials, 1.0 / batch, out=partials), out=delta_sums)

        return step

    def set_params(self, params):
        # CSVLogger and the checks of monitored figures see these keys as this fit's figures
        super().set_params(params)
        known = params.setdefault("metrics", [])
        known.extend(k for k in self.keys if k not in known)

    def on_epoch_begin(self, epoch, logs=None):
        if self._step is not None:
            self.be.copy(self._zeros, out=self._sums)

    def epoch_figures(self) -> dict[str, float]:
        if self._step is None:
            return {}
        sums = self.be.to_numpy(self._sums)  # the epoch's one read
        steps = max(int(self.params.get("steps", 1)), 1)
        units = [1] * len(self.layers) + [math.prod(layer.delta.shape[1:]) for layer in self.layers]
        return {
            key: float(total) / (steps * width)
            for key, total, width in zip(self.keys, sums, units, strict=True)
        }


class LambdaCallback(Callback):
    """A callback from plain functions (Keras's LambdaCallback): on_epoch_begin(epoch, logs),
    on_epoch_end(epoch, logs), on_train_begin(logs), on_train_end(logs),
    on_train_batch_begin(batch, logs), on_train_batch_end(batch, logs)."""

    HOOKS = (
        "on_epoch_begin",
        "on_epoch_end",
        "on_train_begin",
        "on_train_end",
        "on_train_batch_begin",
        "on_train_batch_end",
    )

    def __init__(self, **hooks: Callable[..., Any]) -> None:
        unknown = sorted(set(hooks) - set(self.HOOKS))
        if unknown:
            raise TypeError(
                f"LambdaCallback got {', '.join(unknown)}; it takes {', '.join(self.HOOKS)}"
            )
        for name, fn in hooks.items():
            if not callable(fn):
                raise TypeError(f"{name} must be a function, got {type(fn).__name__}")
        self.hooks = hooks

    def has_batch_hooks(self) -> bool:
        return "on_train_batch_begin" in self.hooks or "on_train_batch_end" in self.hooks

    def on_epoch_begin(self, epoch, logs=None):
        if "on_epoch_begin" in self.hooks:
            self.hooks["on_epoch_begin"](epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        if "on_epoch_end" in self.hooks:
            self.hooks["on_epoch_end"](epoch, logs)

    def on_train_begin(self, logs=None):
        if "on_train_begin" in self.hooks:
            self.hooks["on_train_begin"](logs)

    def on_train_end(self, logs=None):
        if "on_train_end" in self.hooks:
            self.hooks["on_train_end"](logs)

    def on_train_batch_begin(self, batch, logs=None):
        if "on_train_batch_begin" in self.hooks:
            self.hooks["on_train_batch_begin"](batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        if "on_train_batch_end" in self.hooks:
            self.hooks["on_train_batch_end"](batch, logs)
