"""The recorded training step on the CPU (backends/tape.py): NumpyBackend.capture records the
backend calls of a chunk of steps and replays them, bit for bit what the eager steps compute,
and falls back to eager steps, saying why, where a recording could not be trusted. Also the
update levers of issue 23: the update's split over threads, its schedule inside a recorded
step and BLAS limited to one thread during it, each bit for bit the plain update."""

from __future__ import annotations

import numpy as np
import pytest

from backends import tape
from backends.numpy_backend import NumpyBackend
from backends.tape import TapeReplay
from backprop import SGD, Adagrad, Adam, AdamW, Dense, Dropout, RMSprop, Sequential, regularizers
from backprop import training as training_module
from backprop.callbacks import Callback, GradientNorms
from backprop.layers import Dense as LibraryDense
from backprop.optimizers import ExponentialDecay

OPTIMIZERS = {
    "sgd": lambda: SGD(0.1),
    "momentum": lambda: SGD(0.1, momentum=0.9),
    "nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: Adagrad(0.05),
    "rmsprop": lambda: RMSprop(0.01),
    "adam": lambda: Adam(0.01),
    "adamw": lambda: AdamW(0.01, weight_decay=0.01),
    "schedule": lambda: SGD(ExponentialDecay(0.2, decay_steps=3, decay_rate=0.5), momentum=0.5),
}


def _data(n=300, features=784, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, features), dtype=np.float32), rng.integers(0, 10, n)


def _fit(be, layers, optimizer, epochs=6, loss="sparse_categorical_crossentropy", n=300):
    """A model of `layers` trained on `be` for `epochs` epochs, batch 32, shuffled (300
    samples: 9 steps of 32 and a last one of 12, one chunk per epoch)."""
    x, y = _data(n)
    model = Sequential(layers, input_dim=784, backend=be, seed=1)
    model.compile(loss=loss, optimizer=optimizer, metrics=["accuracy"])
    history = model.fit(be.asarray(x), y, epochs=epochs, batch_size=32, verbose=0)
    return model, history


def _replays(model):
    function = model.trainer.train_function
    return [] if function is None else list(function.replays.values())


def _net(dropout=False):
    middle = [Dropout(0.3, seed=5)] if dropout else []
    return [Dense(30, "sigmoid"), *middle, Dense(10, "softmax")]


