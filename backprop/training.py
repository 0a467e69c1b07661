"""The training loop behind Sequential.fit, evaluate and predict.

One epoch: draw a permutation on the host (seeded) and the optimizer's per-step values
(learning rates, ...), copy both into fixed device buffers, then for each batch gather rows
on the device, forward (the output layer writing a^L into an epoch-long buffer), backward,
update. Loss and metrics are computed from that buffer at the end of the epoch and read once
each (and the loss at progress-bar refreshes, at most once a second), so the device is never
made to wait mid-epoch.

Every step of an epoch reads and writes only those fixed buffers, so the whole epoch is one
function of no arguments that the backend may capture (`Backend.capture`): on CuPy, a CUDA
graph recorded once and replayed every epoch, one host launch instead of some twenty per step.
"""

from __future__ import annotations

import math
import numbers
import time
import warnings
from typing import TYPE_CHECKING, Any

from backends import Array

from . import data
from .callbacks import Callback, History
from .distributed import Communicator, DistributedError, fingerprint, get_communicator, shard

if TYPE_CHECKING:
    from .model import Sequential

PROGRESS_REFRESH_S = 1.0  # the most often a progress bar reads the running loss
EVAL_BATCH_SIZE = 1024  # evaluate's and predict's default batch size
# The explosion rule: an epoch's loss that is finite but above both of these multiples (of
# the cost of an uninformed guess, `Loss.uninformed_cost`, and of the cost on the first batch
# with the weights the fit started from) means training diverged. An uninformed guess is
# what an untrained classifier is worth (ln 10 = 2.30 for cross-entropy over 10 classes), so
# a loss four times that has learned worse than nothing, and twice the starting cost rules
# out a model that began even worse. Both are computed only when needed: the first on the
# first batch's targets (on the host for cross-entropy), the second only for an epoch loss
# above the first bound, so a healthy fit pays nothing for the check.
EXPLOSION_OVER_CHANCE = 4.0
EXPLOSION_OVER_START = 2.0


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite, or exploded (see EXPLOSION_OVER_CHANCE); the model
    keeps its weights from before the failure."""


def exploded(loss: float, start: float, chance: float) -> bool:
    """The explosion rule: `loss` above EXPLOSION_OVER_CHANCE times `chance` (a uniform
    guess's loss) and EXPLOSION_OVER_START times `start` (the loss training started from)."""
    return loss > EXPLOSION_OVER_CHANCE * chance and loss > EXPLOSION_OVER_START * start


class _ExplosionCheck:
    """The explosion rule for one fit: `check(loss)` returns the figures of an explosion
    (loss, start, chance) or None. Its two references are measured lazily (see above)."""

    def __init__(self, model: Sequential, batches: _Pass, start_snapshot: Any) -> None:
        self.model, self.batches, self.start_snapshot = model, batches, start_snapshot
        self.chance: float | None = None
        self.start: float | None = None

    def _first_batch(self) -> tuple[Array, Array]:
        rows = slice(0, self.batches.batch_size)  # the same rows on every rank
        return self.batches.X[rows, ...], self.batches.Y[rows, ...]

    def check(self, loss_value: float) -> tuple[float, float, float] | None:
        model = self.model
        be, (loss, _) = model.backend, model._require_compiled()
        if self.chance is None:
            self.chance = loss.uninformed_cost(be, self._first_batch()[1])
        if not loss_value > EXPLOSION_OVER_CHANCE * self.chance:
            return None
        if self.start is None:  # the cost with the fit's first weights, put back for it
            X, Y = self._first_batch()
            now = _snapshot(model)
            _restore(model, self.start_snapshot)
            model._forward(X)
            self.start = float(be.to_numpy(model._cost(Y, loss)))
            _restore(model, now)
        if exploded(loss_value, self.start, self.chance):
            return loss_value, self.start, self.chance
        return None


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


class _Pass:
    """One pass over the n samples of (X, Y) on the device, in batches, in a given order.

    Batches of X are gathered into a reused buffer; Y (small: n x n_out) is put in the pass's
    order once; the output layer writes each batch's a^L straight into an (n, n_out) buffer,
    from which the loss and the metrics of the whole pass come at its end, with a few device
    operations and one read each. A training step adds no device work for them."""

    def __init__(
        self,
        model: Sequential,
        X: Array,
        Y: Array,
        batch_size: int,
        comm: Communicator | None = None,
    ) -> None:
        be = self.be = model.backend
        self.model, self.X, self.Y, self.batch_size = model, X, Y, batch_size
        self.comm = comm if comm is not None else Communicator()
        self.n = int(X.shape[0])
        self.A = be.empty((self.n, model.output_dim))
        self.refresh_targets()
        self.has_l2 = model.has_l2
        self.l2 = be.zeros(()) if self.has_l2 else None  # the epoch's L2 term, accumulated
        self._x_buffers: dict[int, Array] = {}
        self._y_buffer: Array | None = None
        self.order: Array | None = None  # the pass's permutation, in one fixed buffer
        self.values: Array | None = None  # the optimizer's step table, (steps, k)
        # X in the pass's order, gathered once per pass where the backend prefers that
        # (Backend.gather_per_pass); None: batches are gathered step by step
        self.X_order: Array | None = None
        self._gather_per_pass = be.gather_per_pass
        self.start(None)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def start(self, permutation: Any = None) -> None:
        """Begin a pass in the order of `permutation` (a host permutation of range(n); None:
        as stored), copied into this pass's fixed order buffer."""
        be = self.be
        if self.l2 is not None:
            self.l2[...] = 0.0
        if self.comm.size > 1:  # each rank fills only its shards' rows; the rest stay zero
            self.A[...] = 0.0
        if permutation is None:  # (X_order stays: a recorded graph may refer to it)
            self.order = None
            self.Y_order, self.truth_order = self.Y, self.truth
            return
        if self._y_buffer is None:
            self._y_buffer = be.empty(tuple(self.Y.shape))
            self._order_buffer = be.empty((self.n,), dtype="int64")
        self.order = be.copy(be.asarray(permutation), out=self._order_buffer)
        if self._gather_per_pass:
            try:
                if self.X_order is None:
                    self.X_order = be.empty(tuple(self.X.shape))
                be.take(self.X, self.order, out=self.X_order)
            except MemoryError:  # no room for a second copy of x: gather step by step
                self._gather_per_pass, self.X_order = False, None
        self.Y_order = be.take(self.Y, self.order, out=self._y_buffer)
        self.truth_order = [be.take(t, self.order) for t in self.truth]

    def refresh_targets(self, Y: Array | None = None) -> None:
        """Copy new targets `Y` into the pass's buffer (when given) and recompute the classes
        the metrics compare against: once per pass, not per epoch."""
        if Y is not None:
            self.be.copy(Y, out=self.Y)
        self.truth = [m.classes(self.be, self.Y) for m in self.model._metric_objects]

    def load_step_values(self, optimizer: Any) -> None:
        """The optimizer's step table for this pass's steps, copied into a fixed buffer."""
        table = self.be.asarray(optimizer.step_table(len(self)), dtype=self.be.dtype)
        if self.values is None or tuple(self.values.shape) != tuple(table.shape):
            self.values = table
        else:
            self.be.copy(table, out=self.values)

    def batch(self, k: int) -> tuple[slice, Array | None, Array | None, int]:
        """Batch k: this rank's rows of it (all of them in a single process), their X rows
        (gathered) and Y rows (None for an empty shard), and the whole batch's size."""
        rows, whole = self.span(k)
        size = rows.stop - rows.start
        if size == 0:
            return rows, None, None, whole
        if self.order is None:
            Xb = self.X[rows, ...]
        elif self.X_order is not None:
            Xb = self.X_order[rows, ...]
        else:
            buf = self._x_buffers.get(size)
            if buf is None:
                buf = self._x_buffers[size] = self.be.empty((size, *self.X.shape[1:]))
            Xb = self.be.take(self.X, self.order[rows], out=buf)
        return rows, Xb, self.Y_order[rows, ...], whole

    def span(self, k: int) -> tuple[slice, int]:
        """Batch k's rows on this rank, and the whole batch's size."""
        start = k * self.batch_size
        stop = min(start + self.batch_size, self.n)
        return shard(start, stop, self.comm.rank, self.comm.size), stop - start

    def finish(self) -> None:
        """Combine the ranks' rows of a^L: one all-reduce per pass (nothing in one process)."""
        if self.comm.size > 1:
            self.comm.allreduce_sum(self.be, self.A)

    def add_l2(self, size: int) -> None:
        """Add the current L2 term, weighted by a batch of `size` samples, into the pass's
        accumulator (in place: a captured step adds it on every replay)."""
        term = self.model._l2_cost()
        if term is not None and self.l2 is not None:
            self.be.add(self.l2, term * float(size), out=self.l2)

    def loss(self, seen: int | None = None) -> float:
        """The mean cost over the first `seen` samples of the pass (all by default)."""
        seen = self.n if seen is None else seen
        loss, _ = self.model._require_compiled()
        total = loss.value(self.be, self.A[:seen, ...], self.Y_order[:seen, ...])
        if self.l2 is not None:
            total = total + self.l2 / float(seen)
        return float(self.be.to_numpy(total))

    def run_step(self, k: int) -> None:
        """Training step k of the pass: this rank's rows of batch k, into A, with row k of the
        step table."""
        rows, Xb, Yb, size = self.batch(k)
        out = self.A[rows, ...] if Xb is not None else None
        values = None if self.values is None else self.values[k, ...]
        _step(self.model, Xb, Yb, out=out, comm=self.comm, batch=size, values=values)
        if self.has_l2:
            self.add_l2(size)

    def run_all(self) -> None:
        """Every step of the pass, in order: what a captured epoch records."""
        for k in range(len(self)):
            self.run_step(k)

    def metrics(self) -> dict[str, float]:
        be, model = self.be, self.model
        return {
            m.name: float(be.to_numpy(m.result(be, m.classes(be, self.A), true)))
            for m, true in zip(model._metric_objects, self.truth_order, strict=True)
        }


def _step(
    model: Sequential,
    Xb: Array | None,
    Yb: Array | None,
    out: Array | None = None,
    comm: Communicator | None = None,
    batch: int = 0,
    values: Array | None = None,
) -> None:
    """Forward, backward and update on one batch; a^L goes into `out` when given. `values`
    is this step's row of the optimizer's step table on the device (None: from the host).

    Data-parallel (comm.size > 1): Xb, Yb are this rank's shard of a batch of `batch`
    samples (None when the shard is empty). The shard's gradient, scaled by shard / batch, is
    summed over the ranks with one all-reduce of the flat gradient buffer, whose spare last
    slot carries how many ranks failed, so a failure on any rank stops every rank with its
    message instead of leaving the others waiting in the next collective."""
    loss, optimizer = model._require_compiled()
    if comm is None or comm.size == 1:
        model._forward(Xb, out=out, training=True)
        model._backward(Yb, loss)
        optimizer.apply([model.flat_params], [model.flat_grads], values)
        return
    be, grads, failure = model.backend, model.flat_grads, None
    try:
        if Xb is None:
            grads[...] = 0.0
        else:
            model._forward(Xb, out=out, training=True)
            model._backward(Yb, loss)
            be.multiply(grads, float(Xb.shape[0]) / batch, out=grads)
    except Exception as exc:  # reported to every rank below, then raised everywhere
        failure = exc
        grads[...] = 0.0
    grads[model.status_index] = 1.0 if failure is not None else 0.0
    comm.allreduce_sum(be, grads)
    if float(be.to_numpy(grads[model.status_index])) != 0.0:
        messages = comm.allgather(
            None if failure is None else f"{type(failure).__name__}: {failure}"
        )
        reports = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
        raise DistributedError(
            "data-parallel training stopped on every rank because " + "; ".join(reports)
        ) from failure
    optimizer.apply([model.flat_params], [grads], values)


def _snapshot(model: Sequential) -> tuple[list[Array], list[dict[str, Array]], int]:
    """Copies of what a training step changes: the parameters and the layers' states (such
    as Dropout's random-number counter), the optimizer's state, and its step count."""
    be, (_, opt) = model.backend, model._require_compiled()
    return (
        [be.copy(model.flat_params), *(be.copy(x) for x in model.states)],
        [{k: be.copy(v) for k, v in s.items()} for s in opt.state],
        opt.iterations,
    )


def _restore(model: Sequential, snap: tuple[list[Array], list[dict[str, Array]], int]) -> None:
    be, (_, opt) = model.backend, model._require_compiled()
    params, state, iterations = snap
    be.copy(params[0], out=model.flat_params)
    for saved, current in zip(params[1:], model.states, strict=True):
        be.copy(saved, out=current)
    for s, saved_s in zip(opt.state, state, strict=True):
        for k in s:
            be.copy(saved_s[k], out=s[k])
    opt.iterations = iterations


def _finite(model: Sequential, x: Array) -> bool:
    return bool(model.backend.to_numpy(model.backend.all_finite(x)))


def _recover(
    model: Sequential, snap: Any, batches: _Pass, epoch: int, explosion: _ExplosionCheck
) -> TrainingDivergedError:
    """The epoch's loss is not finite, or exploded: replay the epoch from its start, one
    checked step at a time, up to the first batch whose cost is not finite or explodes (the
    same rule as for an epoch), so the model keeps the weights from before that batch. (The
    replay reads the device every step; it runs only on failure. Data-parallel, every rank
    replays in step and they agree on each check.)"""
    comm = batches.comm
    lr = model._require_compiled()[1].current_learning_rate()
    advice = (
        f"training stopped and the model keeps the weights from before that batch. Try a "
        f"smaller learning rate (it is {lr:g})."
    )
    _restore(model, snap)
    for k in range(len(batches)):
        keep = _snapshot(model)
        _, Xb, Yb, size = batches.batch(k)
        what = None
        if Xb is not None:
            model._forward(Xb)
            cost = float(model.backend.to_numpy(model._cost(Yb, model._require_compiled()[0])))
            blown = explosion.check(cost) if math.isfinite(cost) else None
            if not math.isfinite(cost):
                what = "became NaN or infinite"
            elif blown is not None:
                what = (
                    f"exploded to {cost:.4g} (above {EXPLOSION_OVER_CHANCE:g}x that of an "
                    f"uninformed guess, {blown[2]:.4g}, and {EXPLOSION_OVER_START:g}x that when "
                    f"training started, {blown[1]:.4g})"
                )
        values = None if batches.values is None else batches.values[k, ...]
        _step(model, Xb, Yb, comm=comm, batch=size, values=values)
        if what is None and not _finite(model, model.flat_params):
            what = "became NaN or infinite"
        if not comm.all_agree(what is None):
            _restore(model, keep)
            return TrainingDivergedError(
                f"the loss {what or 'diverged on another rank'} at epoch {epoch + 1}, batch "
                f"{k + 1} of {len(batches)}; {advice}"
            )
    _restore(model, snap)  # no single batch to blame: back to the epoch's start
    return TrainingDivergedError(
        f"the loss diverged in epoch {epoch + 1} (its mean was not finite or exploded); "
        f"training stopped and the model keeps the weights from before that epoch. Try a "
        f"smaller learning rate (it is {lr:g})."
    )


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
    distributed: Any = False,
    capture: bool = True,
) -> History:
    loss, optimizer = model._require_compiled()
    if not isinstance(capture, bool):
        raise ValueError(f"capture must be True or False, got {capture!r}")
    _check_fit_args(epochs, validation_split, verbose, shuffle)
    batch_size = check_batch_size(batch_size)
    comm = get_communicator(distributed)
    be = model.backend
    X, Y = model._device_data(x, y, loss)
    n = int(X.shape[0])
    X_val = Y_val = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
            raise ValueError("validation_data must be a tuple (x_val, y_val)")
        X_val = data.check_x(be, validation_data[0], model.input_shape, "validation_data x")
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
    model.communicator = comm
    if comm.size > 1:
        verbose = verbose if comm.rank == 0 else 0  # one progress report, from rank 0
        _start_data_parallel(model, comm, n, X, Y, X_val)
    # batch_size None: the whole set is one batch; larger than the set: clamped to it
    size = n if batch_size is None else min(batch_size, n)
    # x already on the device is used as it is, so a later fit with the same x can replay
    # the graph recorded for it (y, validated on the host, is copied into its buffer)
    reusable = X is x and comm.size == 1
    states = [id(v) for st in optimizer.state for v in st.values()]
    key = (id(x), tuple(Y.shape), size, shuffle, id(optimizer), states, id(model.flat_params))
    cached = model._captured_pass
    if reusable and capture and cached is not None and cached[0] == key:
        batches, replay = cached[2], cached[3]  # the same data again: replay the same graph
        batches.refresh_targets(Y)
    else:
        model._captured_pass = None  # a recorded graph of another pass is let go
        batches = _Pass(model, X, Y, size, comm)
        replay = None

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
    validating = X_val is not None
    figures = ["loss", *model.metrics]
    history.params["metrics"] = [
        *figures,
        *(f"val_{k}" for k in (figures if validating else [])),
        "learning_rate",
    ]
    model.history = history
    model.stop_training = False
    for cb in callbacks:
        cb.set_params(history.params)
    for cb in callbacks:
        cb.on_train_begin()

    # per-batch hooks run between steps: the epoch cannot be one captured replay then
    batch_hooks = [cb for cb in callbacks if cb.has_batch_hooks()]
    batch_logs = any(cb.batch_logs for cb in batch_hooks)
    if batch_hooks:
        replay = None
    elif replay is None:
        replay = _epoch_replay(model, batches, capture)
        if reusable and replay is not None:  # kept (with x and y) for the next fit call
            model._captured_pass = (key, x, batches, replay)
    explosion: _ExplosionCheck | None = None
    first = model.epochs_done
    for epoch in range(first, first + epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        started = time.perf_counter()
        permutation = None
        if shuffle:
            permutation = model.shuffle_rng.permutation(n)
            comm.broadcast_host(permutation)  # every rank takes rank 0's order
        batches.start(permutation)
        batches.load_step_values(optimizer)
        snap = _snapshot(model)
        if explosion is None:  # the weights this fit starts from
            explosion = _ExplosionCheck(model, batches, snap)
        bar, last_refresh = _progress(verbose, n, epoch + 1, first + epochs), time.monotonic()
        if replay is not None:  # the whole epoch, as one replay (a CUDA graph on CuPy)
            replay()
            if bar is not None:
                bar.update(n)
        for k in range(len(batches) if replay is None else 0):
            for cb in batch_hooks:
                cb.on_train_batch_begin(k, {})
            batches.run_step(k)
            if batch_hooks:
                rows, _ = batches.span(k)
                # the running loss costs a device read: only for a callback that asks
                batch_log = {"loss": batches.loss(rows.stop)} if batch_logs else {}
                for cb in batch_hooks:
                    cb.on_train_batch_end(k, batch_log)
            if bar is not None:
                rows, size = batches.span(k)
                bar.update(size)
                refresh = comm.size == 1 and time.monotonic() - last_refresh > PROGRESS_REFRESH_S
                if refresh:
                    bar.set_postfix(loss=f"{batches.loss(rows.stop):.4f}")
                    last_refresh = time.monotonic()
        optimizer.iterations = snap[2] + len(batches)  # a replay advances no host counter
        if bar is not None:
            bar.close()
        batches.finish()
        epoch_loss = batches.loss()
        if not math.isfinite(epoch_loss) or explosion.check(epoch_loss) is not None:
            raise _recover(model, snap, batches, epoch, explosion)
        logs = {"loss": epoch_loss}
        logs.update(batches.metrics())
        if X_val is not None:
            val = evaluate_device(model, X_val, Y_val, EVAL_BATCH_SIZE, comm)
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
    if comm.size > 1:
        prints = comm.allgather(fingerprint(be, model.flat_params))
        if len(set(prints)) != 1:
            raise DistributedError(f"the replicas' weights differ after training: {prints}")
    return history


def _epoch_replay(model: Sequential, batches: _Pass, capture: bool) -> Any:
    """The pass's epoch as the backend's replayable (a CUDA graph on CuPy), or None to run it
    step by step here (on backends that only run eagerly, when capture=False, and
    data-parallel, where each step reads a failure flag on the host)."""
    if not capture:
        return None
    replay = model.backend.capture(batches.run_all)
    if not replay.records:
        return None
    if batches.comm.size > 1:
        warnings.warn(
            "the training step runs eagerly, without a CUDA graph: data-parallel steps read "
            "every rank's failure flag on the host after each all-reduce",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return replay


def _start_data_parallel(
    model: Sequential, comm: Communicator, n: int, X: Array, Y: Array, X_val: Array | None
) -> None:
    """Check that every rank holds the same data shapes and enough samples, then give every
    rank rank 0's weights and optimizer state, and check that they now agree."""
    be = model.backend
    comm.prepare(be)  # the all-reduce path, chosen by every rank together
    shapes = (
        n,
        tuple(X.shape[1:]),
        tuple(Y.shape[1:]),
        None if X_val is None else int(X_val.shape[0]),
    )
    everywhere = comm.allgather(shapes)
    if any(other != shapes for other in everywhere):
        raise ValueError(
            f"the training data differ across ranks (samples, x and y row shapes, "
            f"validation samples per rank): {everywhere}"
        )
    if n < comm.size:
        raise ValueError(
            f"the training set has {n} samples but there are {comm.size} ranks: "
            "each rank needs at least one sample"
        )
    comm.broadcast(be, model.flat_params)
    _, optimizer = model._require_compiled()
    for state in optimizer.state:
        for value in state.values():
            comm.broadcast(be, value)
    prints = comm.allgather(fingerprint(be, model.flat_params))
    if len(set(prints)) != 1:
        raise DistributedError(f"the replicas' initial weights differ after broadcast: {prints}")


def evaluate_device(
    model: Sequential,
    X: Array,
    Y: Array,
    batch_size: int | None,
    comm: Communicator | None = None,
) -> dict[str, float]:
    """Mean loss and metrics over device arrays (X, Y), in batches, read back once each.
    Data-parallel, each rank evaluates a contiguous block of the rows and the outputs are
    combined with one all-reduce."""
    n = int(X.shape[0])
    batches = _Pass(model, X, Y, n if batch_size is None else min(batch_size, n), comm)
    mine = shard(0, n, batches.comm.rank, batches.comm.size)
    for start in range(mine.start, mine.stop, batches.batch_size):
        rows = slice(start, min(start + batches.batch_size, mine.stop))
        model._forward(X[rows, ...], out=batches.A[rows, ...])
    batches.finish()
    if batches.has_l2:
        batches.add_l2(n)  # the weights do not change during evaluation
    logs = {"loss": batches.loss()}
    logs.update(batches.metrics())
    return logs


def forward_device(model: Sequential, X: Array, batch_size: int | None) -> Array:
    """Forward every row of X in batches (inference mode) into one device array."""
    be = model.backend
    n = int(X.shape[0])
    step = n if batch_size is None else min(batch_size, n)
    out = be.empty((n, model.output_dim))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        model._forward(X[rows, ...], out=out[rows, ...])
    return out


def predict_host(model: Sequential, X: Array, batch_size: int | None) -> Any:
    """Forward every row of X in batches into one device array, then copy it to the host."""
    return model.backend.to_numpy(forward_device(model, X, batch_size))
