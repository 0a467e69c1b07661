"""The Trainer: a Network, a loss, an optimizer and metrics, and the loops that train and
evaluate them. Sequential (model.py) is its Keras facade.

One epoch: draw a permutation on the host (seeded) and the optimizer's per-step values
(learning rates, ...), copy both into fixed device buffers, then run the steps chunk by
chunk: a chunk's rows (up to CHUNK_STEPS batches) are gathered into fixed window buffers, its
steps run forward, backward and update there (the output layer writing a^L into the window),
and its outputs go back to an epoch-long buffer. Loss and metrics come from that buffer at
the end of the epoch and are read once each, so the device is never made to wait mid-epoch.

A chunk's steps read and write only the windows, so they are one function of no arguments
that the backend may capture (`Backend.capture`): on CuPy a CUDA graph, on NumPy the list
of its backend calls (backends/tape.py), recorded once per chunk shape and replayed for
every chunk of that shape, so a recording holds at most CHUNK_STEPS steps whatever the size
of the data.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

from backends import Array
from backends.base import Replay, on_backend_device

from .callbacks import CallbackList, History, TrainingContext
from .data import warn_caller
from .distributed import Communicator, DistributedError, fingerprint, shard
from .losses import Loss, weighted
from .network import Network
from .optimizers import Optimizer

EVAL_BATCH_SIZE = 1024  # evaluate's and predict's default batch size
# Steps recorded in one chunk (one CUDA graph on CuPy): some 15-30 graph nodes a step, so a
# graph holds at most a few thousand nodes however many samples an epoch has.
CHUNK_STEPS = 64
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


def check_fit_args(epochs: Any, verbose: Any, shuffle: Any, capture: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise ValueError(f"epochs must be an integer >= 1, got {epochs!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(
            f"verbose must be 0 (silent), 1 (progress bar) or 2 (one line per "
            f"epoch), got {verbose!r}"
        )
    if not isinstance(shuffle, bool):
        raise ValueError(f"shuffle must be True or False, got {shuffle!r}")
    if not isinstance(capture, bool):
        raise ValueError(f"capture must be True or False, got {capture!r}")


class Batches:
    """One pass over the n samples of (X, Y) on the device, in batches, in a given order.

    Y (small: n x n_out) is put in the pass's order once per pass; a^L of every batch lands
    in an (n, n_out) buffer A, from which the loss and the metrics of the whole pass come at
    its end. With `chunk` > 1 the pass runs in chunks of that many steps, each staged into
    fixed windows (its X rows gathered with one launch, or on a backend that does not gather
    chunks their indices, its Y rows, its step values), which its steps read and write; with
    `chunk` = 1, or without gathered chunks, each batch's rows are gathered just before its
    step (still in the CPU's cache for it), and data-parallel ranks take their shard.
    S, when given, holds each sample's weight, (n, 1): it travels with Y (put in the pass's
    order, staged into its own window) and weights the cost and the gradient."""

    def __init__(
        self,
        network: Network,
        metrics: Sequence[Any],
        X: Array,
        Y: Array,
        batch_size: int,
        comm: Communicator,
        chunk: int = 1,
        S: Array | None = None,
    ) -> None:
        be = self.be = network.backend
        self.network, self.metrics, self.comm = network, list(metrics), comm
        self.X, self.Y, self.S, self.batch_size = X, Y, S, batch_size
        self.n = int(X.shape[0])
        self.steps = -(-self.n // batch_size)
        self.chunk = min(chunk, self.steps) if comm.size == 1 else 1
        self.A = be.empty((self.n, network.output_dim))
        self.l2: Array | None = None  # the pass's L2 term, accumulated (made by start)
        self.order: Array | None = None  # the pass's permutation, in one fixed buffer
        self.values: Array | None = None  # the optimizer's step table, (steps, k)
        self._x_buffers: dict[int, Array] = {}
        self._positions: Array | None = None  # 0..n-1, the order of an unshuffled pass
        self._y_buffer: Array | None = None
        self._s_buffer: Array | None = None
        self.windows: tuple[Array, Array, Array] | None = None
        self.window_values: Array | None = None
        self.weight_window: Array | None = None
        if self.chunk > 1:
            rows = min(self.chunk * batch_size, self.n)
            shapes = (Y.shape[1:], (network.output_dim,))
            Yw, Aw = (be.empty((rows, *s)) for s in shapes)
            # the X window: the chunk's rows of X, gathered at once (be.gather_chunks), or
            # their indices, from which each step gathers its batch's rows into one buffer
            # just before it (still in the CPU's cache for it)
            Xw = be.empty((rows, *X.shape[1:])) if be.gather_chunks else be.empty((rows,), "int64")
            self.windows = (Xw, Yw, Aw)
            if S is not None:
                self.weight_window = be.empty((rows, 1))
        self.refresh_targets()
        self.start(None)

    @property
    def chunks(self) -> int:
        return -(-self.steps // self.chunk)

    def chunk_steps(self, c: int) -> range:
        return range(c * self.chunk, min((c + 1) * self.chunk, self.steps))

    def chunk_rows(self, c: int) -> slice:
        size = self.chunk * self.batch_size
        return slice(c * size, min((c + 1) * size, self.n))

    def start(self, permutation: Any = None) -> None:
        """Begin a pass in the order of `permutation` (a host permutation of range(n); None:
        as stored), copied into this pass's fixed order buffer."""
        be = self.be
        if self.l2 is None and self.network.has_l2:  # (a regularizer set since the last fit)
            self.l2 = be.zeros(())
        if self.l2 is not None:
            self.l2[...] = 0.0
        if self.comm.size > 1:  # each rank fills only its shards' rows; the rest stay zero
            self.A[...] = 0.0
        if permutation is None:
            self.order = None
            self.Y_order, self.S_order, self.truth_order = self.Y, self.S, self.truth
            return
        if self._y_buffer is None:
            self._y_buffer = be.empty(tuple(self.Y.shape))
            self._order_buffer = be.empty((self.n,), dtype="int64")
            if self.S is not None:
                self._s_buffer = be.empty((self.n, 1))
        self.order = be.copy(be.asarray(permutation), out=self._order_buffer)
        self.Y_order = be.take(self.Y, self.order, out=self._y_buffer)
        self.S_order = None if self.S is None else be.take(self.S, self.order, out=self._s_buffer)
        self.truth_order = [be.take(t, self.order) for t in self.truth]

    def refresh_targets(self, Y: Array | None = None, S: Array | None = None) -> None:
        """Take a new fit's targets `Y` and weights `S` (when given) and recompute what the
        metrics compare against: once per fit, not per epoch. The pass reads them and
        never writes them: Y may be the caller's own array (NumPy hands it over uncopied),
        which a copy into the last fit's Y would overwrite."""
        if Y is not None:
            self.Y = Y
        if S is not None:
            self.S = S
        self.truth = [m.truth(self.be, self.Y) for m in self.metrics]

    def load_step_values(self, optimizer: Optimizer) -> None:
        """The optimizer's step table for this pass's steps, copied into a fixed buffer."""
        be = self.be
        table = be.asarray(optimizer.step_table(self.steps), dtype=be.dtype)
        if self.values is None or tuple(self.values.shape) != tuple(table.shape):
            self.values = table
            if self.windows is not None:
                self.window_values = be.empty((self.chunk, int(table.shape[1])))
        else:
            be.copy(table, out=self.values)

    def stage(self, c: int) -> None:
        """Chunk c's X rows (gathered in the pass's order), Y rows and step values, copied
        into the windows its steps read."""
        if self.windows is None:
            return
        be, (Xw, Yw, _) = self.be, self.windows
        rows, steps = self.chunk_rows(c), self.chunk_steps(c)
        size = rows.stop - rows.start
        if not be.gather_chunks:  # the rows' indices; each step gathers its own
            order = self.order
            if order is None:
                if self._positions is None:
                    self._positions = be.arange(self.n)
                order = self._positions
            be.copy(order[rows], out=Xw[:size])
        elif self.order is None:
            be.copy(self.X[rows, ...], out=Xw[:size, ...])
        else:
            be.take(self.X, self.order[rows], out=Xw[:size, ...])
        be.copy(self.Y_order[rows, ...], out=Yw[:size, ...])
        if self.S_order is not None and self.weight_window is not None:
            be.copy(self.S_order[rows, ...], out=self.weight_window[:size, ...])
        if self.values is not None and self.window_values is not None:
            window = self.window_values[: len(steps), ...]
            be.copy(self.values[steps.start : steps.stop, ...], out=window)

    def unstage(self, c: int) -> None:
        """Chunk c's outputs a^L, from its window into the pass's buffer."""
        if self.windows is None:
            return
        rows = self.chunk_rows(c)
        self.be.copy(self.windows[2][: rows.stop - rows.start, ...], out=self.A[rows, ...])

    def step(
        self, k: int
    ) -> tuple[Array | None, Array | None, Array | None, Array | None, int, Array | None]:
        """What step k reads and writes: its X and Y rows (this rank's; None for an empty
        shard), their weights (None: unweighted), where a^L goes, the whole batch's size,
        and its row of the step table. In chunks, these are places in the windows that
        depend only on k's place in its chunk, so every chunk of one shape runs the same
        operations on the same arrays."""
        if self.windows is None:
            rows, Xb, Yb, size = self.batch(k)
            out = self.A[rows, ...] if Xb is not None else None
            values = None if self.values is None else self.values[k, ...]
            return Xb, Yb, self.weights(rows, Xb), out, size, values
        c, j = divmod(k, self.chunk)
        rows = self.chunk_rows(c)
        lo, hi = j * self.batch_size, min((j + 1) * self.batch_size, rows.stop - rows.start)
        Xw, Yw, Aw = self.windows
        values = None if self.window_values is None else self.window_values[j, ...]
        Xb = Xw[lo:hi, ...]
        if not self.be.gather_chunks:
            Xb = self.be.take(self.X, Xb, out=self._x_buffer(self.batch_size)[: hi - lo, ...])
        Sw = self.weight_window
        Sb = None if Sw is None else Sw[lo:hi, ...]
        return Xb, Yw[lo:hi, ...], Sb, Aw[lo:hi, ...], hi - lo, values

    def weights(self, rows: slice, Xb: Array | None) -> Array | None:
        """The weights of the pass's `rows` (None: unweighted, or an empty shard)."""
        return None if self.S_order is None or Xb is None else self.S_order[rows, ...]

    def batch(self, k: int) -> tuple[slice, Array | None, Array | None, int]:
        """Batch k, gathered on its own: this rank's rows of it (all of them in a single
        process), their X rows and Y rows (None for an empty shard), and the batch's size."""
        rows, whole = self.span(k)
        size = rows.stop - rows.start
        if size == 0:
            return rows, None, None, whole
        if self.order is None:
            Xb = self.X[rows, ...]
        else:
            Xb = self.be.take(self.X, self.order[rows], out=self._x_buffer(size))
        return rows, Xb, self.Y_order[rows, ...], whole

    def _x_buffer(self, size: int) -> Array:
        """A buffer for the X rows of a batch of `size` samples, made once."""
        buf = self._x_buffers.get(size)
        if buf is None:
            buf = self._x_buffers[size] = self.be.empty((size, *self.X.shape[1:]))
        return buf

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
        term = self.network.l2_cost()
        if term is not None and self.l2 is not None:
            self.be.add(self.l2, self.be.multiply(term, float(size)), out=self.l2)

    def loss(self, loss: Loss, seen: int | None = None) -> float:
        """The mean cost over the first `seen` samples of the pass (all by default)."""
        seen = self.n if seen is None else seen
        loss = weighted(loss, None if self.S_order is None else self.S_order[:seen, ...])
        total = loss.value(self.be, self.A[:seen, ...], self.Y_order[:seen, ...])
        if self.l2 is not None:
            total = total + self.l2 / float(seen)
        return float(self.be.to_numpy(total))

    def figures(self) -> dict[str, float]:
        """The metrics of the whole pass, one device read each."""
        be = self.be
        return {
            m.name: float(be.to_numpy(m.result(be, m.classes(be, self.A), true)))
            for m, true in zip(self.metrics, self.truth_order, strict=True)
        }


