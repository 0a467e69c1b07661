"""Keras programs run with only their imports changed: module paths, Sequential().add/pop,
Dense(input_dim=...), Input, the Activation layer, per-layer weights, names, metrics, and the
Keras spellings of fit/evaluate/predict."""

from __future__ import annotations

import numpy as np
import pytest

import backprop
from backprop import check_gradients
from backprop.datasets import load_mnist_sample


@pytest.fixture(scope="module")
def digits():
    (x_train, y_train), (x_test, y_test) = load_mnist_sample()
    return x_train, y_train, x_test, y_test


def test_the_tutorials_keras_block_runs_and_learns(digits):
    """The tutorials' program, imports pointed at backprop, on the bundled sample. Sigmoid +
    MSE + plain SGD learns slowly: 23-40% after 20 epochs over five unseeded runs here, from
    10% by chance (the README shows the fix)."""
    from backprop.layers import Dense
    from backprop.models import Sequential
    from backprop.optimizers import SGD
    from backprop.utils import to_categorical

    x_train, y_train, x_test, y_test = digits
    y_train, y_test = to_categorical(y_train, 10), to_categorical(y_test, 10)

    model = Sequential()
    model.add(Dense(500, input_dim=784, activation="sigmoid"))
    model.add(Dense(500, activation="sigmoid"))
    model.add(Dense(10, activation="softmax"))
    model.compile(loss="mse", optimizer=SGD(learning_rate=0.1), metrics=["accuracy"])
    history = model.fit(x_train, y_train, batch_size=100, epochs=20, verbose=0)
    score = model.evaluate(x_test, y_test, verbose=0)
    assert len(score) == 2 and score[1] > 0.15
    # it learned (the loss fell), and evaluate's figures are those of predict's outputs
    assert history.history["loss"][-1] < history.history["loss"][0]
    p = model.predict(x_test)
    assert score[0] == pytest.approx(np.mean((p - y_test) ** 2), rel=1e-4)  # Keras's mse
    assert score[1] == pytest.approx(np.mean(p.argmax(1) == y_test.argmax(1)))


def test_module_paths():
    from backprop import Input, callbacks, layers, losses, metrics, models, optimizers, utils

    assert models.Sequential is backprop.Sequential and models.load_model is backprop.load_model
    for name in ("Dense", "Activation", "Input"):
        assert hasattr(layers, name)
    assert optimizers.SGD is backprop.SGD and optimizers.Adam is backprop.Adam
    assert losses.CategoricalCrossentropy is backprop.CategoricalCrossentropy
    assert metrics.get_metric("accuracy").name == "accuracy"
    assert callbacks.EarlyStopping is backprop.EarlyStopping
    assert utils.to_categorical([1, 0], 3).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert Input is layers.Input


def test_to_categorical():
    from backprop.utils import to_categorical

    got = to_categorical(np.array([2, 0, 1]))
    assert got.dtype == np.float32 and got.tolist() == [[0, 0, 1], [1, 0, 0], [0, 1, 0]]
    assert to_categorical([[3]], num_classes=5).shape == (1, 5)
    with pytest.raises(ValueError, match="outside \\[0, 1\\] for num_classes=2"):
        to_categorical([2], num_classes=2)


def test_sequential_add_pop_and_names(backend):
    from backprop.layers import Activation, Dense, Input

    model = backprop.Sequential(backend=backend, seed=0)
    model.add(Input(shape=(6,)))
    model.add(Dense(5, activation="relu"))
    model.add(Dense(3))
    model.add(Activation("softmax"))
    assert [layer.name for layer in model.layers] == ["dense", "dense_1", "activation"]
    first = model.get_layer("dense").get_weights()
    assert [w.shape for w in first] == [(6, 5), (5,)]
    assert model.get_layer(index=1) is model.layers[1]
    assert len(model.weights) == 4
    removed = model.pop()
    assert removed.name == "activation" and len(model.layers) == 2
    model.add(Dense(4, activation="sigmoid", name="head"))
    # the layers already there keep their weights through pop and add
    np.testing.assert_array_equal(model.get_layer("dense").get_weights()[0], first[0])
    assert model.output_shape == (4,)
    with pytest.raises(ValueError, match="already has a layer named 'head'"):
        model.add(Dense(2, name="head"))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        model.get_layer("nope")


