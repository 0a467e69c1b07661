"""The training loop behind Sequential.fit, evaluate and predict.

One epoch: draw a permutation on the host (seeded), move it to the device, then for each
batch gather rows on the device, forward, accumulate the cost and metric counts on the device,
backward, update. The host reads the accumulated figures once at the end of the epoch (and at
progress-bar refreshes, at most once a second), so the device is never made to wait mid-epoch.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import TYPE_CHECKING, Any

from backends import Array

from . import data
from .callbacks import Callback, History

if TYPE_CHECKING:
    from .model import Sequential

PROGRESS_REFRESH_S = 1.0  # the most often a progress bar reads the running loss
EVAL_BATCH_SIZE = 1024  # evaluate's and predict's default batch size


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the model keeps its last finite weights."""


def check_batch_size(batch_size: Any) -> int | None:
    if batch_size is None:
        return None
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, numbers.Integral)
        or (batch_size < 1)
    ):
        raise ValueError(f"batch_size must be an integer >= 1 or None, got {batch_size!r}")
    return int(batch_size)


def _check_fit_args(epochs: Any, validation_split: Any, verbose: Any, shuffle: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(
            f"verbose must be 0 (silent), 1 (progress bar) or 2 (one line per "
            f"epoch), got {verbose!r}"
        )
    if not isinstance(shuffle, bool):
        raise ValueError(f"shuffle must be True or False, got {shuffle!r}")


class _Batches:
    """Gathers batches of (X, Y) on the device into buffers reused every step."""

    def __init__(self, model: Sequential, X: Array, Y: Array, batch_size: int) -> None:
        self.be, self.X, self.Y, self.batch_size = model.backend, X, Y, batch_size
        self.n = int(X.shape[0])
        self._buffers: dict[int, tuple[Array, Array]] = {}

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def get(self, order: Array | None, k: int) -> tuple[Array, Array]:
        start = k * self.batch_size
        stop = min(start + self.batch_size, self.n)
        if order is None:
            return self.X[start:stop, ...], self.Y[start:stop, ...]
        size = stop - start
        bufs = self._buffers.get(size)
        if bufs is None:
            bufs = self._buffers[size] = (
                self.be.empty((size, self.X.shape[1])),
                self.be.empty((size, self.Y.shape[1])),
            )
        idx = order[start:stop]
        return self.be.take(self.X, idx, out=bufs[0]), self.be.take(self.Y, idx, out=bufs[1])


class _Records:
    """Per-sample records of one pass over n samples, on the device: each sample's cost and,
    per metric, its predicted class; plus the L2 term of each batch, weighted by its size.
    Reduced (and read back) once, at the end of the pass."""

    def __init__(self, model: Sequential, n: int) -> None:
        be = self.be = model.backend
        self.model, self.n = model, n
        self.costs = be.empty((n,))
        self.classes = [be.empty((n,), dtype="int64") for _ in model._metric_objects]
        self.l2: Array | None = None

    def record(self, start: int, a: Array, Yb: Array) -> None:
        model, be = self.model, self.be
        stop = start + int(a.shape[0])
        loss, _ = model._require_compiled()
        loss.sample_costs(be, a, Yb, out=self.costs[start:stop])
        for metric, classes in zip(model._metric_objects, self.classes, strict=True):
            metric.classes(be, a, out=classes[start:stop])
        l2 = model._l2_cost()
        if l2 is not None:
            term = l2 * float(stop - start)
            self.l2 = term if self.l2 is None else self.l2 + term

    def loss(self, seen: int | None = None) -> float:
        """The mean cost over the first `seen` samples (all by default): one device read."""
        seen = self.n if seen is None else seen
        total = self.be.mean(self.costs[:seen])
        if self.l2 is not None:
            total = total + self.l2 / float(seen)
        return float(self.be.to_numpy(total))

    def metrics(self, true_classes: list[Array]) -> dict[str, float]:
        """Each metric against the true classes of the samples in the order they were seen."""
        return {
            m.name: float(self.be.to_numpy(m.result(self.be, predicted, true)))
            for m, predicted, true in zip(
                self.model._metric_objects, self.classes, true_classes, strict=True
            )
        }


def _step(
    model: Sequential, Xb: Array, Yb: Array, records: _Records | None = None, start: int = 0
) -> None:
    """Forward, backward and update on one batch, recording the batch's sample costs and
    predicted classes (on the device) when `records` is given."""
    loss, optimizer = model._require_compiled()
    a = model._forward(Xb)
    if records is not None:
        records.record(start, a, Yb)
    model._backward(Yb, loss)
    optimizer.apply([model.flat_params], [model.flat_grads])


def _snapshot(model: Sequential) -> tuple[list[Array], list[dict[str, Array]], int]:
    be, (_, opt) = model.backend, model._require_compiled()
    return (
        [be.copy(model.flat_params)],
        [{k: be.copy(v) for k, v in s.items()} for s in opt.state],
        opt.iterations,
    )


def _restore(model: Sequential, snap: tuple[list[Array], list[dict[str, Array]], int]) -> None:
    be, (_, opt) = model.backend, model._require_compiled()
    params, state, iterations = snap
    be.copy(params[0], out=model.flat_params)
    for s, saved_s in zip(opt.state, state, strict=True):
        for k in s:
            be.copy(saved_s[k], out=s[k])
    opt.iterations = iterations


def _finite(model: Sequential, x: Array) -> bool:
    return bool(model.backend.to_numpy(model.backend.all_finite(x)))


def _recover(
    model: Sequential, snap: Any, batches: _Batches, order: Array | None, epoch: int
) -> TrainingDivergedError:
    """The epoch's loss is not finite: replay it from its start, one checked step at a time,
    up to the first batch whose cost is not finite, so the model keeps the weights from
    before that batch. (The replay reads the device every step; it runs only on failure.)"""
    _restore(model, snap)
    for k in range(len(batches)):
        keep = _snapshot(model)
        Xb, Yb = batches.get(order, k)
        model._forward(Xb)
        cost = model._cost(Yb, model._require_compiled()[0])
        _step(model, Xb, Yb)
        if not (_finite(model, cost) and _finite(model, model.flat_params)):
            _restore(model, keep)
            lr = model._require_compiled()[1].current_learning_rate()
            return TrainingDivergedError(
                f"the loss became NaN or infinite at epoch {epoch + 1}, batch {k + 1} of "
                f"{len(batches)}; training stopped and the model keeps the weights from before "
                f"that batch. Try a smaller learning rate (it is {lr:g})."
            )
    return TrainingDivergedError(f"the loss became NaN or infinite in epoch {epoch + 1}")


def _progress(verbose: int, n: int, epoch: int, epochs: int) -> Any:
    if verbose != 1:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency, but a bare environment still trains
        return None
    # disable=None: drawn on a terminal, left out when stderr is a file or a pipe
    return tqdm(
        total=n,
        desc=f"Epoch {epoch}/{epochs}",
        unit="sample",
        leave=False,
        dynamic_ncols=True,
        disable=None,
    )


def _format_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items() if k != "learning_rate")