def _assert_same(model_a, model_b):
    for got, want in zip(model_a.get_weights(), model_b.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dropout", [False, True], ids=["784-30-10", "with-dropout"])
def test_recorded_step_equals_eager_bit_for_bit(dropout):
    recorded, history = _fit(NumpyBackend(record=True), _net(dropout), SGD(0.1, momentum=0.9))
    eager, eager_history = _fit(NumpyBackend(record=False), _net(dropout), SGD(0.1, momentum=0.9))
    _assert_same(recorded, eager)
    assert history.history["loss"] == eager_history.history["loss"]
    assert history.history["accuracy"] == eager_history.history["accuracy"]
    (replay,) = _replays(recorded)  # one chunk shape: all 10 steps of an epoch
    assert isinstance(replay, TapeReplay) and replay.mode == "tape" and replay.reason is None
    # epoch 1 records (and makes the workspaces), 2 records again, 3 compares the two and
    # adopts, replaying from the state before it; epochs 4-6 are replays only
    assert replay.calls == 3 and replay.launches == 6
    assert replay.entries >= 10 * 9  # forward, backward and update of each step, listed
    # the GEMMs replay as NumPy's own matmul, the backend's Python done once when recorded
    gemms = [c for c in replay.program if getattr(c, "func", None) is np.matmul]
    assert len(gemms) == 10 * 5  # per step z = a W and dW of both layers, da_prev of the 2nd
    assert _replays(eager) == [] and eager.trainer.train_function.batches.windows is None


def test_recorded_step_over_several_chunk_shapes_and_a_later_fit(monkeypatch):
    monkeypatch.setattr(training_module, "CHUNK_STEPS", 4)  # chunks of 4, 4 and 2 steps
    models = []
    for record in (True, False):
        be = NumpyBackend(record=record)
        x, y = _data()
        model = Sequential(_net(dropout=True), input_dim=784, backend=be, seed=1)
        model.compile(loss="categorical_crossentropy", optimizer=Adam(0.01))
        X, Y = be.asarray(x), np.eye(10, dtype=np.float32)[y]
        model.fit(X, Y, epochs=3, batch_size=32, verbose=0)
        model.fit(X, Y, epochs=2, batch_size=32, verbose=0)  # the same data: the same replays
        replays = _replays(model)
        model.fit(X, Y, epochs=4, batch_size=32, verbose=0, shuffle=False)  # in order
        models.append((model, replays))
    _assert_same(models[0][0], models[1][0])
    replays = models[0][1]
    assert len(replays) == 2 and all(r.mode == "tape" for r in replays)
    assert [r.launches for r in replays] == [10, 5]  # 2 chunks of 4 steps, 1 of 2, 5 epochs
    # the X window holds each chunk's row indices: each step gathers its own rows, which
    # are then still in the CPU's cache for it, as in an eager step
    windows = models[0][0].trainer.train_function.batches.windows
    assert windows[0].shape == (128,) and windows[0].dtype == np.int64
    assert all(r.mode == "tape" for r in _replays(models[0][0]))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_replays_bit_for_bit(name):
    layers = [Dense(12, "tanh"), Dense(9, "relu"), Dense(10, "softmax")]
    recorded, _ = _fit(NumpyBackend(record=True), layers, OPTIMIZERS[name](), epochs=5, n=100)
    layers = [Dense(12, "tanh"), Dense(9, "relu"), Dense(10, "softmax")]
    eager, _ = _fit(NumpyBackend(record=False), layers, OPTIMIZERS[name](), epochs=5, n=100)
    _assert_same(recorded, eager)
    assert recorded.optimizer.iterations == eager.optimizer.iterations == 5 * 4
    assert [r.mode for r in _replays(recorded)] == ["tape"]


@pytest.mark.parametrize(
    "output, loss",
    [
        ("sigmoid", "categorical_crossentropy"),  # dC/da = -y / (a batch): operators
        ("softmax", "binary_crossentropy"),  # (a - y) / (a (1 - a) n): operators
    ],
)
def test_steps_with_array_work_outside_the_backend_fall_back_to_eager(output, loss):
    """A loss gradient without a closed form for its output layer, written with operators:
    the recording refuses it and says why, and the steps run eagerly, as trained before."""
    models = []
    for record in (True, False):
        be = NumpyBackend(record=record)
        x, y = _data(100)
        model = Sequential([Dense(16, "tanh"), Dense(10, output)], 784, backend=be, seed=1)
        model.compile(loss=loss, optimizer=SGD(0.05, momentum=0.9))
        Y = np.eye(10, dtype=np.float32)[y]
        model.fit(be.asarray(x), Y, epochs=4, batch_size=32, verbose=0)
        models.append(model)
    _assert_same(*models)  # eager after the refusal: the same training
    (replay,) = _replays(models[0])
    assert replay.mode == "eager" and "operator expression" in replay.reason
    assert replay.launches == 4


@pytest.mark.parametrize(
    "output, loss, weighted",
    [
        ("sigmoid", "mse", False),  # the tutorials' network: sigmoid layers, quadratic cost
        ("linear", "mse", False),  # regression
        ("sigmoid", "quadratic", False),
        ("sigmoid", "mse", True),  # with sample weights
    ],
)
def test_the_tutorials_losses_are_recorded_and_equal_eager(output, loss, weighted):
    """mse and quadratic write dC/da = (a - y) * scale into the output layer's workspace with
    the backend's scaled_difference: the step records, and trains as the eager one does."""
    models, histories = [], []
    for record in (True, False):
        be = NumpyBackend(record=record)
        x, y = _data(100)
        model = Sequential([Dense(16, "sigmoid"), Dense(10, output)], 784, backend=be, seed=1)
        model.compile(loss=loss, optimizer=SGD(0.5, momentum=0.9))
        weights = np.linspace(0.5, 2.0, len(x)) if weighted else None
        Y = np.eye(10, dtype=np.float32)[y]
        history = model.fit(
            be.asarray(x), Y, epochs=5, batch_size=32, verbose=0, sample_weight=weights
        )
        models.append(model)
        histories.append(history.history["loss"])
    _assert_same(*models)
    assert histories[0] == histories[1] and histories[0][-1] < histories[0][0]
    (replay,) = _replays(models[0])
    assert replay.mode == "tape" and replay.reason is None and replay.launches == 5


@pytest.mark.parametrize(
    "regularized, clip",
    [
        ({"l2": 0.01}, None),
        ({"kernel_regularizer": regularizers.l2(1e-3), "bias_regularizer": "l2"}, None),
        ({"kernel_regularizer": regularizers.l1_l2(1e-3, 1e-3), "bias_regularizer": "l1"}, None),
        ({}, 0.05),  # a norm that clips every step
    ],
    ids=["l2-shorthand", "kernel-and-bias-l2", "l1-and-l1_l2", "global-clipnorm"],
)
def test_regularized_and_clipped_steps_are_recorded_and_equal_eager(regularized, clip):
    """L1's and L2's penalties and gradients and the global norm's clipping go through the
    backend's abs, sign, square, sum, sqrt, multiply, divide and add: the step records, and
    its weights and loss (the penalty included) are the eager step's bit for bit."""
    models, histories = [], []
    for record in (True, False):
        be = NumpyBackend(record=record)
        layers = [Dense(16, "tanh", **regularized), Dense(10, "softmax")]
        optimizer = SGD(0.05, momentum=0.9, global_clipnorm=clip)
        model, history = _fit(be, layers, optimizer, epochs=5, n=100)
        models.append(model)
        histories.append(history.history["loss"])
    _assert_same(*models)
    assert histories[0] == histories[1]
    (replay,) = _replays(models[0])
    assert replay.mode == "tape" and replay.reason is None and replay.launches == 5
    if clip is not None:  # the norm did clip: unclipped training ends elsewhere
        plain = [Dense(16, "tanh", **regularized), Dense(10, "softmax")]
        unclipped, _ = _fit(NumpyBackend(), plain, SGD(0.05, momentum=0.9), epochs=5, n=100)
        moved = [
            np.abs(a - b).max()
            for a, b in zip(*(m.get_weights() for m in (models[0], unclipped)), strict=True)
        ]
        assert max(moved) > 1e-3


class _Strengthen(Callback):
    """From epoch 2 on: a stronger L2 penalty and a tighter global norm, set mid-fit."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 2:
            self.model.layers[0].kernel_regularizer.l2 = 0.5
            self.model.optimizer.global_clipnorm = 0.01


def test_settings_a_recording_holds_as_constants_are_read_again_when_changed():
    """A regularizer's strength and global_clipnorm reach the recorded calls as constants:
    changed by a callback mid-fit, or between fits (momentum too), the recordings are made
    anew, and training is the eager one's bit for bit."""
    models, histories = [], []
    for record in (True, False):
        be = NumpyBackend(record=record)
        layers = [Dense(16, "tanh", kernel_regularizer=regularizers.l2(1e-4)), Dense(10, "softmax")]
        x, y = _data(100)
        model = Sequential(layers, input_dim=784, backend=be, seed=1)
        model.compile(
            loss="sparse_categorical_crossentropy",
            optimizer=SGD(0.05, momentum=0.9, global_clipnorm=10.0),
        )
        X = be.asarray(x)
        first = model.fit(X, y, epochs=5, batch_size=32, verbose=0, callbacks=[_Strengthen()])
        model.optimizer.momentum = 0.1
        second = model.fit(X, y, epochs=4, batch_size=32, verbose=0)
        models.append(model)
        histories.append(first.history["loss"] + second.history["loss"])
    _assert_same(*models)
    assert histories[0] == histories[1]
    assert histories[0][2] > 2 * histories[0][1]  # the penalty's jump is in the reported loss
    (replay,) = _replays(models[0])
    # made anew for the second fit's momentum (the workspaces exist: two recordings agree),
    # then replayed in its last two epochs
    assert replay.mode == "tape" and replay.calls == 2 and replay.launches == 4


class MyDense(LibraryDense):
    """A user's own layer: its step may do array work the recording cannot see."""


def test_a_users_own_layer_is_not_recorded():
    model, _ = _fit(NumpyBackend(record=True), [MyDense(16, "tanh"), Dense(10, "softmax")], "sgd")
    function = model.trainer.train_function
    assert function.capture is False and function.batches.windows is None
    assert _replays(model) == []


def _fit_watched(be, callback):
    x, y = _data()
    model = Sequential(_net(), input_dim=784, backend=be, seed=1)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1, momentum=0.9))
    history = model.fit(be.asarray(x), y, epochs=6, batch_size=32, verbose=0, callbacks=[callback])
    return model, history