class EpochFunction:
    """An epoch's data pass and how its steps run: chunk by chunk, each chunk's steps as one
    replay of the backend (a CUDA graph on CuPy, recorded once per chunk shape), or step by
    step where there is nothing to capture or a callback runs between steps.

    It holds (does not just name) what its recordings write to and read from: the data, the
    parameter buffer and the optimizer's state arrays. `matches` tells a later fit whether
    they are still the ones in use; a compile() makes a new Trainer, and this goes with the
    old one."""

    def __init__(self, trainer: Trainer, batches: Batches, capture: bool, key: tuple) -> None:
        self.trainer, self.batches, self.key = trainer, batches, key
        self.capture = capture
        self.replays: dict[tuple[int, int], Replay] = {}
        self.constants = trainer.step_constants()

    def forget_changed_constants(self) -> None:
        """Drop the recordings if a setting they hold as a constant has changed since they
        were made (a regularizer's strength, global_clipnorm, momentum: set between fits or
        by a callback): the next pass records anew, with the new value."""
        constants = self.trainer.step_constants()
        if constants != self.constants:
            self.replays.clear()
            self.constants = constants

    def matches(self, key: tuple) -> bool:
        if len(key) != len(self.key):
            return False
        pairs = zip(key, self.key, strict=True)
        return all(a is b or (not hasattr(a, "shape") and a == b) for a, b in pairs)

    def run(self, callbacks: CallbackList) -> None:
        """Every step of the pass, in order, reporting progress after each chunk (or step)."""
        b = self.batches
        # only windows have the fixed addresses a recording replays; unchunked passes (where
        # nothing records) run step by step
        stepwise = not self.capture or b.windows is None or bool(callbacks.batch_hooks)
        for c in range(b.chunks):
            b.stage(c)
            steps = b.chunk_steps(c)
            if stepwise:
                for k in steps:
                    callbacks.on_train_batch_begin(k)
                    self.trainer.run_step(b, k)
                    seen = min((k + 1) * b.batch_size, b.n)  # whole batches, on every rank
                    if callbacks.batch_hooks:
                        b.unstage(c)  # the running loss reads the steps' a^L from the pass's buffer
                        callbacks.on_train_batch_end(k, self._running_loss(seen))
                    if b.windows is None:
                        self._progress(callbacks, seen)
            else:
                self._replay(c)()
            b.unstage(c)
            if b.windows is not None:
                self._progress(callbacks, b.chunk_rows(c).stop)

    def _replay(self, c: int) -> Replay:
        """The replay of chunk c's steps: chunks of one shape (steps, rows) share it."""
        b = self.batches
        rows, steps = b.chunk_rows(c), b.chunk_steps(c)
        shape = (len(steps), rows.stop - rows.start)
        replay = self.replays.get(shape)
        if replay is None:
            trainer = self.trainer  # (not self: a replay kept by this function must not
            # keep it alive in a cycle, with the data it holds, once a fit lets go of it)

            def chunk() -> None:
                for k in steps:
                    trainer.run_step(b, k)

            replay = self.replays[shape] = b.be.capture(chunk)
        return replay

    def _running_loss(self, seen: int) -> Callable[[], float]:
        return lambda: self.batches.loss(self.trainer.loss, seen)

    def _progress(self, callbacks: CallbackList, seen: int) -> None:
        # a rank's buffer holds only its own rows until the pass ends: no running loss then
        loss = self._running_loss(seen) if self.batches.comm.size == 1 else None
        callbacks.on_epoch_progress(seen, loss)


