"""The epoch's steps (training.EpochFunction and how Trainer makes and caches it): how they
run (recorded chunk by chunk, or step by step), what callbacks see as the epoch goes (the
samples done, the running loss, the step index), when a later fit replays the recordings of
an earlier one (and with which targets, weights and settings), which models a recording of
backend calls may hold, Trainer.fit's defaults, and the data-parallel checks around the
steps (ranks as threads, as in test_threaded_ranks.py).

Small float64 networks on the NumPy backend, recording (NumpyBackend(record=True)) or not,
so the recorded steps are compared with eager ones bit for bit."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from test_threaded_ranks import on_ranks

from backends import emulated_cupy
from backends.numpy_backend import NumpyBackend
from backprop import SGD, Dense, Sequential, Tanh, Trainer, regularizers
from backprop import training as training_module
from backprop.callbacks import Callback, CallbackList, GradientNorms, TrainingContext
from backprop.distributed import DistributedError
from backprop.losses import get_loss

N, FEATURES, CLASSES, BATCH = 50, 6, 3, 16  # 4 steps an epoch: 16, 16, 16 and 2 samples


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, FEATURES)), rng.integers(0, CLASSES, N)


def _model(be, layers=None, optimizer=None):
    layers = layers or [Dense(8, "tanh"), Dense(CLASSES, "softmax")]
    model = Sequential(layers, input_dim=FEATURES, backend=be, dtype="float64", seed=1)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer or SGD(0.1, 0.9))
    return model


def _backend(record=True):
    return NumpyBackend("float64", record=record)


def _replays(model):
    function = model.trainer.train_function
    return {} if function is None else dict(function.replays)


def _assert_same_weights(a, b):
    for got, want in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def _running_losses(x, y):
    """The running mean loss after each step of a first epoch in order, from a twin model
    trained batch by batch: train_on_batch returns each batch's cost before its update."""
    twin = _model(_backend(record=False))
    total, running = 0.0, {}
    for start in range(0, N, BATCH):
        rows = slice(start, min(start + BATCH, N))
        total += twin.train_on_batch(x[rows], y[rows]) * (rows.stop - rows.start)
        running[rows.stop] = total / rows.stop
    return running


class Progress(Callback):
    """What on_epoch_progress reports: (samples seen, running loss read at once)."""

    def __init__(self):
        self.seen = []

    def on_epoch_progress(self, seen, loss):
        self.seen.append((seen, loss()))


# ------------------------------------------------------------------ how the steps run
@pytest.mark.parametrize(
    "record, capture, recorded, reports",
    [
        (True, True, True, [50]),  # one chunk of 4 steps, replayed: one report after it
        (True, False, False, [16, 32, 48, 50]),  # capture=False: eager steps, each reported
        (False, True, False, [16, 32, 48, 50]),  # a backend that records nothing: the same
    ],
    ids=["recorded", "eager-by-request", "eager-backend"],
)
def test_progress_reports_the_samples_done_and_their_running_loss(
    record, capture, recorded, reports
):
    be = _backend(record)
    x, y = _data()
    model, progress = _model(be), Progress()
    once = {"epochs": 1, "batch_size": BATCH, "shuffle": False, "verbose": 0}
    model.fit(be.asarray(x), y, **once, capture=capture, callbacks=[progress])
    running = _running_losses(x, y)
    assert [seen for seen, _ in progress.seen] == reports
    for seen, loss in progress.seen:  # the mean cost of the samples done, not of all
        np.testing.assert_allclose(loss, running[seen], rtol=1e-12)
    function = model.trainer.train_function
    assert function.capture is capture
    assert (function.batches.windows is not None) is recorded
    assert list(_replays(model)) == ([(4, 50)] if recorded else [])