def test_gradient_norms_are_recorded_and_equal_eager():
    recorded, history = _fit_watched(NumpyBackend(record=True), GradientNorms())
    eager, eager_history = _fit_watched(NumpyBackend(record=False), GradientNorms())
    _assert_same(recorded, eager)
    assert history.history["grad_norm/dense_1"] == eager_history.history["grad_norm/dense_1"]
    assert history.history["delta/dense"] == eager_history.history["delta/dense"]
    (replay,) = _replays(recorded)
    assert replay.mode == "tape" and replay.launches == 6


class MyStepWork(Callback):
    """A user's own per-step function: array work a recording of backend calls cannot see."""

    def step_function(self, network):
        return lambda: None


def test_a_users_own_step_function_is_not_recorded():
    model, _ = _fit_watched(NumpyBackend(record=True), MyStepWork())
    assert model.trainer.train_function.capture is False
    assert _replays(model) == []


# --------------------------------------------------------------------------- capture itself
def test_capture_replays_the_recorded_calls_without_running_fn():
    be = NumpyBackend(record=True)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((3, 2), np.float32)
    total = np.zeros((2,), np.float32)
    runs = []

    def fn():
        runs.append(1)
        z = be.matmul(a, b)  # made by a recorded call: replayed into the same array
        be.add(total, be.sum(z, axis=0), out=total)

    replay = be.capture(fn)
    for _ in range(5):
        replay()
    assert replay.mode == "tape" and len(runs) == 2  # two recordings, then only replays
    # a @ b = [[3, 3], [12, 12]], whose column sums (15, 15) five calls add five times
    np.testing.assert_array_equal(total, [75.0, 75.0])