def test_layer_set_weights_round_trip_and_checks(backend):
    from backprop.layers import Dense

    model = backprop.Sequential([Dense(3, input_dim=2), Dense(1)], backend=backend, seed=0)
    layer = model.layers[0]
    w, b = layer.get_weights()
    layer.set_weights([w * 2, b + 1])
    got_w, got_b = layer.get_weights()
    np.testing.assert_allclose(got_w, w * 2)
    np.testing.assert_allclose(got_b, b + 1)
    with pytest.raises(ValueError, match=r"takes 2 arrays \(kernel, bias\), got 1"):
        layer.set_weights([w])
    with pytest.raises(ValueError, match=r"weights\[0\] has shape \(3, 2\), expected"):
        layer.set_weights([w.T, b])


def test_activation_layer_equals_the_fused_activation(backend):
    """Dense(10) + Activation('softmax') computes what Dense(10, 'softmax') does, and trains
    the same (the loss shortcut applies through the Activation layer)."""
    from backprop.layers import Activation, Dense

    rng = np.random.default_rng(0)
    x = rng.random((20, 6)).astype(np.float32)
    y = rng.integers(0, 3, 20)
    fused = backprop.Sequential([Dense(4, "tanh"), Dense(3, "softmax")], 6, backend, seed=1)
    split = backprop.Sequential(
        [Dense(4), Activation("tanh"), Dense(3), Activation("softmax")], 6, backend, seed=1
    )
    split.set_weights(fused.get_weights())
    np.testing.assert_allclose(split.predict(x), fused.predict(x), rtol=1e-5, atol=1e-6)
    for model in (fused, split):
        model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        model.fit(x, y, epochs=3, batch_size=5, shuffle=False, verbose=0)
    for a, b in zip(split.get_weights(), fused.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "categorical_crossentropy"])
def test_activation_layer_gradients(backend64, loss):
    from backprop.layers import Activation, Dense

    rng = np.random.default_rng(1)
    model = backprop.Sequential(
        [Dense(4), Activation("sigmoid"), Dense(3), Activation("softmax")],
        input_dim=5,
        backend=backend64,
        dtype="float64",
        seed=0,
    )
    x = rng.standard_normal((6, 5))
    y = np.eye(3)[rng.integers(0, 3, 6)]
    assert max(check_gradients(model, x, y, loss=loss)) < 1e-6


def test_model_call_is_inference(backend):
    from backprop.layers import Dense

    model = backprop.Sequential([Dense(3, "softmax", input_dim=4)], backend=backend, seed=0)
    x = np.ones((2, 4), dtype=np.float32)
    out = model(x)
    np.testing.assert_allclose(backend.to_numpy(out), model.predict(x, verbose=0), rtol=1e-6)