class BatchLog(Callback):
    batch_logs = True  # the running loss in each on_train_batch_end's logs

    def __init__(self):
        self.begun, self.ended = [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.begun.append(batch)

    def on_train_batch_end(self, batch, logs=None):
        self.ended.append((batch, logs["loss"]))


def test_batch_hooks_get_each_step_and_the_running_loss_and_nothing_is_recorded():
    be = _backend()
    x, y = _data()
    model, hooks, progress = _model(be), BatchLog(), Progress()
    once = {"epochs": 1, "batch_size": BATCH, "shuffle": False, "verbose": 0}
    model.fit(be.asarray(x), y, **once, callbacks=[hooks, progress])
    running = _running_losses(x, y)
    assert hooks.begun == [0, 1, 2, 3]
    assert [k for k, _ in hooks.ended] == [0, 1, 2, 3]
    for (_, loss), seen in zip(hooks.ended, [16, 32, 48, 50], strict=True):
        np.testing.assert_allclose(loss, running[seen], rtol=1e-12)
    assert [seen for seen, _ in progress.seen] == [16, 32, 48, 50]
    assert model.trainer.train_function.capture is False and _replays(model) == {}


def test_an_epoch_run_by_hand_with_batch_hooks_runs_its_steps_one_by_one():
    """A recorded epoch kept from fit, run again by hand with batch hooks: the hooks see
    every step (the recording is not replayed past them) and the running loss."""
    be = _backend()
    x, y = _data()
    model, X = _model(be), be.asarray(x)
    model.fit(X, y, epochs=1, batch_size=BATCH, shuffle=False, verbose=0)
    trainer, hooks = model.trainer, BatchLog()
    assert list(_replays(model)) == [(4, 50)]
    context = TrainingContext(model.optimizer, get_weights=list, set_weights=lambda w: None)
    logs = trainer.run_epoch(None, CallbackList([hooks], context))
    assert hooks.begun == [0, 1, 2, 3] and [k for k, _ in hooks.ended] == [0, 1, 2, 3]
    # the running loss of the steps done, the last one that of the whole epoch
    np.testing.assert_allclose(hooks.ended[-1][1], logs["loss"], rtol=1e-12)


def test_each_chunk_shape_is_recorded_once_and_replays_as_the_eager_steps(monkeypatch):
    """Chunks of 2 steps (5 steps of 10: chunks of 2, 2 and 1): two recordings, one per
    shape (steps, rows), whatever the number of chunks; the result is the eager one's."""
    monkeypatch.setattr(training_module, "CHUNK_STEPS", 2)
    x, y = _data()
    models = []
    for record in (True, False):
        model = _model(_backend(record))
        model.fit(x, y, epochs=4, batch_size=10, verbose=0)
        models.append(model)
    _assert_same_weights(*models)
    replays = _replays(models[0])
    assert sorted(replays) == [(1, 10), (2, 20)]
    assert replays[(2, 20)].launches == 8 and replays[(1, 10)].launches == 4


# ------------------------------------------------------------------ a later fit
def _two_fits(be, fits):
    """A model fitted once per (X, y, sample weights, epochs) of `fits`; returns it, each
    fit's losses and each fit's epoch function."""
    model, histories, functions = _model(be), [], []
    for X, y, weights, epochs in fits:
        history = model.fit(X, y, epochs=epochs, batch_size=BATCH, verbose=0, sample_weight=weights)
        histories.append(history.history["loss"])
        functions.append(model.trainer.train_function)
    return model, histories, functions


def test_a_second_fit_on_the_same_data_replays_the_first_fits_recording():
    be = _backend()
    x, y = _data()
    X = be.asarray(x)
    model, histories, (first, second) = _two_fits(be, [(X, y, None, 3), (X, y, None, 2)])
    assert second is first  # the same recordings, replayed again
    (replay,) = _replays(model).values()
    assert replay.mode == "tape" and replay.launches == 5  # the first fit's 3, then 2
    eager, eager_histories, _ = _two_fits(
        _backend(record=False), [(x, y, None, 3), (x, y, None, 2)]
    )
    _assert_same_weights(model, eager)
    assert histories == eager_histories


@pytest.mark.parametrize("what", ["targets", "weights"])
def test_a_later_fit_on_the_same_x_trains_on_its_own_targets_and_weights(what):
    """The same device x with new targets (or new sample weights): the recordings are
    replayed with the new ones, as a fit of a fresh copy of x trains from the same start."""
    be = _backend()
    x, y = _data()
    new_y = (y + 1) % CLASSES if what == "targets" else y
    rng = np.random.default_rng(5)
    w1, w2 = (rng.random(N), rng.random(N)) if what == "weights" else (None, None)
    X, copy = be.asarray(x), be.asarray(x.copy())
    again, histories, (first, second) = _two_fits(be, [(X, y, w1, 3), (X, new_y, w2, 2)])
    assert second is first
    fresh, fresh_histories, (first, second) = _two_fits(be, [(X, y, w1, 3), (copy, new_y, w2, 2)])
    assert second is not first
    _assert_same_weights(again, fresh)
    assert histories == fresh_histories


def test_settings_changed_between_fits_are_recorded_anew():
    """Momentum and an L2 strength are constants of a recording: changed between fits on the
    same x, the next fit records anew (once: twice to adopt it, then replays)."""
    histories, models = [], []
    for record in (True, False):
        be = _backend(record)
        penalized = Dense(8, "tanh", kernel_regularizer=regularizers.l2(1e-3))
        layers = [penalized, Dense(CLASSES, "softmax")]
        model = _model(be, layers, SGD(0.1, momentum=0.9))
        x, y = _data()
        X = be.asarray(x)
        first = model.fit(X, y, epochs=3, batch_size=BATCH, verbose=0).history["loss"]
        model.optimizer.momentum = 0.2
        model.layers[0].kernel_regularizer.l2 = 0.3
        second = model.fit(X, y, epochs=4, batch_size=BATCH, verbose=0).history["loss"]
        histories.append(first + second)
        models.append(model)
    _assert_same_weights(*models)
    assert histories[0] == histories[1]
    (replay,) = _replays(models[0]).values()
    assert replay.calls == 2 and replay.launches == 4  # recorded twice, replayed twice


def test_a_layer_frozen_between_fits_stays_as_it_is():
    be = _backend()
    x, y = _data()
    X = be.asarray(x)
    model = _model(be)
    model.fit(X, y, epochs=3, batch_size=BATCH, verbose=0)
    model.layers[0].trainable = False
    frozen = [w.copy() for w in model.layers[0].get_weights()]
    trained = [w.copy() for w in model.layers[1].get_weights()]
    model.fit(X, y, epochs=3, batch_size=BATCH, verbose=0)
    for got, want in zip(model.layers[0].get_weights(), frozen, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(model.layers[1].get_weights()[0], trained[0])


# ------------------------------------------------------------------ what may be recorded
class MyDense(Dense):
    """A user's own layer: its step may do array work a recording of backend calls misses."""


class MyTanh(Tanh):
    """A user's own activation, likewise."""


class MyStepWork(Callback):
    """A user's own per-step device work, likewise."""

    def step_function(self, network):
        return lambda: None


class MyBareStepWork(Callback):
    """A user's own per-step work as a callable without a __module__ (a method-wrapper)."""

    def step_function(self, network):
        self.work = lambda: None
        return self.work.__call__


class MyBuiltinStepWork(Callback):
    """A user's own per-step work as a bound method of a builtin type, whose __module__ is
    None (as for `[].clear`)."""

    def step_function(self, network):
        self.seen = []
        return self.seen.clear


def _library():
    return [Dense(8, "tanh"), Dense(CLASSES, "softmax")]


@pytest.mark.parametrize(
    "layers, callback, recorded",
    [
        (_library, None, True),
        (_library, GradientNorms, True),  # the library's own step work is recorded
        (lambda: [MyDense(8, "tanh"), Dense(CLASSES, "softmax")], None, False),
        (lambda: [Dense(8, MyTanh()), Dense(CLASSES, "softmax")], None, False),
        (_library, MyStepWork, False),
        (_library, MyBareStepWork, False),
        (_library, MyBuiltinStepWork, False),
    ],
    ids=[
        "library",
        "gradient-norms",
        "own-layer",
        "own-activation",
        "own-step-work",
        "step-work-without-module",
        "step-work-of-module-none",
    ],
)
def test_only_the_librarys_own_step_work_is_recorded_on_the_cpu(layers, callback, recorded):
    """Recorded or not, the steps train alike (bit for bit the eager twin's)."""
    x, y = _data()
    models = []
    for record in (True, False):
        be = _backend(record)
        model = _model(be, layers())
        callbacks = [] if callback is None else [callback()]
        model.fit(be.asarray(x), y, epochs=3, batch_size=BATCH, verbose=0, callbacks=callbacks)
        models.append(model)
    _assert_same_weights(*models)
    function = models[0].trainer.train_function
    assert function.capture is recorded
    assert [r.mode for r in _replays(models[0]).values()] == (["tape"] if recorded else [])


# ------------------------------------------------------------------ Trainer.fit itself
def _trainer_data(be):
    x, y = _data()
    return be.asarray(x), be.asarray(np.eye(CLASSES)[y])


def _callbacks(optimizer, callbacks=None):
    return CallbackList(callbacks, TrainingContext(optimizer, list, lambda w: None))


def test_trainer_fit_counts_epochs_from_0_records_its_steps_and_keeps_nothing():
    """Trainer.fit's defaults: epochs numbered from 0, the steps recorded (one report per
    epoch, after its one chunk), and the recording let go with the data when fit returns."""
    be = _backend()
    model = _model(be)
    trainer = Trainer(model.network, get_loss("categorical_crossentropy"), SGD(0.1))
    X, Y = _trainer_data(be)
    progress = Progress()
    history = trainer.fit(
        X, Y, epochs=2, batch_size=BATCH, callbacks=_callbacks(trainer.optimizer, [progress])
    )
    assert history.epoch == [0, 1]
    assert [seen for seen, _ in progress.seen] == [50, 50]
    np.testing.assert_allclose(progress.seen[-1][1], history.history["loss"][-1], rtol=1e-12)
    assert trainer.train_function is None


# ------------------------------------------------------------------ data-parallel
def _rank_model(layers=None, be="numpy"):
    layers = layers or [Dense(8, "tanh"), Dense(CLASSES, "softmax")]
    model = Sequential(layers, input_dim=FEATURES, backend=be, dtype="float64", seed=1)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1, momentum=0.9))
    return model