class _ExplosionCheck:
    """The explosion rule for one fit: `check(loss)` returns the figures of an explosion
    (loss, start, chance) or None. Its two references are measured lazily (see above)."""

    def __init__(self, trainer: Trainer, batches: Batches, start_snapshot: Any) -> None:
        self.trainer, self.batches, self.start_snapshot = trainer, batches, start_snapshot
        self.chance: float | None = None
        self.start: float | None = None

    def _first_batch(self) -> tuple[Array, Array]:
        rows = slice(0, self.batches.batch_size)  # the same rows on every rank
        return self.batches.X[rows, ...], self.batches.Y[rows, ...]

    def check(self, loss_value: float) -> tuple[float, float, float] | None:
        trainer, S = self.trainer, self.batches.S
        be, network = trainer.backend, trainer.network
        loss = weighted(trainer.loss, None if S is None else S[: self.batches.batch_size, ...])
        if self.chance is None:
            self.chance = loss.uninformed_cost(be, self._first_batch()[1])
        if not loss_value > EXPLOSION_OVER_CHANCE * self.chance:
            return None
        if self.start is None:  # the cost with the fit's first weights, put back for it
            X, Y = self._first_batch()
            now = trainer.snapshot()
            trainer.restore(self.start_snapshot)
            network.forward(X)
            self.start = float(be.to_numpy(network.cost(Y, loss)))
            trainer.restore(now)
        if exploded(loss_value, self.start, self.chance):
            return loss_value, self.start, self.chance
        return None