def test_compile_without_metrics_evaluates_to_a_scalar(digits):
    x_train, y_train, _, _ = digits
    model = backprop.Sequential([backprop.Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    assert isinstance(model.evaluate(x_train[:100], y_train[:100], verbose=0), float)


@pytest.mark.parametrize(
    ("spelling", "key"),
    [
        ("CategoricalAccuracy", "categorical_accuracy"),
        ("categorical_accuracy", "categorical_accuracy"),
        ("acc", "accuracy"),
        ("mae", "mae"),
        ("MeanSquaredError", "mean_squared_error"),
    ],
)
def test_metric_spellings_and_values(spelling, key):
    rng = np.random.default_rng(0)
    x = rng.random((30, 4)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 30)]
    model = backprop.Sequential([backprop.Dense(3, "softmax")], input_dim=4, seed=0)
    model.compile(loss="CategoricalCrossentropy", optimizer="SGD", metrics=[spelling])
    logs = model.evaluate(x, y, return_dict=True)
    a = model.predict(x)
    expected = {
        "categorical_accuracy": np.mean(a.argmax(1) == y.argmax(1)),
        "accuracy": np.mean(a.argmax(1) == y.argmax(1)),
        "mae": np.mean(np.abs(a - y)),
        "mean_squared_error": np.mean((a - y) ** 2),
    }[key]
    assert list(logs) == ["loss", key]
    assert logs[key] == pytest.approx(expected, rel=1e-5)


def test_class_style_names_for_losses_and_activations():
    assert backprop.get_loss("SparseCategoricalCrossentropy").name == (
        "sparse_categorical_crossentropy"
    )
    assert backprop.get_loss("MeanSquaredError").name == "mse"
    assert backprop.get_activation("LeakyReLU").name == "leaky_relu"
    assert backprop.get_optimizer("RMSprop").__class__.__name__ == "RMSprop"


def test_fit_verbose_auto_and_initial_epoch(digits, capsys):
    x_train, y_train, _, _ = digits
    model = backprop.Sequential([backprop.Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    history = model.fit(x_train[:200], y_train[:200], epochs=5, initial_epoch=3, verbose=2)
    assert history.epoch == [3, 4]  # epochs 4 and 5 of 5, numbered as Keras numbers them
    assert "Epoch 4/5" in capsys.readouterr().out
    model.fit(x_train[:200], y_train[:200], epochs=1, verbose="auto")
    with pytest.raises(ValueError, match="initial_epoch=5 leaves no epoch to train"):
        model.fit(x_train[:200], y_train[:200], epochs=5, initial_epoch=5)
    with pytest.raises(ValueError, match="verbose must be 0, 1, 2 or 'auto'"):
        model.predict(x_train[:2], verbose="loud")


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file_names_hold_this_librarys_format(tmp_path, suffix):
    model = backprop.Sequential([backprop.Dense(3, "softmax")], input_dim=4, seed=0)
    model.compile(loss="categorical_crossentropy", optimizer="adam")
    path = tmp_path / f"model{suffix}"
    model.save(path)
    loaded = backprop.models.load_model(path)
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- Dropout, Flatten
def _dropout_layer(backend, rate, seed=7, shape=(40, 30)):
    from backprop.layers import Dropout

    model = backprop.Sequential([Dropout(rate, seed=seed)], input_dim=shape[1], backend=backend)
    return model, model.layers[0]


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.75])
def test_dropout_keeps_the_expected_fraction_scaled(backend, rate):
    _, layer = _dropout_layer(backend, rate, shape=(200, 50))
    x = backend.asarray(np.ones((200, 50), dtype=np.float32))
    a = backend.to_numpy(layer.forward(x, training=True))
    kept = a > 0
    assert abs(kept.mean() - (1 - rate)) < 0.02
    # inverted dropout keeps the mean, to 4 standard errors (a scale of 1 / rate would not)
    assert abs(a.mean() - 1.0) < 4 * np.sqrt(rate / (1 - rate) / a.size)
    np.testing.assert_allclose(a[kept], 1.0 / (1.0 - rate), rtol=1e-6)
    second = backend.to_numpy(layer.forward(x, training=True))  # the counter moved
    assert not np.array_equal(second > 0, kept)
    # inference: the identity, every time
    np.testing.assert_array_equal(backend.to_numpy(layer.forward(x)), np.ones((200, 50)))


def test_dropout_masks_are_the_same_on_every_backend(backend):
    from backends import get_backend

    _, layer = _dropout_layer(backend, 0.3)
    _, reference = _dropout_layer(get_backend("numpy"), 0.3)
    x = np.random.default_rng(0).random((40, 30)).astype(np.float32)
    got = backend.to_numpy(layer.forward(backend.asarray(x), training=True))
    np.testing.assert_array_equal(got, reference.forward(x, training=True))


def test_dropout_backward_uses_the_forward_mask(backend):
    _, layer = _dropout_layer(backend, 0.5)
    x = backend.asarray(np.full((40, 30), 2.0, dtype=np.float32))
    a = backend.to_numpy(layer.forward(x, training=True))
    da = backend.asarray(np.full((40, 30), 3.0, dtype=np.float32))
    got = backend.to_numpy(layer.backward(da))
    np.testing.assert_allclose(got, np.where(a > 0, 3.0 * 2.0, 0.0), rtol=1e-6)


def test_dropout_gradient_check(backend64):
    """With the mask held fixed (the key reset before every pass), backprop through Dropout
    matches finite differences."""
    from backprop.layers import Dense, Dropout

    model = backprop.Sequential(
        [Dense(6, "tanh"), Dropout(0.4, seed=3), Dense(3, "softmax")],
        input_dim=4,
        backend=backend64,
        dtype="float64",
        seed=0,
    )
    key = model.layers[1].key
    start = backend64.to_numpy(key).copy()
    real = model.network.forward

    def forward_with_fixed_mask(X, out=None, training=False):
        backend64.copy(backend64.asarray(start, dtype="uint32"), out=key)
        return real(X, out=out, training=True)

    model.network.forward = forward_with_fixed_mask
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)), np.eye(3)[rng.integers(0, 3, 8)]
    assert max(check_gradients(model, x, y, loss="categorical_crossentropy")) < 1e-6