class Shift(Callback):
    """Moves this rank's weights at the end of each epoch: replicas that drift apart."""

    def __init__(self, model, by):
        self.m, self.by = model, by

    def on_epoch_end(self, epoch, logs=None):
        self.m.layers[0].W[...] += self.by


def test_replicas_that_drift_apart_in_training_stop_every_rank_when_it_ends():
    def work(comm):
        m = _rank_model()
        x, y = _data()
        shift = Shift(m, float(comm.rank))
        m.fit(x, y, epochs=2, batch_size=10, verbose=0, distributed=comm, callbacks=[shift])

    _, errors, group = on_ranks(work)
    assert group.calls[-1] == "allgather"  # trained to the end, then compared the replicas
    for error in errors:
        assert isinstance(error, DistributedError)
        assert re.fullmatch(
            r"the replicas' weights after training differ: \['[0-9a-f]{16}', '[0-9a-f]{16}'\]",
            str(error),
        ), error


class Watched(Dense):
    """Dense that notes the `training` flag of each forward pass."""

    def forward(self, x, out=None, training=False):
        self.modes.append(training)
        return super().forward(x, out=out, training=training)


class RunningLoss(Callback):
    """What on_epoch_progress was given: the samples done, and whether a running loss."""

    def __init__(self):
        self.given = []

    def on_epoch_progress(self, seen, loss):
        self.given.append((seen, loss is not None))


