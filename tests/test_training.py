"""compile / fit / evaluate / predict / summary, callbacks and failure behaviour, on every
backend of the matrix."""

from __future__ import annotations

import math
import re
import sys

import numpy as np
import pytest
from conftest import make_backend

import backprop
from backprop import (
    SGD,
    Activation,
    Adam,
    Callback,
    CSVLogger,
    Dense,
    EarlyStopping,
    GradientNorms,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    Sequential,
    TrainingDivergedError,
    load_model,
)
from backprop.callbacks import CallbackList, History, TrainingContext
from backprop.datasets import load_mnist_sample
from backprop.optimizers import ExponentialDecay
from backprop.training import exploded

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
XOR_Y = np.array([[0], [1], [1], [0]], dtype=np.float32)


@pytest.fixture(scope="module")
def mnist():
    (x_train, y_train), (x_test, y_test) = load_mnist_sample()
    return x_train[:2000], y_train[:2000], x_test, y_test


def classifier(backend, seed=0, **kw):
    model = Sequential(
        [Dense(32, "relu"), Dense(10, "softmax")], input_dim=784, backend=backend, seed=seed
    )
    kw.setdefault("metrics", ["accuracy"])
    model.compile(loss="sparse_categorical_crossentropy", optimizer=Adam(0.002), **kw)
    return model


def test_xor_full_batch_gradient_descent(backend):
    """A 2-4-1 sigmoid network learns XOR with plain gradient descent (batch_size=None)."""
    model = Sequential(
        [Dense(4, "sigmoid"), Dense(1, "sigmoid")], input_dim=2, backend=backend, seed=0
    )
    model.compile(loss="mse", optimizer=SGD(learning_rate=2.0), metrics=["accuracy"])
    history = model.fit(XOR_X, XOR_Y, epochs=2000, batch_size=None, verbose=0)
    assert history.params["steps"] == 1 and history.params["batch_size"] == 4
    assert history.history["loss"][-1] < 0.01 < history.history["loss"][0]
    assert history.history["accuracy"][-1] == 1.0
    np.testing.assert_array_equal(model.predict(XOR_X) > 0.5, XOR_Y > 0.5)


def test_mnist_sample_learned(backend, mnist):
    """A small real task: 2,000 MNIST digits, 3 epochs, at least 85% on 1,000 unseen ones."""
    x, y, x_test, y_test = mnist
    model = classifier(backend)
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0, validation_data=(x_test, y_test))
    loss, accuracy = model.evaluate(x_test, y_test)
    assert accuracy >= 0.85
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy, abs=1e-6)
    assert history.history["loss"][0] > history.history["loss"][-1]
    assert model.predict(x_test[:5]).shape == (5, 10)
    assert model.evaluate(x_test, y_test, return_dict=True) == {"loss": loss, "accuracy": accuracy}