def fit(
    model: Sequential,
    x: Any,
    y: Any,
    epochs: int,
    batch_size: int | None,
    shuffle: bool,
    validation_data: Any,
    validation_split: float,
    callbacks: Any,
    verbose: int,
) -> History:
    loss, optimizer = model._require_compiled()
    _check_fit_args(epochs, validation_split, verbose, shuffle)
    batch_size = check_batch_size(batch_size)
    be = model.backend
    X, Y = model._device_data(x, y, loss)
    n = int(X.shape[0])
    X_val = Y_val = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a tuple (x_val, y_val)")
        X_val = data.check_x(be, validation_data[0], model.input_dim, "validation_data x")
        Y_val = data.check_y(
            be, validation_data[1], loss, model.output_dim, int(X_val.shape[0]), "validation_data y"
        )
    elif validation_split:
        n_val = int(n * validation_split)
        if n_val < 1 or n_val >= n:
            raise ValueError(
                f"validation_split={validation_split} of {n} samples leaves "
                f"{n_val} for validation and {n - n_val} for training; both "
                "need at least one"
            )
        X_val, Y_val = X[n - n_val :, ...], Y[n - n_val :, ...]
        X, Y = X[: n - n_val, ...], Y[: n - n_val, ...]
        n -= n_val
    # batch_size None: the whole set is one batch; larger than the set: clamped to it
    batches = _Batches(model, X, Y, n if batch_size is None else min(batch_size, n))

    callbacks = list(callbacks or [])
    for cb in callbacks:
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks must be Callback objects, got {type(cb).__name__}")
        cb.set_model(model)
    history = History()
    history.params = {
        "epochs": epochs,
        "steps": len(batches),
        "batch_size": batches.batch_size,
        "samples": n,
    }
    model.history = history
    model.stop_training = False
    records = _Records(model, n)
    truth = [m.classes(be, Y) for m in model._metric_objects]  # once per fit
    for cb in callbacks:
        cb.on_train_begin()

    first = model.epochs_done
    for epoch in range(first, first + epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        started = time.perf_counter()
        order = be.asarray(model.shuffle_rng.permutation(n)) if shuffle else None
        snap = _snapshot(model)
        records.l2 = None  # the costs and classes buffers are overwritten sample by sample
        bar, last_refresh = _progress(verbose, n, epoch + 1, first + epochs), time.monotonic()
        for k in range(len(batches)):
            Xb, Yb = batches.get(order, k)
            start = k * batches.batch_size
            _step(model, Xb, Yb, records, start)
            if bar is not None:
                bar.update(int(Xb.shape[0]))
                if time.monotonic() - last_refresh > PROGRESS_REFRESH_S:
                    bar.set_postfix(loss=f"{records.loss(start + int(Xb.shape[0])):.4f}")
                    last_refresh = time.monotonic()
        if bar is not None:
            bar.close()
        epoch_loss = records.loss()
        if not math.isfinite(epoch_loss):
            raise _recover(model, snap, batches, order, epoch)
        logs = {"loss": epoch_loss}
        in_order = truth if order is None else [be.take(t, order) for t in truth]
        logs.update(records.metrics(in_order))
        if X_val is not None:
            val = evaluate_device(model, X_val, Y_val, EVAL_BATCH_SIZE)
            logs.update({f"val_{k}": v for k, v in val.items()})
        logs["learning_rate"] = optimizer.current_learning_rate()
        model.epochs_done = epoch + 1
        history.append(epoch, logs)
        history.seconds.append(time.perf_counter() - started)
        if verbose:
            # figures only: the same seed prints the same lines (times are in history.seconds)
            print(f"Epoch {epoch + 1}/{first + epochs} - {_format_logs(logs)}", flush=True)
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    for cb in callbacks:
        cb.on_train_end()
    return history


def evaluate_device(
    model: Sequential, X: Array, Y: Array, batch_size: int | None
) -> dict[str, float]:
    """Mean loss and metrics over device arrays (X, Y), in batches, read back once each."""
    be, n = model.backend, int(X.shape[0])
    step = n if batch_size is None else min(batch_size, n)
    records = _Records(model, n)
    for start in range(0, n, step):
        Xb, Yb = X[start : start + step, ...], Y[start : start + step, ...]
        records.record(start, model._forward(Xb), Yb)
    logs = {"loss": records.loss()}
    logs.update(records.metrics([m.classes(be, Y) for m in model._metric_objects]))
    return logs


def predict_host(model: Sequential, X: Array, batch_size: int | None) -> Any:
    """Forward every row of X in batches into one device array, then copy it to the host."""
    be = model.backend
    n = int(X.shape[0])
    step = n if batch_size is None else min(batch_size, n)
    out = be.empty((n, model.output_dim))
    for start in range(0, n, step):
        out[start : start + step, ...] = model._forward(X[start : start + step, ...])
    return be.to_numpy(out)