def test_a_trainer_given_a_communicator_trains_its_shards_in_training_mode():
    """Each rank's share of a step runs forward as a training step (Dropout drops), and a
    Trainer made with a communicator trains data-parallel through it. Each rank reports the
    samples of the whole batches done (as one process does, whatever its shard), but no
    running loss: it holds only its own rows of the outputs until the epoch ends."""

    def work(comm):
        watched, progress = Watched(8, "tanh"), RunningLoss()
        watched.modes = []
        m = _rank_model([watched, Dense(CLASSES, "softmax")])
        trainer = Trainer(
            m.network, get_loss("categorical_crossentropy"), SGD(0.1), communicator=comm
        )
        X, Y = _trainer_data(m.backend)
        callbacks = _callbacks(trainer.optimizer, [progress])
        trainer.fit(X, Y, epochs=2, batch_size=10, callbacks=callbacks)
        return watched.modes, progress.given

    results, errors, group = on_ranks(work)
    assert errors == [None, None]
    # 5 steps of 10 samples, 2 epochs, on each rank
    progress = [(seen, False) for seen in (10, 20, 30, 40, 50)] * 2
    assert results == [([True] * 10, progress)] * 2
    assert group.calls.count("allreduce_sum") == 2 * (5 + 1)  # each step's, each epoch's A


