"""compile / fit / evaluate / predict / summary, callbacks and failure behaviour, on every
backend of the matrix."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import make_backend

from backprop import (
    SGD,
    Adam,
    Callback,
    Dense,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    Sequential,
    TrainingDivergedError,
    load_model,
)
from backprop.datasets import load_mnist_sample
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