def _dropout_mlp(backend, seed=0):
    from backprop.layers import Dense, Dropout, Input

    model = backprop.Sequential(
        [Input(shape=(784,)), Dense(64, "relu"), Dropout(0.3), Dense(10, "softmax")],
        backend=backend,
        seed=seed,
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    return model


def test_dropout_training_is_reproducible_and_inference_deterministic(backend, digits):
    x, y = digits[0][:600], digits[1][:600]
    first, second, other = _dropout_mlp(backend), _dropout_mlp(backend), _dropout_mlp(backend, 1)
    for model in (first, second, other):
        model.fit(x, y, epochs=2, batch_size=50, verbose=0)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first.get_weights()[0], other.get_weights()[0])
    # inference: Dropout is the identity, so predict is the same network without it
    from backprop.layers import Dense

    plain = backprop.Sequential(
        [Dense(64, "relu"), Dense(10, "softmax")], input_dim=784, backend=backend
    )
    plain.set_weights(first.get_weights())
    np.testing.assert_allclose(first.predict(x[:20]), plain.predict(x[:20]), rtol=1e-6)


def test_dropout_resume_from_a_checkpoint_is_exact(tmp_path, digits):
    x, y = digits[0][:400], digits[1][:400]
    straight = _dropout_mlp("numpy")
    straight.fit(x, y, epochs=2, batch_size=50, verbose=0)
    interrupted = _dropout_mlp("numpy")
    interrupted.fit(x, y, epochs=1, batch_size=50, verbose=0)
    interrupted.save(tmp_path / "m.keras")
    resumed = backprop.load_model(tmp_path / "m.keras")
    resumed.fit(x, y, epochs=1, batch_size=50, verbose=0)
    for a, b in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dropout_in_a_captured_epoch_equals_eager(digits):
    """On the emulated CuPy the epoch is one recorded graph; the dropout key advances inside
    it, so the replayed epochs equal eager training bit for bit."""
    from backends import emulated_cupy

    x, y = digits[0][:300], digits[1][:300]
    runs = []
    for capture in (True, False):
        model = _dropout_mlp(emulated_cupy.emulated_cupy_backend())
        model.fit(x, y, epochs=4, batch_size=64, verbose=0, capture=capture)
        runs.append(model.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_flatten_takes_image_shaped_samples(backend, digits):
    from backprop.layers import Dense, Flatten, Input

    images = digits[0][:300].reshape(-1, 28, 28)
    model = backprop.Sequential(
        [Input(shape=(28, 28)), Flatten(), Dense(10, "softmax")], backend=backend, seed=0
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(images, digits[1][:300], epochs=3, batch_size=32, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.predict(images[:5]).shape == (5, 10)
    with pytest.raises(ValueError, match=r"must have shape \(n_samples, 28, 28\)"):
        model.predict(digits[0][:5])
    with pytest.raises(ValueError, match="put Flatten\\(\\) before it"):
        backprop.Sequential([Input(shape=(28, 28)), Dense(10)])


def test_flatten_gradient_check(backend64):
    from backprop.layers import Dense, Flatten, Input

    model = backprop.Sequential(
        [Input(shape=(2, 3)), Flatten(), Dense(4, "sigmoid"), Dense(2)],
        backend=backend64,
        dtype="float64",
        seed=0,
    )
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 2))
    assert max(check_gradients(model, x, y, loss="mse")) < 1e-6


# --------------------------------------------------------------------------- callbacks
def _small(seed=0, lr=0.01):
    from backprop.layers import Dense
    from backprop.optimizers import SGD

    model = backprop.Sequential([Dense(16, "relu"), Dense(10, "softmax")], 784, seed=seed)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(lr), metrics=["accuracy"])
    return model


def test_learning_rate_scheduler_takes_one_argument_functions(digits):
    from backprop.callbacks import LearningRateScheduler

    seen = []
    model = _small()
    schedule = LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    record = backprop.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(logs["learning_rate"])
    )
    model.fit(digits[0][:200], digits[1][:200], epochs=3, verbose=0, callbacks=[schedule, record])
    assert seen == pytest.approx([0.1, 0.05, 0.1 / 3])


def test_reduce_lr_on_plateau(digits):
    from backprop.callbacks import ReduceLROnPlateau

    model = _small(lr=0.05)
    values = iter([1.0, 0.5, 0.6, 0.7, 0.8, 0.4, 0.9, 0.95])
    rates = []

    class FakeMonitor(backprop.Callback):  # feeds a made-up val_loss, records the rate
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(values)
            rates.append(self.model.optimizer.current_learning_rate())

    reduce = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=0.02)
    reduce.on_train_begin = lambda logs=None: ReduceLROnPlateau.on_train_begin.__wrapped__
    x, y = digits[0][:100], digits[1][:100]
    reduce = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=0.02)
    model.fit(x, y, epochs=8, verbose=0, validation_split=0.2, callbacks=[FakeMonitor(), reduce])
    # no improvement in epochs 3, 4 -> halved after 4; 6 improves; 7, 8 -> floor 0.02 after 8
    assert rates == pytest.approx([0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025, 0.025])
    assert model.optimizer.current_learning_rate() == pytest.approx(0.02)