def test_capture_refuses_host_reads_new_arrays_and_host_values():
    be = NumpyBackend(record=True)
    x = np.ones(4, np.float32)
    step = [0]

    def reads():
        float(be.to_numpy(be.sum(x)))

    def new_array():
        be.multiply(x * 1.0, 1.0, out=x)  # x * 1.0: a new array each call, not recorded

    def host_value():
        step[0] += 1
        be.multiply(x, float(step[0]), out=x)

    def writes_outside():
        be.add(x, 1.0, out=x)
        np.multiply(x, 0.5, out=x)  # NumPy itself, not the backend: not recorded

    reasons = {}
    for fn in (reads, new_array, host_value, writes_outside):
        x[...] = 1.0
        replay = be.capture(fn)
        for _ in range(4):
            replay()
        assert replay.mode == "eager"
        reasons[fn.__name__] = replay.reason
        if fn is writes_outside:  # four eager calls: x = (x + 1) / 2 from 1 stays 1
            np.testing.assert_array_equal(x, 1.0)
    assert "reads a device value on the host (to_numpy)" in reasons["reads"]
    assert "a new array on every call" in reasons["new_array"]
    assert "changes from call to call (2.0, then 3.0)" in reasons["host_value"]
    assert "did not reproduce its eager call" in reasons["writes_outside"]


def test_a_call_that_raises_while_recording_leaves_the_backend_as_it_was():
    be = NumpyBackend(record=True)
    x = np.zeros(3, np.float32)
    fail = [True]

    def fn():
        be.add(x, 1.0, out=x)
        if fail[0]:
            raise KeyboardInterrupt

    replay = be.capture(fn)
    with pytest.raises(KeyboardInterrupt):
        replay()
    assert "add" not in vars(be)  # the recording's stand-ins are gone
    fail[0] = False
    for _ in range(4):
        replay()
    assert replay.mode == "tape"
    np.testing.assert_array_equal(x, 5.0)  # one add per call, the interrupted one included


def test_record_switch_and_its_errors(monkeypatch):
    replay = NumpyBackend(record=False).capture(lambda: None)
    assert not replay.records and "recording is off" in replay.reason
    assert NumpyBackend(record=False).capture_records is None
    assert NumpyBackend().capture_records == "calls"
    monkeypatch.setenv("BACKPROP_CPU_CAPTURE", "0")
    assert NumpyBackend().capture_records is None
    monkeypatch.setenv("BACKPROP_CPU_CAPTURE", "yes")
    with pytest.raises(ValueError, match=r"\$BACKPROP_CPU_CAPTURE must be 0 or 1, got 'yes'"):
        NumpyBackend()
    with pytest.raises(ValueError, match="record must be True or False, got 1"):
        NumpyBackend(record=1)
    monkeypatch.setenv("BACKPROP_UPDATE_SCHEDULE", "later")
    with pytest.raises(ValueError, match=r"\$BACKPROP_UPDATE_SCHEDULE must be one of 'end'"):
        NumpyBackend(record=True)
    with pytest.raises(ValueError, match="update_schedule must be one of 'end', 'early'"):
        NumpyBackend(update_schedule="soon")
    with pytest.raises(ValueError, match="update_split_min must be an integer >= 0, got -1"):
        NumpyBackend(update_split_min=-1)