def test_as_many_samples_as_ranks_is_enough():
    x, y = _data()

    def work(comm):
        m = _rank_model()
        history = m.fit(x[:2], y[:2], epochs=2, batch_size=2, verbose=0, distributed=comm)
        return m.get_weights(), history.history["loss"]

    results, errors, _ = on_ranks(work)
    assert errors == [None, None]
    reference = _rank_model()
    expected = reference.fit(x[:2], y[:2], epochs=2, batch_size=2, verbose=0).history["loss"]
    for weights, losses in results:  # one sample each: the one process's steps
        for got, want in zip(weights, reference.get_weights(), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(losses, expected, rtol=1e-12)


def test_data_parallel_training_on_a_graph_recording_backend_says_it_runs_eagerly():
    """Where the backend records device work (CUDA graphs), a data-parallel step reads every
    rank's failure flag on the host: each rank warns once that its steps run eagerly."""
    backends = [emulated_cupy.emulated_cupy_backend("float64", device=1) for _ in range(2)]
    x, y = _data()

    def work(comm):
        m = _rank_model(be=backends[comm.rank])
        m.fit(x, y, epochs=2, batch_size=10, verbose=0, distributed=comm)
        return m.get_weights()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, errors, _ = on_ranks(work)
    assert errors == [None, None]
    assert [(w.category, str(w.message)) for w in caught] == [
        (
            RuntimeWarning,
            "the training step runs eagerly, without a CUDA graph: data-parallel steps read "
            "every rank's failure flag on the host after each all-reduce",
        )
    ] * 2
    for got, want in zip(*results, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_fit_stopped_by_the_eager_warning_leaves_the_trainer_ready_for_the_next():
    """With warnings as errors, the warning that data-parallel steps run eagerly stops the
    fit before its first step; the next fit (capture=False, which does not warn) trains."""
    backends = [emulated_cupy.emulated_cupy_backend("float64", device=1) for _ in range(2)]
    x, y = _data()

    def work(comm):
        m = _rank_model(be=backends[comm.rank])
        before = m.get_weights()
        with pytest.raises(RuntimeWarning, match="the training step runs eagerly"):
            m.fit(x, y, epochs=1, batch_size=10, verbose=0, distributed=comm)
        for got, want in zip(m.get_weights(), before, strict=True):
            np.testing.assert_array_equal(got, want)
        return m.fit(x, y, epochs=1, batch_size=10, verbose=0, distributed=comm, capture=False)

    with warnings.catch_warnings():  # here: the ranks' threads share the filters
        warnings.simplefilter("error")
        results, errors, _ = on_ranks(work)
    assert errors == [None, None]
    assert [len(history.history["loss"]) for history in results] == [1, 1]