def test_csv_logger_writes_one_row_per_epoch(tmp_path, digits):
    import csv

    from backprop.callbacks import CSVLogger

    path = tmp_path / "logs" / "run.csv"
    model = _small()
    model.fit(digits[0][:200], digits[1][:200], epochs=2, verbose=0, callbacks=[CSVLogger(path)])
    model.fit(
        digits[0][:200],
        digits[1][:200],
        epochs=1,
        verbose=0,
        callbacks=[CSVLogger(path, append=True)],
    )
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "loss", "accuracy", "learning_rate"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    assert float(rows[1][1]) > float(rows[3][1])


def test_batch_hooks_run_between_steps_and_read_only_when_asked(digits):
    x, y = digits[0][:100], digits[1][:100]
    model = _small()
    calls = []
    quiet = backprop.LambdaCallback(on_train_batch_end=lambda b, logs: calls.append((b, logs)))
    model.fit(x, y, epochs=1, batch_size=25, verbose=0, callbacks=[quiet])
    assert calls == [(0, {}), (1, {}), (2, {}), (3, {})]  # no device read per step

    class Wants(backprop.Callback):
        batch_logs = True

        def __init__(self):
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(logs["loss"])

    wants = Wants()
    model.fit(x, y, epochs=1, batch_size=25, verbose=0, callbacks=[wants])
    assert len(wants.losses) == 4 and all(v > 0 for v in wants.losses)


def test_batch_hooks_turn_a_captured_epoch_into_steps(digits):
    from backends import emulated_cupy

    be = emulated_cupy.emulated_cupy_backend()
    model = _dropout_mlp(be)
    seen = []
    hook = backprop.LambdaCallback(on_train_batch_begin=lambda b, logs: seen.append(b))
    model.fit(
        digits[0][:128], digits[1][:128], epochs=3, batch_size=64, verbose=0, callbacks=[hook]
    )
    assert seen == [0, 1] * 3


def test_model_checkpoint_keras_arguments(tmp_path, digits):
    from backprop.callbacks import EarlyStopping, ModelCheckpoint

    x, y = digits[0][:300], digits[1][:300]
    model = _dropout_mlp("numpy")
    best = tmp_path / "best.keras"
    weights = tmp_path / "w-{epoch:02d}.weights.h5"
    history = model.fit(
        x,
        y,
        epochs=4,
        batch_size=50,
        verbose=0,
        validation_split=0.2,
        callbacks=[
            ModelCheckpoint(filepath=str(best), monitor="val_loss", save_best_only=True),
            ModelCheckpoint(str(weights), save_weights_only=True),
            EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True),
        ],
    )
    loaded = backprop.models.load_model(best)
    best_epoch = int(np.argmin(history.history["val_loss"]))
    assert loaded.evaluate(x[240:], y[240:], verbose=0)[0] == pytest.approx(
        history.history["val_loss"][best_epoch], rel=1e-5
    )
    files = sorted(p.name for p in tmp_path.glob("w-*.weights.h5"))
    assert files[0] == "w-01.weights.h5" and len(files) == len(history.epoch)
    fresh = _dropout_mlp("numpy", seed=5)
    before = fresh.predict(x[:20])
    fresh.load_weights(tmp_path / files[best_epoch])  # the epoch that best.keras holds too
    assert not np.array_equal(before, loaded.predict(x[:20]))
    np.testing.assert_array_equal(fresh.predict(x[:20]), loaded.predict(x[:20]))
    with pytest.raises(ValueError, match="holds 4 weight arrays, but the model has 2"):
        backprop.Sequential([backprop.Dense(10, "softmax")], 784).load_weights(tmp_path / files[0])


@pytest.mark.parametrize("backend_name", ["numpy", "strict"])
def test_keras_mlp_program_runs_unchanged_but_its_imports(backend_name, tmp_path):
    """examples/keras_mlp.py (Input, Dropout, EarlyStopping(restore_best_weights=True),
    ModelCheckpoint(save_best_only=True), load_model): the backend comes from the
    environment, as Keras's from KERAS_BACKEND."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from backends import backend_unavailable_reason

    if backend_unavailable_reason(backend_name):
        pytest.skip(backend_unavailable_reason(backend_name))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / "keras_mlp.py"), "8"],
        env=dict(os.environ, BACKPROP_BACKEND=backend_name),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = float(done.stdout.split("test accuracy: ")[1])
    assert accuracy > 0.88