Snapshot = tuple[list[Array], list[dict[str, Array]], int]


@on_backend_device("backend")  # array work on the backend's device (GPU k, not 0)
class Trainer:
    """Trains `network` on `loss` with `optimizer`, reporting `metrics`, in one process or
    data-parallel over `communicator`'s ranks.

    `train_step` and `test_step` are one batch each (what train_on_batch and test_on_batch
    call); `fit` is the epoch loop; `run_epoch(order)` is one pass over the fit's data.
    `train_function` caches the epoch's recorded form for the next fit with the same data."""

    def __init__(
        self,
        network: Network,
        loss: Loss,
        optimizer: Optimizer,
        metrics: Sequence[Any] = (),
        communicator: Communicator | None = None,
    ) -> None:
        self.network, self.loss, self.optimizer = network, loss, optimizer
        self.metrics = list(metrics)
        self.communicator = communicator if communicator is not None else Communicator()
        self.backend = network.backend
        self.train_function: EpochFunction | None = None
        self._explosion: _ExplosionCheck | None = None
        #: the fit's callbacks' per-step device functions (Callback.step_function), called in
        #: each step between backward and update; empty outside fit
        self.step_hooks: tuple[Callable[[], None], ...] = ()

    def ready(self) -> None:
        """Build the optimizer's state for the network's parameters, if not yet built."""
        if not self.optimizer.built:
            self.optimizer.build([self.network.flat_params], self.backend)

    # ------------------------------------------------------------------ one batch
    def step(
        self,
        Xb: Array | None,
        Yb: Array | None,
        out: Array | None = None,
        batch: int = 0,
        values: Array | None = None,
        weights: Array | None = None,
    ) -> None:
        """Forward, backward and update on one batch; a^L goes into `out` when given. `values`
        is this step's row of the optimizer's step table on the device (None: from the host);
        `weights` (batch, 1) weight each sample's cost (None: unweighted).

        Data-parallel: Xb, Yb are this rank's shard of a batch of `batch` samples (None when
        the shard is empty). The shard's gradient, scaled by shard / batch, is summed over the
        ranks with one all-reduce of the flat gradient buffer, whose spare last slot carries
        how many ranks failed, so a failure on any rank stops every rank with its message
        instead of leaving the others waiting in the next collective."""
        network, optimizer, comm = self.network, self.optimizer, self.communicator
        loss = weighted(self.loss, weights)
        if comm.size == 1:
            network.forward(Xb, out=out, training=True)
            network.backward(Yb, loss)
            for hook in self.step_hooks:  # callbacks' device work (GradientNorms), recorded too
                hook()
            network.keep_frozen()  # trainable=False: those parameters stay as they are
            optimizer.apply([network.flat_params], [network.flat_grads], values)
            network.put_back_frozen()
            return
        failure = self._shard_gradient(Xb, Yb, out, batch, loss)
        grads, be = network.flat_grads, self.backend
        comm.allreduce_sum(be, grads)
        if float(be.to_numpy(grads[network.status_index])) != 0.0:
            messages = comm.allgather(
                None if failure is None else f"{type(failure).__name__}: {failure}"
            )
            reports = [f"rank {r}: {m}" for r, m in enumerate(messages) if m is not None]
            raise DistributedError(
                "data-parallel training stopped on every rank because " + "; ".join(reports)
            ) from failure
        for hook in self.step_hooks:
            hook()
        network.keep_frozen()
        optimizer.apply([network.flat_params], [grads], values)
        network.put_back_frozen()

    def _shard_gradient(
        self, Xb: Array | None, Yb: Array | None, out: Array | None, batch: int, loss: Loss
    ) -> Exception | None:
        """This rank's share of the batch gradient, and its failure flag in the spare slot."""
        network, be = self.network, self.backend
        grads, failure = network.flat_grads, None
        try:
            if Xb is None:
                grads[...] = 0.0
            else:
                network.forward(Xb, out=out, training=True)
                network.backward(Yb, loss)
                be.multiply(grads, float(Xb.shape[0]) / batch, out=grads)
        except Exception as exc:  # reported to every rank by the caller, then raised
            failure = exc
            grads[...] = 0.0
        grads[network.status_index] = 1.0 if failure is not None else 0.0
        return failure

    def run_step(self, batches: Batches, k: int) -> None:
        """Training step k of a pass, its regularization term added to the pass's
        accumulator: that of the weights the step starts from, whose outputs the pass's
        cost is computed from (as Keras reports the loss)."""
        Xb, Yb, Sb, out, size, values = batches.step(k)
        if batches.l2 is not None:
            batches.add_l2(size)
        self.step(Xb, Yb, out=out, batch=size, values=values, weights=Sb)

    def train_step(self, X: Array, Y: Array, S: Array | None = None) -> dict[str, float]:
        """One training step on the batch (X, Y), its samples weighted by S (batch, 1) when
        given; returns the batch's loss (and metrics) before the update, as Keras's
        train_on_batch does: one device read each."""
        self.ready()
        be, network = self.backend, self.network
        n = int(X.shape[0])
        A = be.empty((n, network.output_dim))
        l2 = network.l2_cost()  # of the weights the step starts from, as the cost is
        # data-parallel (after a data-parallel fit), every rank holds this whole batch, as
        # they all hold fit's data: each adds 1/ranks of its gradient into the all-reduce
        self.step(X, Y, out=A, batch=n * self.communicator.size, weights=S)
        cost = weighted(self.loss, S).value(be, A, Y)
        if l2 is not None:
            cost = be.add(cost, l2)
        return {"loss": float(be.to_numpy(cost)), **self._metric_values(A, Y)}

    def test_step(self, X: Array, Y: Array, S: Array | None = None) -> dict[str, float]:
        """The loss and metrics of the batch (X, Y), inference mode, no update."""
        A = self.network.forward(X)
        cost = self.network.cost(Y, weighted(self.loss, S))
        return {"loss": float(self.backend.to_numpy(cost)), **self._metric_values(A, Y)}

    def _metric_values(self, A: Array, Y: Array) -> dict[str, float]:
        be = self.backend
        return {
            m.name: float(be.to_numpy(m.result(be, m.classes(be, A), m.truth(be, Y))))
            for m in self.metrics
        }

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        X: Array,
        Y: Array,
        *,
        epochs: int,
        batch_size: int | None,
        callbacks: CallbackList,
        first_epoch: int = 0,
        rng: Any = None,
        validation: tuple[Array, Array, Array | None] | None = None,
        capture: bool = True,
        keep: bool = False,
        weights: Array | None = None,
    ) -> History:
        """Train for `epochs` epochs on device arrays (X, Y), numbered from `first_epoch`,
        shuffled by the host generator `rng` (None: in order), each sample's cost weighted
        by `weights` (n, 1) when given. `keep`: X is the caller's own array, so the recorded
        epoch is kept for the next fit with it."""
        self.ready()
        comm, n = self.communicator, int(X.shape[0])
        if comm.size > 1:
            self._start_data_parallel(n, X, Y, validation)
        hooks = callbacks.step_functions(self.network)
        function = self._epoch_function(
            X, Y, batch_size, rng is not None, capture, callbacks, hooks, weights
        )
        self.train_function = function if keep else None
        callbacks.set_params(self._params(function.batches, epochs, first_epoch, validation))
        self._explosion = None
        with callbacks.training():
            try:
                self.step_hooks = hooks  # the steps of this fit only
                self._epochs(function, callbacks, epochs, first_epoch, rng, validation)
            finally:
                self._explosion = None  # it holds the data: let go with the fit
                self.step_hooks = ()
        if comm.size > 1:
            self._check_replicas("after training")
        return callbacks.history

    def _epochs(
        self,
        function: EpochFunction,
        callbacks: CallbackList,
        epochs: int,
        first_epoch: int,
        rng: Any,
        validation: tuple[Array, Array, Array | None] | None,
    ) -> None:
        comm, n = self.communicator, function.batches.n
        for epoch in range(first_epoch, first_epoch + epochs):
            callbacks.on_epoch_begin(epoch)
            order = None if rng is None else rng.permutation(n)
            if order is not None:
                comm.broadcast_host(order)  # every rank takes rank 0's order
            logs = self.run_epoch(order, callbacks, epoch, function)
            if validation is not None:
                X_val, Y_val, S_val = validation
                val = self.evaluate(X_val, Y_val, EVAL_BATCH_SIZE, weights=S_val)
                logs.update({f"val_{k}": v for k, v in val.items()})
            callbacks.on_epoch_end(epoch, logs)
            if callbacks.context.stop_training:
                break

    def _params(
        self, batches: Batches, epochs: int, first_epoch: int, validation: Any
    ) -> dict[str, Any]:
        figures = ["loss", *(m.name for m in self.metrics)]
        validated = [f"val_{k}" for k in figures] if validation is not None else []
        return {
            "epochs": epochs,
            "last_epoch": first_epoch + epochs,
            "steps": batches.steps,
            "batch_size": batches.batch_size,
            "samples": batches.n,
            "metrics": [*figures, *validated],  # the callbacks add what they log
        }

    def _epoch_function(
        self,
        X: Array,
        Y: Array,
        batch_size: int | None,
        shuffle: bool,
        capture: bool,
        callbacks: CallbackList,
        hooks: tuple[Callable[[], None], ...] = (),
        weights: Array | None = None,
    ) -> EpochFunction:
        """The cached epoch function where it was made for the same data, arrays and step
        hooks (a recording holds the hooks' work), else a new one (recording nothing yet)."""
        n, be, comm = int(X.shape[0]), self.backend, self.communicator
        size = n if batch_size is None else min(batch_size, n)  # larger than the set: clamped
        wanted = capture and not callbacks.batch_hooks
        capture = wanted and comm.size == 1 and self._recordable(hooks)
        # a recording needs the fixed addresses of a chunk's windows (see Batches)
        chunked = be.gather_chunks or (capture and be.capture_records is not None)
        chunk = CHUNK_STEPS if chunked and not callbacks.batch_hooks else 1
        states = [v for state in self.optimizer.state for v in state.values()]
        frozen = tuple(self.network.trainable_mask())  # what a recording keeps frozen
        key: tuple[Any, ...] = (X, tuple(Y.shape), size, shuffle, chunk, capture, hooks, frozen)
        key = (*key, self.network.flat_params, *states, weights is not None)
        cached = self.train_function
        if cached is not None and cached.matches(key):
            cached.batches.refresh_targets(Y, weights)  # the same data again: the same recordings
            return cached
        self.train_function = None  # recordings for other arrays are let go
        if wanted and comm.size > 1 and be.capture_records == "device":
            warn_caller(
                "the training step runs eagerly, without a CUDA graph: data-parallel steps "
                "read every rank's failure flag on the host after each all-reduce",
                RuntimeWarning,
            )
        batches = Batches(self.network, self.metrics, X, Y, size, comm, chunk, weights)
        return EpochFunction(self, batches, capture, key)

    def step_constants(self) -> tuple[Any, ...]:
        """The settings a recorded or captured step holds as constants: the optimizer's (not
        its learning rate, which each step reads from the device) and the regularizers'."""
        optimizer = self.optimizer
        hyperparameters = (optimizer.global_clipnorm, optimizer.hyperparameters())
        return (hyperparameters, self.network.penalty_config())

    def _recordable(self, hooks: tuple[Callable[[], None], ...] = ()) -> bool:
        """Whether the backend may record this trainer's step. A recording of the backend's
        calls (the CPU's) replays only what goes through the backend's methods, as all the
        array work of this library's own layers, activations, losses, optimizers and step
        functions (GradientNorms') does; a user's own class or callback might write arrays in
        place with NumPy, which it would not see."""
        if self.backend.capture_records != "calls":
            return True
        layers = self.network.layers
        parts = [
            self.loss,
            self.optimizer,
            *layers,
            *(getattr(x, "activation", None) for x in layers),
        ]
        ours = all(p is None or type(p).__module__.startswith("backprop.") for p in parts)
        # a hook's module: None for a builtin's bound method ([].clear), absent for some
        # other callables (method-wrappers); neither is ours
        modules = [getattr(h, "__module__", None) or "" for h in hooks]
        return ours and all(m.startswith("backprop.") for m in modules)

    def run_epoch(
        self,
        order: Any = None,
        callbacks: CallbackList | None = None,
        epoch: int = 0,
        function: EpochFunction | None = None,
    ) -> dict[str, float]:
        """One pass over the fit's data in `order` (a host permutation; None: as stored):
        every step, then the pass's loss and metrics. A loss that is not finite or exploded
        puts back the weights from before the failing batch and raises
        TrainingDivergedError."""
        function = function or self.train_function
        if function is None:
            raise RuntimeError("run_epoch needs the data of a fit: call fit first")
        function.forget_changed_constants()
        batches = function.batches
        batches.start(order)
        batches.load_step_values(self.optimizer)
        snap = self.snapshot()
        if self._explosion is None:  # the weights this fit starts from
            self._explosion = _ExplosionCheck(self, batches, snap)
        function.run(callbacks or CallbackList(None, _null_context(self.optimizer)))
        self.optimizer.iterations = snap[2] + batches.steps  # a replay advances no counter
        batches.finish()
        loss = batches.loss(self.loss)
        if not math.isfinite(loss) or self._explosion.check(loss) is not None:
            raise self._recover(snap, batches, epoch)
        return {"loss": loss, **batches.figures()}

    # ------------------------------------------------------------------ the guard
    def snapshot(self) -> Snapshot:
        """Copies of what a training step changes: the network's parameters and states, the
        optimizer's state, and its step count."""
        be = self.backend
        return (
            self.network.snapshot(),
            [{k: be.copy(v) for k, v in s.items()} for s in self.optimizer.state],
            self.optimizer.iterations,
        )

    def restore(self, snap: Snapshot) -> None:
        network_snap, state, iterations = snap
        self.network.restore(network_snap)
        for s, saved_s in zip(self.optimizer.state, state, strict=True):
            for k in s:
                self.backend.copy(saved_s[k], out=s[k])
        self.optimizer.iterations = iterations

    def _recover(self, snap: Snapshot, batches: Batches, epoch: int) -> TrainingDivergedError:
        """The epoch's loss is not finite, or exploded: replay the epoch from its start, one
        checked step at a time, up to the first batch whose cost is not finite or explodes
        (the same rule as for an epoch), so the model keeps the weights from before that
        batch. (The replay reads the device every step; it runs only on failure.
        Data-parallel, every rank replays in step and they agree on each check.)"""
        lr = self.optimizer.current_learning_rate()
        self.restore(snap)
        for k in range(batches.steps):
            keep = self.snapshot()
            rows, Xb, Yb, size = batches.batch(k)
            Sb = batches.weights(rows, Xb)
            what = None if Xb is None else self._batch_failure(Xb, Yb, Sb)
            values = None if batches.values is None else batches.values[k, ...]
            self.step(Xb, Yb, batch=size, values=values, weights=Sb)
            if what is None and not self._finite(self.network.flat_params):
                what = "became NaN or infinite"
            if not self.communicator.all_agree(what is None):
                self.restore(keep)
                return TrainingDivergedError(
                    f"the loss {what or 'diverged on another rank'} at epoch {epoch + 1}, batch "
                    f"{k + 1} of {batches.steps}; training stopped and the model keeps the "
                    f"weights from before that batch. Try a smaller learning rate (it is {lr:g})."
                )
        self.restore(snap)  # no single batch to blame: back to the epoch's start
        return TrainingDivergedError(
            f"the loss diverged in epoch {epoch + 1} (its mean was not finite or exploded); "
            f"training stopped and the model keeps the weights from before that epoch. Try a "
            f"smaller learning rate (it is {lr:g})."
        )

    def _batch_failure(self, Xb: Array, Yb: Array, Sb: Array | None) -> str | None:
        """Why the cost of this batch, before its step, counts as divergence (None: it
        does not)."""
        assert self._explosion is not None
        self.network.forward(Xb)
        cost = float(self.backend.to_numpy(self.network.cost(Yb, weighted(self.loss, Sb))))
        if not math.isfinite(cost):
            return "became NaN or infinite"
        blown = self._explosion.check(cost)
        if blown is None:
            return None
        return (
            f"exploded to {cost:.4g} (above {EXPLOSION_OVER_CHANCE:g}x that of an "
            f"uninformed guess, {blown[2]:.4g}, and {EXPLOSION_OVER_START:g}x that when "
            f"training started, {blown[1]:.4g})"
        )

    def _finite(self, x: Array) -> bool:
        return bool(self.backend.to_numpy(self.backend.all_finite(x)))

    # ------------------------------------------------------------------ data-parallel
    def _start_data_parallel(
        self, n: int, X: Array, Y: Array, validation: tuple[Array, Array, Array | None] | None
    ) -> None:
        """Check that every rank holds the same data shapes and enough samples, then give
        every rank rank 0's weights and optimizer state, and check that they now agree."""
        be, comm = self.backend, self.communicator
        if self.network.uses_batch_statistics:  # each rank would see only its shard's
            raise ValueError(
                "BatchNormalization is not supported in data-parallel training: each rank "
                "would normalize with its own shard's statistics and the replicas' moving "
                "statistics would drift apart; train it in one process"
            )
        comm.prepare(be)  # the all-reduce path, chosen by every rank together
        shapes = (
            n,
            tuple(X.shape[1:]),
            tuple(Y.shape[1:]),
            None if validation is None else int(validation[0].shape[0]),
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
        comm.broadcast(be, self.network.flat_params)
        for state in self.optimizer.state:
            for value in state.values():
                comm.broadcast(be, value)
        self._check_replicas("initial", "after broadcast")

    def _check_replicas(self, which: str, when: str = "") -> None:
        prints = self.communicator.allgather(fingerprint(self.backend, self.network.flat_params))
        if len(set(prints)) != 1:
            label = f"{which} weights" if which == "initial" else f"weights {which}"
            raise DistributedError(
                f"the replicas' {label}{' ' + when if when else ''} differ: {prints}"
            )

    # ------------------------------------------------------------------ inference
    def evaluate(
        self, X: Array, Y: Array, batch_size: int | None, weights: Array | None = None
    ) -> dict[str, float]:
        """Mean loss and metrics over device arrays (X, Y), in batches, read back once
        each; `weights` (n, 1) weight each sample's cost. Data-parallel, each rank evaluates
        a contiguous block of the rows and the outputs are combined with one all-reduce."""
        n = int(X.shape[0])
        size = n if batch_size is None else min(batch_size, n)
        batches = Batches(self.network, self.metrics, X, Y, size, self.communicator, S=weights)
        mine = shard(0, n, self.communicator.rank, self.communicator.size)
        for start in range(mine.start, mine.stop, size):
            rows = slice(start, min(start + size, mine.stop))
            self.network.forward(X[rows, ...], out=batches.A[rows, ...])
        batches.finish()
        if batches.l2 is not None:
            batches.add_l2(n)  # the weights do not change during evaluation
        return {"loss": batches.loss(self.loss), **batches.figures()}


def forward_in_batches(network: Network, X: Array, batch_size: int | None) -> Array:
    """Forward every row of X in batches (inference mode) into one device array."""
    n = int(X.shape[0])
    step = n if batch_size is None else min(batch_size, n)
    out = network.backend.empty((n, network.output_dim))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        network.forward(X[rows, ...], out=out[rows, ...])
    return out


def _null_context(optimizer: Optimizer) -> TrainingContext:
    return TrainingContext(optimizer, get_weights=list, set_weights=lambda w: None)
