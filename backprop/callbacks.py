"""Training history and callbacks, Keras-style: hooks called by `Sequential.fit` at the start
and end of training and of each epoch, with `logs` holding the epoch's host-side figures
("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .model import Sequential


class History:
    """What fit returns: `history[key]` is the list of per-epoch values of one figure,
    `epoch` the epoch numbers (0-based, continuing across fit calls and resumes), `seconds`
    the wall time of each epoch."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.seconds: list[float] = []
        self.params: dict[str, Any] = {}

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"


class Callback:
    """Base class: override the hooks you need. `self.model` and `self.params` (the fit's
    epochs, steps, batch_size, samples, and "metrics": the keys each epoch's logs will hold)
    are set before training starts."""

    model: Sequential
    params: dict[str, Any] = {}  # noqa: RUF012  (replaced per fit by set_params)

    def set_model(self, model: Sequential) -> None:
        self.model = model

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


def _monitored(logs: dict[str, float] | None, monitor: str, who: str) -> float:
    logs = logs or {}
    if monitor not in logs:
        raise ValueError(
            f"{who} monitors {monitor!r}, which this training does not report; available: "
            f"{', '.join(sorted(logs))} (val_* figures need validation_data or "
            "validation_split)"
        )
    return logs[monitor]


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
    ) -> None:
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an integer >= 0, got {patience!r}")
        if not (isinstance(min_delta, (int, float)) and min_delta >= 0):
            raise ValueError(f"min_delta must be a number >= 0, got {min_delta!r}")
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.mode = _better(mode, monitor)
        self.restore_best_weights = restore_best_weights
        self.stopped_epoch: int | None = None

    def on_train_begin(self, logs=None):
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
                self.best_weights = self.model.get_weights()
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model to `path` after every epoch, or only when `monitor` improved
    (save_best_only=True). `path` may name "{epoch}" (1-based) and any figure of the epoch's
    logs ("{val_loss:.2f}"), formatted per save. The pattern, the monitored figure and the
    place are checked when training starts (missing directories are made), not after the
    first epoch. Each save is atomic: an interrupted one leaves the previous file intact."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: str = "auto",
    ) -> None:
        self.path = os.fspath(path)
        self.monitor, self.save_best_only = monitor, save_best_only
        self.mode = _better(mode, monitor)
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_train_begin(self, logs=None):
        from .saving import check_writable

        keys = list(self.params.get("metrics", []))
        if self.save_best_only:  # a figure this training lacks: say so now
            _monitored(dict.fromkeys(keys, 0.0), self.monitor, "ModelCheckpoint")
        example = self._format(0, dict.fromkeys(keys, 0.0))
        if self.model.is_chief:
            check_writable(example, create=True)

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
        from .saving import check_writable

        if self.save_best_only:
            value = _monitored(logs, self.monitor, "ModelCheckpoint")
            improved = value < self.best if self.mode == "min" else value > self.best
            if not improved:
                return
            self.best = value
        if self.model.is_chief:  # data-parallel: rank 0 writes, the others hold the same
            path = self._format(epoch, dict(logs or {}))
            check_writable(path, create=True)  # a directory named after the epoch, say
            self.model.save(path)


class LearningRateScheduler(Callback):
    """At the start of each epoch, set the optimizer's learning rate to
    schedule(epoch, current_learning_rate)."""

    def __init__(self, schedule: Callable[[int, float], float]) -> None:
        if not callable(schedule):
            raise TypeError("schedule must be a callable (epoch, learning_rate) -> float")
        self.schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        _, optimizer = self.model._require_compiled()
        lr = float(self.schedule(epoch, optimizer.current_learning_rate()))
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(
                f"the schedule returned learning rate {lr!r} at epoch {epoch}; "
                "it must be a positive number"
            )
        optimizer.learning_rate = lr