def test_same_seed_same_history_on_every_backend(backend_name, mnist):
    x, y, x_test, y_test = mnist
    runs = []
    for name in ("numpy", backend_name):
        model = classifier(make_backend(name), seed=3)
        runs.append(
            model.fit(
                x[:500],
                y[:500],
                epochs=2,
                batch_size=50,
                verbose=0,
                validation_data=(x_test[:200], y_test[:200]),
            ).history
        )
    for key in runs[0]:
        np.testing.assert_allclose(runs[1][key], runs[0][key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_same_seed_same_run(mnist):
    x, y, _, _ = mnist
    a = classifier("numpy", seed=9).fit(x[:300], y[:300], epochs=2, verbose=0).history
    b = classifier("numpy", seed=9).fit(x[:300], y[:300], epochs=2, verbose=0).history
    c = classifier("numpy", seed=10).fit(x[:300], y[:300], epochs=2, verbose=0).history
    assert a == b and a["loss"] != c["loss"]


def test_one_device_read_per_figure_per_epoch(backend, mnist, monkeypatch):
    """No host synchronization inside an epoch: to_numpy is called a fixed number of times
    per epoch (loss, accuracy), however many batches there are."""
    x, y, _, _ = mnist
    calls = []
    for batch_size in (100, 10):  # 10 and 100 batches per epoch
        model = classifier(backend)
        model.fit(x[:20], y[:20], epochs=1, verbose=0)  # build and warm up
        reads: list[int] = []

        def counting(a, reads=reads, original=model.backend.to_numpy):
            reads.append(1)
            return original(a)

        monkeypatch.setattr(model.backend, "to_numpy", counting)
        model.fit(x[:1000], y[:1000], epochs=1, batch_size=batch_size, verbose=0)
        monkeypatch.undo()
        calls.append(len(reads))
    assert calls == [2, 2]


def test_validation_split_holds_out_the_tail(mnist):
    x, y, _, _ = mnist
    model = classifier("numpy")
    history = model.fit(x[:100], y[:100], epochs=1, validation_split=0.2, verbose=0)
    assert history.params["samples"] == 80
    expected = model.evaluate(x[80:100], y[80:100], return_dict=True)
    assert history.history["val_loss"][0] == pytest.approx(expected["loss"], rel=1e-6)


def test_batch_size_larger_than_data_is_clamped(mnist):
    x, y, _, _ = mnist
    history = classifier("numpy").fit(x[:30], y[:30], batch_size=1000, verbose=0)
    assert history.params["batch_size"] == 30 and history.params["steps"] == 1


def test_verbose_output(mnist, capsys):
    x, y, _, _ = mnist
    classifier("numpy").fit(x[:64], y[:64], epochs=2, batch_size=32, verbose=2)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith("Epoch 2/2 - ") and "accuracy: " in out[1]
    classifier("numpy").fit(x[:64], y[:64], epochs=1, verbose=0)
    assert capsys.readouterr().out == ""


def test_summary(capsys):
    model = Sequential(
        [Dense(500, "sigmoid"), Dense(500, "sigmoid"), Dense(10, "softmax")], input_dim=784
    )
    model.summary()
    out = capsys.readouterr().out
    assert "dense (sigmoid)" in out and "(None, 500)" in out and "392,500" in out
    assert "Total params: 648,010" in out and "Backend: numpy (CPU" in out


# --------------------------------------------------------------------------- callbacks
def test_early_stopping_restores_best_weights(mnist):
    x, y, x_test, y_test = mnist

    class Scripted(Callback):
        """Makes val_loss follow a script: best at epoch 1, then worse."""

        script = (0.5, 0.3, 0.4, 0.45, 0.6, 0.7)

        def __init__(self):
            self.weights_seen = []

        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = self.script[epoch]
            self.weights_seen.append(self.model.get_weights())

    scripted = Scripted()
    stopper = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    model = classifier("numpy")
    history = model.fit(
        x[:100],
        y[:100],
        epochs=6,
        verbose=0,
        validation_data=(x_test[:50], y_test[:50]),
        callbacks=[scripted, stopper],
    )
    assert len(history.epoch) == 4 and stopper.stopped_epoch == 3 and stopper.best_epoch == 1
    for got, best in zip(model.get_weights(), scripted.weights_seen[1], strict=True):
        np.testing.assert_array_equal(got, best)


def test_early_stopping_needs_the_monitored_figure(mnist):
    x, y, _, _ = mnist
    with pytest.raises(ValueError, match=r"monitors 'val_loss'.*available: accuracy, "):
        classifier("numpy").fit(x[:50], y[:50], verbose=0, callbacks=[EarlyStopping()])


def test_model_checkpoint(tmp_path, mnist):
    x, y, x_test, y_test = mnist
    model = classifier("numpy")
    model.fit(
        x[:200],
        y[:200],
        epochs=2,
        verbose=0,
        validation_data=(x_test, y_test),
        callbacks=[ModelCheckpoint(tmp_path / "m-{epoch}.npz")],
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-1.npz", "m-2.npz"]
    np.testing.assert_array_equal(
        load_model(tmp_path / "m-2.npz").predict(x_test[:10]), model.predict(x_test[:10])
    )
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy", save_best_only=True)
    model.fit(
        x[:200], y[:200], epochs=3, verbose=0, validation_data=(x_test, y_test), callbacks=[best]
    )
    val_accuracy = model.history.history["val_accuracy"]
    assert best.best == max(val_accuracy)
    # the file holds the best epoch's model, not the last one's
    got = load_model(tmp_path / "best.npz").evaluate(x_test, y_test, return_dict=True)
    assert got["accuracy"] == pytest.approx(max(val_accuracy), abs=1e-6)


@pytest.mark.parametrize(
    ("monitor", "script"),
    [("val_loss", (0.5, 0.3, 0.4, 0.2, 0.6)), ("val_accuracy", (0.5, 0.7, 0.6, 0.8, 0.4))],
)
def test_save_best_only_file_holds_the_best_epoch_so_far(tmp_path, mnist, monitor, script):
    """With a scripted monitored figure (best at epochs 1, 2, 2, 4, 4 so far), the file read
    back after each epoch holds the weights of the best epoch so far: it is written on an
    improvement and only then, in min mode for a loss and max mode for an accuracy."""
    x, y, x_test, y_test = mnist
    path = tmp_path / "best.npz"

    class Scripted(Callback):
        def __init__(self):
            self.weights_seen = []

        def on_epoch_end(self, epoch, logs=None):
            logs[monitor] = script[epoch]
            self.weights_seen.append(self.model.get_weights())

    class ReadBack(Callback):
        def __init__(self):
            self.in_file = []

        def on_epoch_end(self, epoch, logs=None):
            self.in_file.append(load_model(path).get_weights())

    scripted, read_back = Scripted(), ReadBack()
    checkpoint = ModelCheckpoint(path, monitor=monitor, save_best_only=True)
    classifier("numpy").fit(
        x[:100],
        y[:100],
        epochs=5,
        verbose=0,
        validation_data=(x_test[:50], y_test[:50]),
        callbacks=[scripted, checkpoint, read_back],
    )
    for epoch, best_so_far in enumerate((0, 1, 1, 3, 3)):
        expected = scripted.weights_seen[best_so_far]
        for got, want in zip(read_back.in_file[epoch], expected, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"after epoch {epoch + 1}")
    assert checkpoint.best == script[3]


@pytest.mark.parametrize(
    ("loss", "start", "chance", "expected"),
    [
        # the bound over a uniform guess: 4 x chance, strictly above (start well below)
        (4.0, 1.0, 1.0, False),
        (4.001, 1.0, 1.0, True),
        (3.999, 0.1, 1.0, False),
        # the bound over the start: 2 x start, strictly above (chance well below)
        (5.0, 2.5, 1.0, False),
        (5.001, 2.5, 1.0, True),
        (9.999, 5.0, 0.5, False),
        (10.001, 5.0, 0.5, True),
    ],
)
def test_explosion_thresholds_are_bracketed(loss, start, chance, expected):
    """Just above both bounds is an explosion, at or just below either is not: the rule's
    4x (over chance) and 2x (over the start) are pinned from both sides."""
    assert exploded(loss, start, chance) is expected


def test_learning_rate_scheduler(mnist):
    x, y, _, _ = mnist
    model = classifier("numpy")
    history = model.fit(
        x[:50],
        y[:50],
        epochs=3,
        verbose=0,
        callbacks=[LearningRateScheduler(lambda epoch, lr: 0.01 / (epoch + 1))],
    )
    np.testing.assert_allclose(history.history["learning_rate"], [0.01, 0.005, 0.01 / 3])


# --------------------------------------------------------------------------- failures
def test_non_finite_loss_stops_with_last_finite_weights(backend):
    """A learning rate far too large: training stops, names the epoch and batch, and keeps
    the weights from before the batch whose loss was not finite."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32) * 10
    y = rng.standard_normal((64, 2)).astype(np.float32) * 1e3

    def model():
        m = Sequential([Dense(8, "relu"), Dense(2)], input_dim=4, backend=backend, seed=0)
        m.compile(loss="mse", optimizer=SGD(learning_rate=10.0), metrics=[])
        return m

    diverging = model()
    with np.errstate(all="ignore"), pytest.raises(TrainingDivergedError) as info:
        diverging.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0)
    message = str(info.value)
    assert "Try a smaller learning rate (it is 10)" in message
    match = re.search(r"at epoch 1, batch (\d+) of 8", message)
    assert match, message
    bad = int(match.group(1))
    assert bad > 1
    weights = diverging.get_weights()
    assert all(np.all(np.isfinite(w)) for w in weights)
    # the same training stopped just before the bad batch gives exactly these weights
    reference = model()
    reference.fit(x[: 8 * (bad - 1)], y[: 8 * (bad - 1)], batch_size=8, shuffle=False, verbose=0)
    for got, expected in zip(weights, reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"epochs": 0}, ValueError, "epochs must be an integer >= 1, got 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be an integer >= 1 or None, got 0"),
        ({"validation_split": 1.0}, ValueError, r"validation_split must be a number in \[0, 1\)"),
        ({"validation_split": -0.1}, ValueError, "validation_split must be"),
        ({"verbose": 5}, ValueError, "verbose must be 0"),
        ({"callbacks": ["stop"]}, TypeError, "callbacks must be Callback objects, got str"),
        ({"validation_data": ([1],)}, ValueError, r"validation_data must be a tuple"),
    ],
)
def test_invalid_fit_arguments(kwargs, error, message, mnist):
    x, y, _, _ = mnist
    with pytest.raises(error, match=message):
        classifier("numpy").fit(x[:10], y[:10], **kwargs)


def test_x_y_length_mismatch(mnist):
    x, y, _, _ = mnist
    with pytest.raises(ValueError, match="y has 9 samples but x has 10"):
        classifier("numpy").fit(x[:10], y[:9])


def test_fit_before_compile():
    model = Sequential([Dense(2)], input_dim=2)
    with pytest.raises(RuntimeError, match=r"not compiled: call compile\(loss=..."):
        model.fit(np.ones((2, 2)), np.ones((2, 2)))


def test_arrays_of_the_models_backend_are_accepted(backend, mnist):
    x, y, _, _ = mnist
    model = classifier(backend)
    X = backend.asarray(x[:100])
    history = model.fit(X, y[:100], epochs=1, verbose=0)
    np.testing.assert_allclose(model.predict(X), model.predict(x[:100]), rtol=1e-6)
    assert len(history.epoch) == 1


def test_array_of_another_backend_is_a_type_error(mnist):
    import array_api_strict

    x, y, _, _ = mnist
    strict_x = array_api_strict.asarray(x[:10])
    with pytest.raises(TypeError, match="array of another backend than this model's 'numpy'"):
        classifier("numpy").fit(strict_x, y[:10])


# ------------------------------------------------------------------- callbacks, hook by hook
# Each callback driven through its hooks with a context of its own (no training): the figures
# it is fed are scripted, so every decision it takes is known in advance.
def _context(lr=1.0, **kw):
    return TrainingContext(SGD(learning_rate=lr), get_weights=list, set_weights=print, **kw)


def _drive(callback, values, monitor="val_loss", lr=1.0, **context):
    """on_train_begin, then one on_epoch_end per value of `monitor`; the learning rate after
    each epoch and the logs each epoch ended with."""
    ctx = _context(lr, **context)
    callback.set_context(ctx)
    callback.set_params({"metrics": ["loss", monitor]})
    callback.on_train_begin()
    rates, logs_seen = [], []
    for epoch, value in enumerate(values):
        logs = {"loss": 1.0, monitor: value}
        callback.on_epoch_end(epoch, logs)
        rates.append(ctx.optimizer.current_learning_rate())
        logs_seen.append(logs)
    callback.on_train_end()
    return rates, logs_seen


def test_reduce_lr_on_plateau_defaults_are_keras():
    cb = ReduceLROnPlateau()
    got = (cb.monitor, cb.factor, cb.patience, cb.mode, cb.min_delta, cb.cooldown, cb.min_lr)
    assert got == ("val_loss", 0.1, 10, "min", 1e-4, 0, 0.0) and cb.verbose == 0
    assert cb.logs_learning_rate is True
    assert ReduceLROnPlateau(monitor="val_accuracy").mode == "max"


def test_reduce_lr_on_plateau_patience_min_delta_and_cooldown(capsys):
    """min mode, patience 2, cooldown 2, min_delta 0.1: an epoch improves only when it beats
    the best by more than 0.1; after a reduction the next epoch counts for nothing (and the
    one after it counts again, as in Keras)."""
    cb = ReduceLROnPlateau(factor=0.5, patience=2, min_delta=0.1, cooldown=2, verbose=1)
    values = [1.0, 0.95, 0.85, 0.8, 0.8, 0.8, 0.8, 0.8, 0.1, 0.05]
    rates, logs = _drive(cb, values)
    # 1: best; 2: within min_delta (wait 1); 3: improves (best 0.85); 4, 5: wait 1, 2 -> halve;
    # 6: cooldown; 7, 8: wait 1, 2 -> halve; 9: improves (in cooldown); 10: within min_delta
    assert rates == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    # each epoch's logs hold the rate it trained with, before any reduction
    assert [log["learning_rate"] for log in logs] == [1.0, *rates[:-1]]
    assert (cb.best, cb.wait, cb.cooldown_left) == (0.1, 1, 0)
    out = capsys.readouterr().out
    assert out == (
        "\nEpoch 5: ReduceLROnPlateau reducing learning rate to 0.5.\n"
        "\nEpoch 8: ReduceLROnPlateau reducing learning rate to 0.25.\n"
    )


def test_reduce_lr_on_plateau_max_mode_and_its_floor(capsys):
    """An accuracy is better when larger; the rate never goes below min_lr, and once there
    no reduction is announced."""
    cb = ReduceLROnPlateau(monitor="val_accuracy", factor=0.5, patience=1, min_lr=0.3, verbose=1)
    rates, _ = _drive(cb, [0.5, 0.6, 0.6, 0.55, 0.7, 0.6, 0.6], monitor="val_accuracy")
    assert rates == [1.0, 1.0, 0.5, 0.3, 0.3, 0.3, 0.3]
    assert cb.best == 0.7
    assert capsys.readouterr().out == (
        "\nEpoch 3: ReduceLROnPlateau reducing learning rate to 0.5.\n"
        "\nEpoch 4: ReduceLROnPlateau reducing learning rate to 0.3.\n"
    )
    # patience 0: every epoch that does not improve reduces; the default min_delta counts
    rates, _ = _drive(ReduceLROnPlateau(factor=0.5, patience=0), [1.0, 0.99995, 0.5])
    assert rates == [1.0, 0.5, 0.5]
    rates, _ = _drive(ReduceLROnPlateau(factor=0.5, patience=0, mode="min"), [1.0, 2.0])
    assert rates == [1.0, 0.5]
    rates, _ = _drive(ReduceLROnPlateau(factor=0.5, patience=0, mode="max"), [1.0, 2.0, 1.5])
    assert rates == [1.0, 1.0, 0.5]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"factor": 1.0}, "factor must be a number in (0, 1), got 1.0"),
        ({"factor": 1.5}, "factor must be a number in (0, 1), got 1.5"),
        ({"factor": 0}, "factor must be a number in (0, 1), got 0"),
        ({"factor": True}, "factor must be a number in (0, 1), got True"),
        ({"patience": -1}, "patience must be an integer >= 0, got -1"),
        ({"patience": 1.5}, "patience must be an integer >= 0, got 1.5"),
        ({"cooldown": -1}, "cooldown must be an integer >= 0, got -1"),
        ({"cooldown": 2.0}, "cooldown must be an integer >= 0, got 2.0"),
        ({"min_lr": -0.1}, "min_lr must be a number >= 0, got -0.1"),
        ({"min_lr": float("nan")}, "min_lr must be a number >= 0, got nan"),
        ({"mode": "bigger"}, "mode must be 'auto', 'min' or 'max', got 'bigger'"),
        ({"verbose": 3}, "verbose must be 0 (silent) or 1 or 2 (print messages), got 3"),
        ({"verbose": True}, "verbose must be 0 (silent) or 1 or 2 (print messages), got True"),
    ],
)
def test_reduce_lr_on_plateau_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        ReduceLROnPlateau(**kwargs)


def test_reduce_lr_on_plateau_refuses_a_scheduled_rate_and_a_missing_figure():
    cb = ReduceLROnPlateau()
    cb.set_context(TrainingContext(SGD(ExponentialDecay(0.1, 10, 0.5)), list, print))
    cb.set_params({"metrics": ["loss", "val_loss"]})
    message = (
        "ReduceLROnPlateau sets the learning rate, but this optimizer's follows a schedule; "
        "use one or the other"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cb.on_train_begin()
    cb.set_context(_context())
    cb.set_params({"metrics": ["loss", "accuracy"]})
    with pytest.raises(ValueError, match=r"^ReduceLROnPlateau monitors 'val_loss', which this "):
        cb.on_train_begin()
    cb.set_params({"metrics": ["loss", "val_loss"]})
    cb.on_train_begin()
    message = r"available: accuracy, learning_rate, loss \(val_\* figures need validation_data "
    with pytest.raises(ValueError, match=message + r"or validation_split\)$"):
        cb.on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5})


def test_early_stopping_defaults_min_delta_and_max_mode(capsys):
    cb = EarlyStopping()
    got = (cb.monitor, cb.patience, cb.min_delta, cb.mode, cb.restore_best_weights, cb.verbose)
    assert got == ("val_loss", 0, 0.0, "min", False, 0) and cb.stopped_epoch is None
    # patience 0: the first epoch that does not improve stops
    cb = EarlyStopping()
    _drive(cb, [1.0, 0.9, 0.9])
    assert (cb.stopped_epoch, cb.best, cb.best_epoch) == (2, 0.9, 1)
    # min_delta: improving by 0.05 of a required 0.1 is no improvement
    cb = EarlyStopping(patience=1, min_delta=0.1, verbose=1)
    _drive(cb, [1.0, 0.95, 0.85, 0.8, 0.79])
    assert (cb.best, cb.best_epoch, cb.wait, cb.stopped_epoch) == (0.85, 2, 2, 4)
    assert capsys.readouterr().out == "Epoch 5: early stopping\n"
    # an accuracy: larger is better; stop_training is set on the context it was given
    cb = EarlyStopping(monitor="val_accuracy", patience=2)
    ctx = _context()
    cb.set_context(ctx)
    cb.set_params({"metrics": ["val_accuracy"]})
    cb.on_train_begin()
    for epoch, value in enumerate([0.5, 0.6, 0.55, 0.6]):
        cb.on_epoch_end(epoch, {"val_accuracy": value})
        assert ctx.stop_training is (epoch == 3)
    assert (cb.best, cb.best_epoch, cb.stopped_epoch) == (0.6, 1, 3)
    # a second training starts afresh
    cb.on_train_begin()
    assert (cb.wait, cb.best, cb.best_epoch, cb.stopped_epoch) == (0, -math.inf, None, None)
    cb = EarlyStopping(monitor="loss", mode="max")
    assert cb.mode == "max"


def test_early_stopping_restores_the_best_weights_it_kept(capsys):
    """restore_best_weights: the weights read at the best epoch are put back when training
    ends, with Keras's message; without it nothing is put back."""
    snapshots = iter([["w0"], ["w1"], ["w2"], ["w3"]])
    restored = []
    for restore in (True, False):
        cb = EarlyStopping(patience=1, restore_best_weights=restore, verbose=1)
        ctx = TrainingContext(SGD(0.1), lambda: next(snapshots), restored.append)
        cb.set_context(ctx)
        cb.set_params({"metrics": ["val_loss"]})
        cb.on_train_begin()
        for epoch, value in enumerate([0.5, 0.4, 0.6][: 3 if restore else 1]):
            cb.on_epoch_end(epoch, {"val_loss": value})
        cb.on_train_end()
    assert restored == [["w1"]]
    assert capsys.readouterr().out == (
        "Epoch 3: early stopping\nRestoring model weights from the end of the best epoch: 2.\n"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patience": -1}, "patience must be an integer >= 0, got -1"),
        ({"patience": 2.5}, "patience must be an integer >= 0, got 2.5"),
        ({"min_delta": -0.1}, "min_delta must be a number >= 0, got -0.1"),
        ({"min_delta": "0"}, "min_delta must be a number >= 0, got '0'"),
        ({"mode": "up"}, "mode must be 'auto', 'min' or 'max', got 'up'"),
    ],
)
def test_early_stopping_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        EarlyStopping(**kwargs)


def _checkpoint_run(callback, values, monitor="val_loss", is_chief=True):
    """Drive a ModelCheckpoint whose saves are recorded (what was saved, by which hook)."""
    saved = []
    ctx = TrainingContext(
        SGD(0.1),
        list,
        print,
        save=lambda path: saved.append(("save", path)),
        save_weights=lambda path: saved.append(("save_weights", path)),
        is_chief=is_chief,
    )
    callback.set_context(ctx)
    callback.set_params({"metrics": ["loss", monitor]})
    callback.on_train_begin()
    for epoch, value in enumerate(values):
        callback.on_epoch_end(epoch, {"loss": 2.0, monitor: value})
    return saved


def test_model_checkpoint_defaults_and_what_each_epoch_saves(tmp_path, capsys):
    path = str(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.npz")
    cb = ModelCheckpoint(tmp_path / "m.npz")
    got = (cb.monitor, cb.save_best_only, cb.save_weights_only, cb.mode, cb.verbose, cb.best)
    assert got == ("val_loss", False, False, "min", 0, math.inf)
    assert cb.filepath == str(tmp_path / "m.npz")
    assert ModelCheckpoint(path, monitor="val_accuracy").best == -math.inf
    # every epoch, the whole model, the name formatted with the epoch (1-based) and its logs
    saved = _checkpoint_run(ModelCheckpoint(path, verbose=1), [0.5, 0.25])
    names = [str(tmp_path / "m-01-0.50.npz"), str(tmp_path / "m-02-0.25.npz")]
    assert saved == [("save", names[0]), ("save", names[1])]
    assert capsys.readouterr().out == "".join(
        f"\nEpoch {e}: saving model to {name}\n" for e, name in ((1, names[0]), (2, names[1]))
    )
    # the weights only
    saved = _checkpoint_run(ModelCheckpoint(tmp_path / "w.npz", save_weights_only=True), [1.0])
    assert saved == [("save_weights", str(tmp_path / "w.npz"))]
    # a directory named after the epoch is made when its epoch saves
    cb = ModelCheckpoint(tmp_path / "e{epoch}" / "m.npz")
    saved = _checkpoint_run(cb, [1.0, 1.0])
    assert saved == [("save", str(tmp_path / f"e{e}" / "m.npz")) for e in (1, 2)]
    assert (tmp_path / "e2").is_dir()
    # data-parallel ranks other than the chief write nothing (and check no place)
    assert _checkpoint_run(ModelCheckpoint(tmp_path / "x" / "m.npz"), [1.0], is_chief=False) == []
    assert not (tmp_path / "x").exists()


def test_model_checkpoint_save_best_only_in_min_and_max_mode(tmp_path, capsys):
    path = str(tmp_path / "best.npz")
    cb = ModelCheckpoint(path, save_best_only=True, verbose=1)
    saved = _checkpoint_run(cb, [0.5, 0.6, 0.5, 0.4])
    assert saved == [("save", path)] * 2 and cb.best == 0.4  # epochs 1 and 4, as it says:
    assert capsys.readouterr().out == (
        f"\nEpoch 1: val_loss improved from None to 0.50000, saving model to {path}\n"
        "\nEpoch 2: val_loss did not improve from 0.50000\n"
        "\nEpoch 3: val_loss did not improve from 0.50000\n"
        f"\nEpoch 4: val_loss improved from 0.50000 to 0.40000, saving model to {path}\n"
    )
    cb = ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True, mode="max")
    assert len(_checkpoint_run(cb, [0.5, 0.4, 0.5, 0.7], monitor="val_accuracy")) == 2
    assert cb.best == 0.7
    cb = ModelCheckpoint(path, monitor="val_loss", save_best_only=True, mode="max")
    assert len(_checkpoint_run(cb, [0.5, 0.4, 0.6])) == 2 and cb.best == 0.6
    # the monitored figure is needed only to save the best
    _checkpoint_run(ModelCheckpoint(path, monitor="val_auc"), [1.0])
    with pytest.raises(ValueError, match=r"^ModelCheckpoint monitors 'val_auc', which this "):
        _checkpoint_run(ModelCheckpoint(path, monitor="val_auc", save_best_only=True), [1.0])


def test_model_checkpoint_refuses_bad_patterns_and_no_model(tmp_path):
    unknown = str(tmp_path / "m-{val_acc}.npz")
    message = (
        f"ModelCheckpoint path {unknown!r} names {{val_acc}}, which this training does not "
        "report; it may name epoch, loss, val_loss"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _checkpoint_run(ModelCheckpoint(unknown), [1.0])
    for bad in ("m-{epoch.npz", "m-{0}.npz"):
        pattern = str(tmp_path / bad)
        with pytest.raises(ValueError, match=r"\(write literal braces as \{\{ and \}\}\)$") as e:
            _checkpoint_run(ModelCheckpoint(pattern), [1.0])
        assert str(e.value).startswith(f"ModelCheckpoint path {pattern!r} is not a valid file")
    cb = ModelCheckpoint(tmp_path / "m.npz")
    cb.set_context(TrainingContext(SGD(0.1), list, print))  # no save hook: nothing to save
    cb.set_params({"metrics": ["loss"]})
    with pytest.raises(ValueError, match=r"^ModelCheckpoint: this training has no model to save$"):
        cb.on_train_begin()
    with pytest.raises(ValueError, match=r"^verbose must be 0 \(silent\) or 1 or 2"):
        ModelCheckpoint(tmp_path / "m.npz", verbose=-1)


def test_csv_logger_writes_the_epochs_figures(tmp_path):
    """The header, then a row per epoch; a figure an epoch lacks stays empty; a separator;
    appending continues under the file's own header; a rank other than the chief writes
    nothing."""
    path = tmp_path / "log.csv"
    logger = CSVLogger(path, separator=";")
    assert (logger.filename, logger.separator, logger.append) == (str(path), ";", False)
    assert (CSVLogger(path).separator, CSVLogger(path).append) == (",", False)

    def run(cb, rows, metrics=("loss", "accuracy"), is_chief=True):
        cb.set_context(_context(is_chief=is_chief))
        cb.set_params({"metrics": list(metrics)})
        cb.on_train_begin()
        for epoch, logs in rows:
            cb.on_epoch_end(epoch, logs)
        cb.on_train_end()
        return cb

    done = run(logger, [(0, {"loss": 0.5, "accuracy": 0.25}), (1, {"loss": 0.375})])
    assert done._file is None  # closed when training ends
    assert path.read_text() == "epoch;loss;accuracy\n0;0.5;0.25\n1;0.375;\n"
    run(CSVLogger(path, separator=";", append=True), [(2, {"loss": 0.25, "accuracy": 0.5})])
    assert path.read_text().splitlines()[1:] == ["0;0.5;0.25", "1;0.375;", "2;0.25;0.5"]
    # a file's columns in another order: the rows follow the file's header
    other = tmp_path / "other.csv"
    other.write_text("epoch,accuracy,loss\n")
    run(CSVLogger(other, append=True), [(0, {"loss": 0.5, "accuracy": 0.25})])
    assert other.read_text() == "epoch,accuracy,loss\n0,0.25,0.5\n"
    # appending to an empty file, or to none, writes the header first
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    run(CSVLogger(empty, append=True), [(0, {"loss": 1.0, "accuracy": 0.0})])
    run(CSVLogger(tmp_path / "new.csv", append=True), [(0, {"loss": 1.0, "accuracy": 0.0})])
    for name in ("empty.csv", "new.csv"):
        assert (tmp_path / name).read_text() == "epoch,loss,accuracy\n0,1.0,0.0\n"
    quiet = run(CSVLogger(tmp_path / "rank1.csv"), [(0, {"loss": 1.0})], is_chief=False)
    assert quiet._file is None and not (tmp_path / "rank1.csv").exists()


@pytest.mark.parametrize(
    ("text", "columns"),
    [
        ("epoch,loss\n0,1.0\n", "epoch,loss"),
        ("step,loss,accuracy\n", "step,loss,accuracy"),
        ("\n", "(none)"),
    ],
)
def test_csv_logger_refuses_to_append_to_other_columns(tmp_path, text, columns):
    path = tmp_path / "log.csv"
    path.write_text(text)
    cb = CSVLogger(path, append=True)
    cb.set_context(_context())
    cb.set_params({"metrics": ["loss", "accuracy"]})
    message = (
        f"CSVLogger(append=True): {path} has the columns {columns}, but this training reports "
        "epoch, loss, accuracy; append to a file of the same figures, or log to a new file"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cb.on_train_begin()
    assert path.read_text() == text  # kept as it was


def _recorder(calls, name):
    return lambda *args: calls.append((name, *args))


def test_lambda_callback_calls_each_hook_with_its_arguments():
    calls = []
    hooks = {name: _recorder(calls, name) for name in LambdaCallback.HOOKS}
    cb = LambdaCallback(**hooks)
    assert cb.has_batch_hooks()
    cb.on_train_begin({"a": 1})
    cb.on_epoch_begin(3, {"b": 2})
    cb.on_train_batch_begin(4, {"c": 3})
    cb.on_train_batch_end(5, {"d": 4})
    cb.on_epoch_end(6, {"e": 5})
    cb.on_train_end({"f": 6})
    assert calls == [
        ("on_train_begin", {"a": 1}),
        ("on_epoch_begin", 3, {"b": 2}),
        ("on_train_batch_begin", 4, {"c": 3}),
        ("on_train_batch_end", 5, {"d": 4}),
        ("on_epoch_end", 6, {"e": 5}),
        ("on_train_end", {"f": 6}),
    ]
    for name in LambdaCallback.HOOKS:  # each hook alone: the others do nothing
        calls.clear()
        alone = LambdaCallback(**{name: hooks[name]})
        assert alone.has_batch_hooks() is ("batch" in name)
        for hook in LambdaCallback.HOOKS:
            args = (1, {}) if "epoch" in hook or "batch" in hook else ({},)
            getattr(alone, hook)(*args)
        assert [c[0] for c in calls] == [name]
    assert LambdaCallback().has_batch_hooks() is False


def test_lambda_callback_refuses_unknown_hooks_and_non_functions():
    hooks = ", ".join(LambdaCallback.HOOKS)
    message = f"LambdaCallback got on_batch_end, on_epoch; it takes {hooks}"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        LambdaCallback(on_epoch=print, on_batch_end=print)
    with pytest.raises(TypeError, match=r"^on_epoch_end must be a function, got int$"):
        LambdaCallback(on_epoch_end=3)


def test_learning_rate_scheduler_hook_by_hook(capsys):
    ctx = _context(lr=0.5)
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return lr / 2

    cb = LearningRateScheduler(schedule, verbose=1)
    assert cb.verbose == 1 and cb.logs_learning_rate is True
    cb.set_context(ctx)
    logs = {}
    for epoch in range(2):
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, logs)
        assert logs["learning_rate"] == 0.5 / 2 ** (epoch + 1)
    cb.on_epoch_end(2, None)  # no logs: nothing to add to
    assert seen == [(0, 0.5), (1, 0.25)] and ctx.optimizer.current_learning_rate() == 0.125
    assert capsys.readouterr().out == (
        "\nEpoch 1: LearningRateScheduler setting learning rate to 0.25.\n"
        "\nEpoch 2: LearningRateScheduler setting learning rate to 0.125.\n"
    )
    # one argument, or any number of them (*args: given both), or a builtin (its signature
    # cannot be read: given both)
    for fn, want in (
        (lambda epoch: 0.1 * (epoch + 1), 0.2),
        (lambda *args: args[0] + args[1], 1.125),
        (max, 1.0),
    ):
        cb = LearningRateScheduler(fn)
        cb.set_context(_context(lr=0.125))
        cb.on_epoch_begin(1)
        assert cb.context.optimizer.current_learning_rate() == pytest.approx(want)
    assert capsys.readouterr().out == ""  # verbose=0, the default


@pytest.mark.parametrize("value", [0.0, -0.1, float("nan"), float("inf")])
def test_learning_rate_scheduler_refuses_a_rate_that_is_not_positive(value):
    cb = LearningRateScheduler(lambda epoch: value)
    cb.set_context(_context(lr=0.5))
    message = f"the schedule returned learning rate {value!r} at epoch 3; it must be a positive "
    with pytest.raises(ValueError, match=f"^{re.escape(message)}number$"):
        cb.on_epoch_begin(3)
    assert cb.context.optimizer.current_learning_rate() == 0.5
    with pytest.raises(TypeError, match=r"^schedule must be a callable \(epoch\) -> float or "):
        LearningRateScheduler(0.1)


class _Bar:
    """A stand-in for tqdm: what the progress report asks of its bar."""

    made: list = []  # noqa: RUF012

    def __init__(self, **kwargs):
        self.kwargs, self.updates, self.postfix, self.closed = kwargs, [], [], False
        _Bar.made.append(self)

    def update(self, n):
        self.updates.append(n)

    def set_postfix(self, **kwargs):
        self.postfix.append(kwargs)

    def close(self):
        self.closed = True


def test_progress_bar_and_line(monkeypatch, capsys):
    """verbose=1: one bar per epoch (samples as its unit, left off the screen when done), its
    loss read at most once a second; then the epoch's line, without the learning rate or
    per-layer figures. verbose=2: the line only."""
    import tqdm.auto

    from backprop import callbacks as module

    now = [0.0]
    monkeypatch.setattr(module.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(tqdm.auto, "tqdm", _Bar)
    _Bar.made = []
    cb = module.ProgbarLogger()
    assert cb.verbose == 1 and cb.bar is None
    cb.set_params({"samples": 100, "last_epoch": 3})
    cb.on_epoch_begin(1)
    (bar,) = _Bar.made
    assert bar.kwargs == {
        "total": 100,
        "desc": "Epoch 2/3",
        "unit": "sample",
        "leave": False,
        "dynamic_ncols": True,
        "disable": None,
    }
    reads = []

    def loss():
        reads.append(now[0])
        return 0.25

    for t, seen in ((0.5, 40), (1.0, 60), (1.5, 80), (2.0, 90), (2.75, 95)):
        now[0] = t
        cb.on_epoch_progress(seen, loss)
    cb.on_epoch_progress(100, None)  # a rank's loss cannot be read mid-epoch: none asked
    assert bar.updates == [40, 20, 20, 10, 5, 5]
    assert reads == [1.5, 2.75] and bar.postfix == [{"loss": "0.2500"}] * 2
    logs = {"loss": 0.5, "accuracy": 0.25, "learning_rate": 0.1, "grad_norm/dense": 2.0}
    cb.on_epoch_end(1, logs)
    assert bar.closed and cb.bar is None
    assert capsys.readouterr().out == "Epoch 2/3 - loss: 0.5000 - accuracy: 0.2500\n"
    cb.on_epoch_begin(2)
    cb.on_train_end()  # training ended mid-epoch (an error): the bar is closed
    assert _Bar.made[-1].closed and cb.bar is None
    line = module.ProgbarLogger(verbose=2)
    line.set_params({"samples": 100, "last_epoch": 3})
    line.on_epoch_begin(0)
    line.on_epoch_progress(50, loss)
    assert len(_Bar.made) == 2 and line.bar is None
    line.on_epoch_end(0, {"loss": 1.0})
    line.on_train_end()
    assert capsys.readouterr().out == "Epoch 1/3 - loss: 1.0000\n"
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm missing: the line still comes
    cb.on_epoch_begin(0)
    assert cb.bar is None and len(_Bar.made) == 2


def test_history_records_each_epoch():
    history = History()
    assert (history.history, history.epoch, history.seconds, history.params) == ({}, [], [], {})
    for epoch, logs in ((4, {"loss": 1.0, "accuracy": 0.5}), (5, {"loss": 0.5}), (6, None)):
        history.on_epoch_begin(epoch)
        history.on_epoch_end(epoch, logs)
    assert history.epoch == [4, 5, 6]
    assert history.history == {"loss": [1.0, 0.5], "accuracy": [0.5]}
    assert len(history.seconds) == 3 and all(0.0 <= s < 60.0 for s in history.seconds)
    assert repr(history) == "History(epochs=3, keys=['accuracy', 'loss'])"


class _Recorder(Callback):
    def __init__(self, name, calls, fail=None, figures=None, batch=False, batch_logs=False):
        self.name, self.calls, self.fail, self.figures = name, calls, fail, figures or {}
        self.batch_logs = batch_logs
        if batch:
            self.on_train_batch_begin = self._batch_begin  # an instance's own hook
        self.wants_batches = batch

    def has_batch_hooks(self):
        return self.wants_batches

    def _batch_begin(self, batch, logs=None):
        self.calls.append((self.name, "batch_begin", batch, logs))

    def on_train_begin(self, logs=None):
        self.calls.append((self.name, "begin"))
        if self.fail == "begin":
            raise KeyError(self.name)

    def on_train_end(self, logs=None):
        self.calls.append((self.name, "end"))
        if self.fail == "end":
            raise KeyError(self.name)

    def on_epoch_begin(self, epoch, logs=None):
        self.calls.append((self.name, "epoch_begin", epoch))

    def on_epoch_end(self, epoch, logs=None):
        self.calls.append((self.name, "epoch_end", epoch, dict(logs)))

    def on_epoch_progress(self, seen, loss):
        self.calls.append((self.name, "progress", seen, loss))

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append((self.name, "batch_end", batch, logs))

    def epoch_figures(self):
        return self.figures

    def step_function(self, network):
        return None if self.name == "a" else (lambda: network)


def test_callback_list_order_context_and_dispatch():
    calls = []
    a = _Recorder("a", calls, figures={"extra": 1.0})
    b = _Recorder("b", calls, batch=True)
    ctx = _context()
    model = object()
    callbacks = CallbackList([a, b], ctx, verbose=2, model=model)
    kinds = [type(cb).__name__ for cb in callbacks.callbacks]
    assert kinds == ["ProgbarLogger", "_Recorder", "_Recorder", "History"]
    assert callbacks.callbacks[0].verbose == 2
    assert ctx.history is callbacks.history is callbacks.callbacks[-1]
    assert all(cb.context is ctx and cb.model is model for cb in callbacks.callbacks)
    assert callbacks.batch_hooks == [b] and callbacks.batch_logs is False
    assert CallbackList([a], _context(is_chief=False), verbose=1).callbacks[0] is a
    assert [type(cb).__name__ for cb in CallbackList(None, _context()).callbacks] == ["History"]
    plain = _Recorder("c", [])
    CallbackList([plain], _context())
    assert plain.model is None  # no model given: none set
    with pytest.raises(TypeError, match=r"^callbacks must be Callback objects, got int$"):
        CallbackList([a, 3], ctx)
    params = {"epochs": 2, "metrics": ["loss"]}
    callbacks.set_params(params)
    assert ctx.params is callbacks.history.params is a.params is b.params
    assert ctx.params["metrics"] == ["loss"]  # no callback logs a learning rate
    with_rate = CallbackList([LearningRateScheduler(lambda e: 0.1)], _context())
    with_rate.set_params(params)
    assert with_rate.context.params == {"epochs": 2, "metrics": ["loss", "learning_rate"]}
    assert params == {"epochs": 2, "metrics": ["loss"]}  # the caller's dict is left alone
    network = object()
    (step,) = callbacks.step_functions(network)
    assert step() is network
    ctx.stop_training = True

    def running_loss():
        return 0.5

    with callbacks.training():
        assert ctx.stop_training is False  # a new training starts unstopped
        callbacks.on_epoch_begin(0)
        callbacks.on_epoch_progress(10, running_loss)
        callbacks.on_train_batch_begin(3)
        callbacks.on_train_batch_end(3, lambda: pytest.fail("the loss was read"))
        callbacks.on_epoch_end(0, {"loss": 0.5})
    mine = [c for c in calls if c[0] in "ab"]
    assert mine == [
        ("a", "begin"),
        ("b", "begin"),
        ("a", "epoch_begin", 0),
        ("b", "epoch_begin", 0),
        ("a", "progress", 10, running_loss),
        ("b", "progress", 10, running_loss),
        ("b", "batch_begin", 3, {}),
        ("b", "batch_end", 3, {}),
        # every callback's figures are in the logs before the first on_epoch_end
        ("a", "epoch_end", 0, {"loss": 0.5, "extra": 1.0}),
        ("b", "epoch_end", 0, {"loss": 0.5, "extra": 1.0}),
        ("a", "end"),
        ("b", "end"),
    ]
    assert callbacks.history.history == {"loss": [0.5], "extra": [1.0]}
    calls.clear()
    asks = _Recorder("a", calls, batch=True, batch_logs=True)
    reading = CallbackList([b, asks], _context())
    assert reading.batch_logs is True
    reading.on_train_batch_end(7, lambda: 0.25)
    assert calls == [("b", "batch_end", 7, {"loss": 0.25}), ("a", "batch_end", 7, {"loss": 0.25})]


def test_callback_list_ends_what_began_however_training_ends():
    calls = []
    first, refuses, never = (
        _Recorder(n, calls, fail=f) for n, f in (("a", None), ("b", "begin"), ("c", None))
    )
    callbacks = CallbackList([first, refuses, never], _context())
    with pytest.raises(KeyError, match="b"), callbacks.training():
        pytest.fail("training ran although a callback refused to begin")
    assert calls == [("a", "begin"), ("b", "begin"), ("a", "end")]
    # training raises: every callback ends, an end that fails is not the error raised
    calls.clear()
    callbacks = CallbackList([_Recorder("a", calls, fail="end"), _Recorder("b", calls)], _context())
    with pytest.raises(ZeroDivisionError), callbacks.training():
        1 / 0  # noqa: B018
    assert calls == [("a", "begin"), ("b", "begin"), ("a", "end"), ("b", "end")]
    # training ends well: every callback ends, and the first end that failed is raised
    calls.clear()
    failing = [_Recorder(n, calls, fail="end") for n in "ab"]
    callbacks = CallbackList([*failing, _Recorder("c", calls)], _context())
    with pytest.raises(KeyError, match="a"), callbacks.training():
        pass
    assert [c for c in calls if c[1] == "end"] == [("a", "end"), ("b", "end"), ("c", "end")]


def test_callback_messages_only_on_the_chief(capsys):
    cb = EarlyStopping(patience=0, verbose=2)
    _drive(cb, [1.0, 2.0], is_chief=False)
    assert cb.stopped_epoch == 1 and capsys.readouterr().out == ""
    _drive(cb, [1.0, 2.0])
    assert capsys.readouterr().out == "Epoch 2: early stopping\n"


def test_a_callback_has_batch_hooks_when_it_overrides_one():
    class Begin(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            pass

    class End(Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    class Epoch(Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    assert [cb().has_batch_hooks() for cb in (Begin, End, Epoch, Callback)] == [
        True,
        True,
        False,
        False,
    ]
    assert Callback().step_function(None) is None and Callback().epoch_figures() == {}


def _watched(seed, layers):
    model = Sequential(layers, input_dim=3, backend="numpy", seed=seed)
    model.compile(loss="mse", optimizer=SGD(0.1))
    return model


def test_gradient_norms_of_a_one_step_epoch_and_of_a_reused_callback():
    """batch_size=None: one step per epoch, whose ||dW|| and mean |delta| the epoch's figures
    are, for a one-layer model and for one with an Activation layer (no weights: not watched).
    The same callback given to another model watches that model's gradients."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    norms = GradientNorms()
    for seed, layers in (
        (0, lambda: [Dense(2)]),
        (1, lambda: [Dense(4), Activation("tanh"), Dense(2)]),
        (2, lambda: [Dense(4), Activation("tanh"), Dense(2)]),
    ):
        model, twin = _watched(seed, layers()), _watched(seed, layers())
        history = model.fit(
            x, y, epochs=1, batch_size=None, shuffle=False, verbose=0, callbacks=[norms]
        )
        traced = [t for t in backprop.trace(twin, x, y) if t.dW is not None]
        names = ["dense", "dense_1"][: len(traced)]
        keys = [f"{kind}/{name}" for kind in ("grad_norm", "delta") for name in names]
        assert [k for k in history.history if "/" in k] == keys
        for name, t in zip(names, traced, strict=True):
            want = np.linalg.norm(t.dW.astype(np.float64))
            assert history.history[f"grad_norm/{name}"] == [pytest.approx(want, rel=1e-5)]
            want = np.abs(t.delta.astype(np.float64)).mean()
            assert history.history[f"delta/{name}"] == [pytest.approx(want, rel=1e-5)]


def test_monitors_without_their_figure_and_improvements_that_are_only_ties(tmp_path):
    """An epoch's logs without the monitored figure: each callback names itself. An epoch
    that only ties the best (min_delta 0) is no improvement; one that improves by less than
    min_delta neither, in max mode too."""
    for cb, who in (
        (EarlyStopping(), "EarlyStopping"),
        (ModelCheckpoint(tmp_path / "m.npz", save_best_only=True), "ModelCheckpoint"),
        (ReduceLROnPlateau(), "ReduceLROnPlateau"),
    ):
        cb.set_context(_context(save=print))
        cb.set_params({"metrics": ["loss", "val_loss"]})
        cb.on_train_begin()
        with pytest.raises(ValueError, match=f"^{who} monitors 'val_loss', which this training"):
            cb.on_epoch_end(0, {"loss": 1.0})
    for mode in ("min", "max"):
        rates, _ = _drive(ReduceLROnPlateau(factor=0.5, patience=0, min_delta=0, mode=mode), [1, 1])
        assert rates == [1.0, 0.5]
        stopper = EarlyStopping(mode=mode)
        _drive(stopper, [1.0, 1.0])
        assert stopper.stopped_epoch == 1
    stopper = EarlyStopping(monitor="val_accuracy", min_delta=0.1)
    _drive(stopper, [0.5, 0.55], monitor="val_accuracy")
    assert (stopper.stopped_epoch, stopper.best) == (1, 0.5)


def test_csv_logger_without_append_replaces_the_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("step;something\n7;8\n")
    cb = CSVLogger(path)
    cb.set_context(_context())
    cb.set_params({"metrics": ["loss"]})
    cb.on_train_begin()
    cb.on_epoch_end(0, {"loss": 0.5})
    cb.on_train_end()
    assert path.read_text() == "epoch,loss\n0,0.5\n"


# ------------------------------------------------------------------- the divergence guard
def _linear(lr, seed=0):
    model = Sequential([Dense(1)], input_dim=1, backend="numpy", seed=seed)
    model.compile(loss="mse", optimizer=SGD(learning_rate=lr), metrics=[])
    return model


def test_explosion_with_sample_weights_blames_the_weighted_batch():
    """Three batches: the second has enormous targets but weight 0, the third enormous
    targets with weight 1. The weighted cost explodes in the third only: it is blamed, with
    the figures of the rule (the first batch's weighted uninformed cost and starting cost),
    and the model keeps the weights the weighted fit had before it."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((24, 1)).astype(np.float32)
    y = 0.5 * x
    y[8:] = 1e4
    w = np.array([2.0] * 8 + [0.0] * 8 + [1.0] * 8)
    model = _linear(0.01)
    with pytest.raises(TrainingDivergedError) as info:
        model.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0, sample_weight=w)
    start_model, reference = _linear(0.01), _linear(0.01)
    a = start_model.predict(x[:8]).astype(np.float64)
    start = np.mean(2.0 * (a - y[:8]) ** 2)
    chance = np.mean((1.0 - y[:8].astype(np.float64)) ** 2) * 2.0
    reference.fit(x[:16], y[:16], batch_size=8, shuffle=False, verbose=0, sample_weight=w[:16])
    cost = np.mean((reference.predict(x[16:]).astype(np.float64) - y[16:]) ** 2)
    message = str(info.value)
    expected = (
        f"the loss exploded to {cost:.4g} (above 4x that of an uninformed guess, {chance:.4g}, "
        f"and 2x that when training started, {start:.4g}) at epoch 1, batch 3 of 3; training "
        "stopped and the model keeps the weights from before that batch. Try a smaller "
        "learning rate (it is 0.01)."
    )
    assert message == expected
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_step_that_overflows_the_weights_is_blamed_on_its_batch():
    """The first batch's cost is finite, but its step makes the weights infinite: that batch
    is blamed, and the model keeps the weights (and momentum) it started from."""
    x = np.full((16, 1), 10.0, dtype=np.float32)
    y = np.full((16, 1), -10.0, dtype=np.float32)
    model = Sequential([Dense(1)], input_dim=1, backend="numpy", seed=0)
    model.compile(loss="mse", optimizer=SGD(learning_rate=1e39, momentum=0.5), metrics=[])
    before = model.get_weights()
    with np.errstate(all="ignore"), pytest.raises(TrainingDivergedError) as info:
        model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    # the optimizer's state is put back too: the velocity is zero again, as before any step
    (velocity,) = [v for slot in model.optimizer.state for v in slot.values()]
    np.testing.assert_array_equal(velocity, np.zeros_like(velocity))
    assert str(info.value) == (
        "the loss became NaN or infinite at epoch 1, batch 1 of 2; training stopped and the "
        "model keeps the weights from before that batch. Try a smaller learning rate (it is "
        "1e+39)."
    )
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_shuffle_changes_the_order_of_the_steps_and_the_seed_fixes_it():
    """Plain SGD over batches of 2: the order of the steps changes the weights. shuffle=True
    gives other weights than shuffle=False, and the same seed the same ones."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((12, 1)).astype(np.float32)
    y = (2.0 * x + rng.standard_normal((12, 1))).astype(np.float32)
    runs = {}
    for name, shuffle, seed in (("plain", False, 0), ("a", True, 0), ("b", True, 0)):
        model = _linear(0.3, seed=seed)
        model.fit(x, y, epochs=1, batch_size=2, shuffle=shuffle, verbose=0)
        runs[name] = model.get_weights()[0]
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.allclose(runs["a"], runs["plain"], rtol=1e-4)


def test_validation_weights_and_batch_hooks_reach_each_epoch():
    """validation_data's third element weights val_loss (the figure evaluate gives with the
    same weights after the epoch); a batch hook is called for each step of each epoch."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((10, 1)).astype(np.float32)
    y = (3.0 * x).astype(np.float32)
    xv, yv = x[:6], y[:6] + np.arange(6, dtype=np.float32)[:, None]
    wv = np.array([0.0, 1.0, 2.0, 3.0, 0.5, 0.0])
    batches = []
    hook = LambdaCallback(on_train_batch_begin=lambda batch, logs: batches.append(batch))
    model = _linear(0.1)
    history = model.fit(
        x, y, epochs=2, batch_size=4, verbose=0, validation_data=(xv, yv, wv), callbacks=[hook]
    )
    assert batches == [0, 1, 2, 0, 1, 2]
    weighted_loss = model.evaluate(xv, yv, sample_weight=wv, return_dict=True)["loss"]
    assert history.history["val_loss"][-1] == pytest.approx(weighted_loss, rel=1e-6)
    assert weighted_loss != pytest.approx(model.evaluate(xv, yv, return_dict=True)["loss"])


def test_fit_refuses_non_integers_and_takes_batches_of_one():
    x, y = np.ones((4, 1), np.float32), np.ones((4, 1), np.float32)
    model = _linear(0.1)
    for kwargs, message in (
        ({"shuffle": "yes"}, "shuffle must be True or False, got 'yes'"),
        ({"capture": 1}, "capture must be True or False, got 1"),
        ({"epochs": 2.5}, "epochs must be an integer >= 1, got 2.5"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1 or None, got 2.5"),
    ):
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            model.fit(x, y, verbose=0, **kwargs)
    history = model.fit(x, y, epochs=2, batch_size=1, verbose=0)
    assert history.params == {
        "epochs": 2,
        "last_epoch": 2,
        "steps": 4,
        "batch_size": 1,
        "samples": 4,
        "metrics": ["loss"],
    }
    # run_epoch by hand, without callbacks: one more pass over the fit's data
    logs = model.trainer.run_epoch()
    assert list(logs) == ["loss"] and logs["loss"] < history.history["loss"][-1]


def test_reduce_lr_on_plateau_waits_out_its_cooldown_with_patience_one():
    """patience 1, cooldown 2, a figure that never improves: a reduction every other epoch
    after the first (the epoch after a reduction is cooldown; the next one waits again)."""
    cb = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2)
    rates, _ = _drive(cb, [1.0] * 6)
    assert rates == [1.0, 0.5, 0.5, 0.25, 0.25, 0.125]


def test_model_checkpoint_makes_only_the_directories_it_saves_into(tmp_path):
    """A pattern whose directory names the epoch: training of one epoch makes that epoch's
    directory and no other (the check when training starts uses the first epoch's name)."""
    x, y = np.ones((4, 1), np.float32), np.ones((4, 1), np.float32)
    model = _linear(0.1)
    model.fit(
        x, y, epochs=1, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "e{epoch}" / "m.npz")]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1"]
    assert sorted(p.name for p in (tmp_path / "e1").iterdir()) == ["m.npz"]


def test_a_batch_whose_cost_overflows_before_its_step_is_blamed():
    """The first step leaves huge but finite weights; the second batch's cost, before its
    step, overflows: that batch is blamed, and the model keeps the weights after the first."""
    x = np.full((16, 1), 10.0, dtype=np.float32)
    y = np.full((16, 1), -10.0, dtype=np.float32)
    model, reference = _linear(1e18), _linear(1e18)
    with np.errstate(all="ignore"), pytest.raises(TrainingDivergedError) as info:
        model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    assert str(info.value) == (
        "the loss became NaN or infinite at epoch 1, batch 2 of 2; training stopped and the "
        "model keeps the weights from before that batch. Try a smaller learning rate (it is "
        "1e+18)."
    )
    reference.fit(x[:8], y[:8], batch_size=8, shuffle=False, verbose=0)
    assert np.all(np.isfinite(reference.get_weights()[0]))
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


class _HalfSquares(backprop.losses.Loss):
    """A user's loss written as before Loss.gradient took out=: (a - y)^2 / 2 summed."""

    name = "half_squares"

    def sample_costs(self, be, a, y, out=None):
        d = a - y
        return be.multiply(be.sum(d * d, axis=1), 0.5, out=out)

    def gradient(self, be, a, y):
        return (a - y) * (1.0 / a.shape[0])


@pytest.mark.filterwarnings("ignore:the training step runs eagerly")  # (CuPy: operators)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "sample-weights"])
def test_a_users_loss_without_out_still_trains_as_the_quadratic_cost(backend, weighted):
    """A Loss subclass whose gradient takes no out= trains (eagerly where it must), and is
    Nielsen's quadratic cost, so it trains as the built-in one does."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype(np.float32)
    y = rng.standard_normal((64, 3)).astype(np.float32)
    weights = np.linspace(0.5, 1.5, 64) if weighted else None
    results = []
    for loss in (_HalfSquares(), "quadratic"):
        model = Sequential([Dense(5, "tanh"), Dense(3, "linear")], 8, backend=backend, seed=0)
        model.compile(loss=loss, optimizer=SGD(0.05))
        history = model.fit(x, y, epochs=3, batch_size=16, verbose=0, sample_weight=weights)
        results.append((history.history["loss"], model.get_weights()))
    (mine, mine_w), (builtin, builtin_w) = results
    np.testing.assert_allclose(mine, builtin, rtol=1e-5)
    for a, b in zip(mine_w, builtin_w, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert mine[-1] < mine[0]