# --------------------------------------------------------------------------- the update levers
@pytest.mark.parametrize("how", ["early", "overlap"])
def test_update_schedules_equal_the_update_at_the_end_bit_for_bit(how, monkeypatch):
    monkeypatch.setattr(tape, "MIN_PART", 64)  # parts per layer even in this small network
    runs = {}
    for schedule in ("end", how):
        layers = [Dense(30, "sigmoid"), Dense(20, "relu"), Dense(10, "softmax")]
        be = NumpyBackend(update_schedule=schedule, threads=2)
        runs[schedule], _ = _fit(be, layers, SGD(0.1, momentum=0.9), epochs=5)
    _assert_same(runs["end"], runs[how])
    (end,), (moved,) = _replays(runs["end"]), _replays(runs[how])
    assert end.mode == moved.mode == "tape" and end.entries == moved.entries == 10 * 16
    assert len(end.program) == end.entries
    # each step's one update became one part per layer (W and b together, with the padding
    # after them: 3 parts), and with "overlap" one wait for those started on the second thread
    assert len(moved.program) == end.entries + 10 * (2 if how == "early" else 3)


def test_update_parts_are_anchored_after_the_last_call_touching_them(monkeypatch):
    last = np.array([7, 7, 7, -1, 4, 4, -1, 9, 9])  # -1: padding nothing touched
    monkeypatch.setattr(tape, "MIN_PART", 1)
    assert tape._groups(last, floor=2, u=12) == [(0, 4, 7), (4, 7, 4), (7, 9, 9)]
    assert tape._groups(last, floor=5, u=12) == [(0, 4, 7), (4, 7, 5), (7, 9, 9)]
    monkeypatch.setattr(tape, "MIN_PART", 3)  # a short run joins the part before it, which
    assert tape._groups(last, floor=2, u=12) == [(0, 4, 7), (4, 9, 9)]  # waits for both
    monkeypatch.setattr(tape, "MIN_PART", 5)
    assert tape._groups(last, floor=2, u=12) == [(0, 9, 9)]
    assert tape._groups(np.full(4, -1), floor=2, u=12) == [(0, 4, 12)]


def test_a_split_update_equals_one_threads_bit_for_bit(monkeypatch):
    n = 100_003  # odd: the parts' edges fall inside UPDATE_BLOCKs and off 16-element groups
    rng = np.random.default_rng(3)
    start = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    monkeypatch.setenv("BACKPROP_UPDATE_PARALLEL_MIN", "50000")
    split = NumpyBackend(threads=2)
    assert (
        split._min_update_split == 50_000
        and NumpyBackend(update_split_min=7)._min_update_split == 7
    )
    finals = []
    for be in (NumpyBackend(threads=1), split):
        p, v = start.copy(), np.zeros(n, np.float32)
        for g in grads:
            be.momentum_update(p, g, v, 0.1, 0.9)
        finals.append((p, v))
    assert split._pool is not None  # the second thread did take a part
    for got, want in zip(finals[1], finals[0], strict=True):
        np.testing.assert_array_equal(got, want)


class _Blas:
    """A stand-in for threadpoolctl's controller of a BLAS library."""

    def __init__(self):
        self.num_threads, self.calls = 2, []

    def set_num_threads(self, n):
        self.calls.append(n)
        self.num_threads = n


def test_blas_yield_limits_blas_to_one_thread_during_each_update_only():
    pytest.importorskip("threadpoolctl")
    be = NumpyBackend(blas_yield=True)
    blas = be._blas = [_Blas()]
    p, g, v = np.ones(10, np.float32), np.ones(10, np.float32), np.zeros(10, np.float32)
    be.momentum_update(p, g, v, 0.5, 0.9)
    assert blas[0].calls == [1, 2] and blas[0].num_threads == 2
    np.testing.assert_array_equal(p, 0.5)  # v = 0.9 * 0 - 0.5 * 1, p = 1 + v
    blas[0].calls.clear()
    be.matmul(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))
    assert blas[0].calls == []
    yielded, _ = _fit(NumpyBackend(blas_yield=True), _net(), SGD(0.1, momentum=0.9), epochs=4)
    plain, _ = _fit(NumpyBackend(), _net(), SGD(0.1, momentum=0.9), epochs=4)
    _assert_same(yielded, plain)
