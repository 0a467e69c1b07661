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


def test_layer_weights_before_build_and_of_a_layer_without_any(backend):
    from backprop.layers import Dense, Flatten, Input

    hidden = Dense(3, name="hidden")
    assert hidden.get_weights() == []
    with pytest.raises(RuntimeError, match="layer 'hidden' is not built yet: build its model"):
        hidden.set_weights([np.ones((2, 3)), np.zeros(3)])
    model = backprop.Sequential(
        [Input(shape=(2, 1)), Flatten(name="flat"), hidden], backend=backend, seed=0
    )
    flat = model.get_layer("flat")
    assert flat.get_weights() == [] and flat.count_params() == 0
    with pytest.raises(ValueError, match=r"layer 'flat' takes 0 arrays \(none\), got 1"):
        flat.set_weights([np.ones(1)])
    # the protocol's own repr and summary description (Flatten keeps both)
    assert repr(flat) == "Flatten(name='flat')"
    assert flat.describe() == "flat" and Flatten().describe() == "flatten"


def test_dense_forward_and_backward_by_hand(backend64):
    """Called directly, as a custom training loop would: a = x W + b; backward(da) fills
    dW = x.T da and db = sum(da) and returns da W.T (linear: delta = da); as the output layer
    of the quadratic cost, da = (a - y) / batch."""
    from backprop.layers import Dense
    from backprop.losses import get_loss

    be = backend64
    model = backprop.Sequential([Dense(2, input_dim=3)], backend=be, dtype="float64", seed=0)
    layer = model.layers[0]
    layer.set_weights([np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([0.5, -0.5])])
    x = be.asarray(np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]]))
    da = np.array([[1.0, -1.0], [0.5, 2.0]])
    y = np.array([[-5.5, -2.5], [4.5, 3.5]])  # a - y = 2 da
    for keeps_delta, backward in (
        (True, lambda: layer.backward(be.asarray(da))),
        (True, lambda: layer.output_backward(get_loss("quadratic"), be.asarray(y))),
        (False, lambda: layer.backward_delta(be.asarray(da))),  # from delta: db is its sum
    ):
        a = layer.forward(x)
        np.testing.assert_allclose(be.to_numpy(a), [[-3.5, -4.5], [5.5, 7.5]])
        for g in layer.grads:  # what the last pass left there must not count
            be.copy(be.asarray(np.full(tuple(g.shape), 7.0)), out=g)
        layer.delta = None
        da_prev = backward()
        if keeps_delta:  # backward and output_backward keep it for trace and GradientNorms
            np.testing.assert_allclose(be.to_numpy(layer.delta), da)
        np.testing.assert_allclose(be.to_numpy(da_prev), [[-1.0, -1.0, -1.0], [4.5, 9.5, 14.5]])
        np.testing.assert_allclose(be.to_numpy(layer.dW), [[2.0, 3.0], [0.5, 2.0], [-1.0, 1.0]])
        np.testing.assert_allclose(be.to_numpy(layer.db), [1.5, 1.0])
    # a step allocates nothing batch-sized: the next pass with this batch size writes into the
    # arrays the last one returned (forward's docstring: copy them to keep them)
    assert layer.forward(x) is a and layer.backward(be.asarray(da)) is da_prev
    assert layer.backward(be.asarray(da), need_da_prev=False) is None
    assert layer.output_backward(get_loss("quadratic"), be.asarray(y), need_da_prev=False) is None
    assert layer.backward_delta(be.asarray(da), need_da_prev=False) is None


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
    with pytest.raises(ValueError) as caught:
        backprop.Sequential([Input(shape=(28, 28)), Dense(10)])
    assert str(caught.value) == (
        "Dense takes flat samples, but its input has shape (28, 28) per sample: "
        "put Flatten() before it"
    )


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
    assert rows[0] == ["epoch", "loss", "accuracy"]  # learning_rate only with an LR callback
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


# =============================================================================================
# Issue 21, the layer half: BatchNormalization, Softmax and models as layers, layer options
# (get_config/from_config, use_bias, activation and initializer objects, selu/lecun_normal,
# LeakyReLU, InputLayer, Normalization), trainable=False and model.input_shape.
# =============================================================================================
def _blobs(n=96, features=6, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, features)) * 2.0 + y[:, None] * 1.5 + 3.0
    return x.astype(np.float32), y


def _bn_model(backend, dtype="float32", seed=0, **bn):
    from backprop.layers import Activation, BatchNormalization, Dense

    return backprop.Sequential(
        [
            Dense(5, use_bias=False, input_dim=6),
            BatchNormalization(**bn),
            Activation("tanh"),
            Dense(3, "softmax"),
        ],
        backend=backend,
        dtype=dtype,
        seed=seed,
    )


def test_batch_normalization_uses_batch_statistics_in_training_and_moving_ones_after(backend):
    from backprop.layers import BatchNormalization

    model = backprop.Sequential([BatchNormalization(momentum=0.9)], input_dim=4, backend=backend)
    layer = model.layers[0]
    gamma, beta = np.array([1.0, 2.0, 0.5, 1.0]), np.array([0.0, 1.0, -1.0, 3.0])
    layer.set_weights([gamma, beta, np.zeros(4), np.ones(4)])
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((50, 4)) * [1.0, 3.0, 0.2, 10.0] + [5.0, -2.0, 0.0, 1.0]).astype(
        np.float32
    )
    X = backend.asarray(x)
    a = backend.to_numpy(layer.forward(X, training=True))
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=0), x64.var(axis=0)
    np.testing.assert_allclose(a, gamma * (x64 - mean) / np.sqrt(var + 1e-3) + beta, atol=2e-5)
    _, _, moving_mean, moving_var = layer.get_weights()
    np.testing.assert_allclose(moving_mean, 0.1 * mean, rtol=1e-5)  # 0.9 * 0 + 0.1 * mean
    np.testing.assert_allclose(moving_var, 0.9 + 0.1 * var, rtol=1e-5)
    # inference: the moving statistics, nothing updated
    got = model.predict(x[:5])
    want = gamma * (x64[:5] - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-3) + beta
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(layer.get_weights()[2], moving_mean)
    assert [p.shape for p in layer.trainable_weights] == [(4,), (4,)]
    assert len(layer.non_trainable_weights) == 2
    assert layer.get_config()["momentum"] == 0.9 and layer.get_config()["epsilon"] == 1e-3


def test_batch_normalization_keras_defaults_and_checks():
    from backprop.layers import BatchNormalization

    layer = BatchNormalization()
    assert (layer.momentum, layer.epsilon, layer.center, layer.scale) == (0.99, 1e-3, True, True)
    with pytest.raises(ValueError, match=r"momentum must be a number in \[0, 1\), got 1\.5"):
        BatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match="epsilon must be a number > 0, got 0"):
        BatchNormalization(epsilon=0)
    with pytest.raises(ValueError, match="center must be True or False"):
        BatchNormalization(center="yes")
    with pytest.raises(ValueError, match="put Flatten\\(\\) before it"):
        backprop.Sequential([BatchNormalization(input_shape=(4, 4))])


@pytest.mark.parametrize(
    "options", [{}, {"center": False}, {"scale": False}, {"center": False, "scale": False}]
)
def test_batch_normalization_gradient_check(backend64, options):
    """Training mode (the batch's statistics depend on the inputs) and inference mode, in
    float64 against central differences."""
    model = _bn_model(backend64, "float64", momentum=0.5, **options)
    layer = model.layers[1]
    assert len(layer.get_weights()) == 4 - len(options)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 6)) * 2 + 1, np.eye(3)[rng.integers(0, 3, 10)]
    before = model.get_weights()
    errors = check_gradients(model, x, y, loss="categorical_crossentropy", training=True)
    assert max(errors) < 1e-6
    for got, want in zip(model.get_weights(), before, strict=True):  # moving stats put back
        np.testing.assert_array_equal(got, want)
    # at inference the cost depends on the moving statistics too, but they are not trained:
    # backprop leaves their gradients zero, and only the trainable arrays are checked
    errors = check_gradients(model, x, y, loss="categorical_crossentropy", training=False)
    mask = model.network.trainable_mask()
    assert mask == [True] * (3 - len(options)) + [False, False, True, True]
    assert max(e for e, trained in zip(errors, mask, strict=True) if trained) < 1e-6


def test_batch_normalization_trains_saves_and_loads(backend, tmp_path):
    x, y = _blobs()
    model = _bn_model(backend)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(x, y, epochs=15, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    moving_mean = model.layers[1].get_weights()[2]
    assert np.all(moving_mean != 0.0)  # averaged in by the training steps
    model.save(tmp_path / "bn.keras")
    loaded = backprop.load_model(tmp_path / "bn.keras", backend=backend)
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # and training resumes identically from the file
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_batch_normalization_moving_statistics_are_in_the_guards_snapshot(backend):
    """The explosion guard's snapshot and restore put the moving statistics back too."""
    x, y = _blobs()
    model = _bn_model(backend)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    trainer = model.trainer
    trainer.ready()
    before = model.get_weights()
    snap = trainer.snapshot()
    model.train_on_batch(x[:16], y[:16])
    assert not np.array_equal(model.layers[1].get_weights()[2], before[3])
    trainer.restore(snap)
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_batch_normalization_in_a_captured_epoch_equals_eager():
    """On the emulated CuPy the epoch is recorded and replayed; the moving statistics are
    updated inside the graph, so every weight equals eager training bit for bit."""
    from backends import emulated_cupy

    x, y = _blobs(130)
    runs = []
    for capture in (True, False):
        model = _bn_model(emulated_cupy.emulated_cupy_backend())
        model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
        X = model.backend.asarray(x)
        model.fit(X, y, epochs=4, batch_size=16, verbose=0, capture=capture)
        if capture:
            (replay,) = model.trainer.train_function.replays.values()
            assert replay.mode == "graph" and replay.launches >= 2
        runs.append(model.get_weights())
    for a, b in zip(*runs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_softmax_layer_and_a_model_used_as_a_layer_share_weights(backend, tmp_path):
    """The tutorial's probability model: Sequential([model, Softmax()]) computes the softmax
    of the model's logits with the model's own weights; training either trains both."""
    from backprop.layers import Dense, Softmax

    x, y = _blobs()
    model = backprop.Sequential([Dense(8, "relu"), Dense(3)], input_dim=6, backend=backend, seed=1)
    logits, initial = model.predict(x), model.get_weights()
    probability_model = backprop.Sequential([model, Softmax()])
    assert probability_model.backend is model.backend
    probabilities = probability_model.predict(x)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, e / e.sum(axis=1, keepdims=True), rtol=1e-5)
    assert [w.shape for w in probability_model.get_weights()] == [(6, 8), (8,), (8, 3), (3,)]
    # training the outer model trains the inner model's weights
    probability_model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    probability_model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    changed = model.get_weights()
    assert not np.array_equal(changed[0], initial[0])
    for got, want in zip(changed, probability_model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.allclose(model.predict(x), logits)
    new_logits = model.predict(x)
    e = np.exp(new_logits - new_logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(
        probability_model.predict(x), e / e.sum(axis=1, keepdims=True), rtol=1e-5
    )
    # and training the inner model shows in the outer one
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for got, want in zip(model.get_weights(), probability_model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(model.get_weights()[0], changed[0])
    # saved and loaded as one model
    probability_model.save(tmp_path / "p.keras")
    loaded = backprop.load_model(tmp_path / "p.keras", backend=backend)
    np.testing.assert_array_equal(loaded.predict(x), probability_model.predict(x))
    with pytest.raises(ValueError, match="used as the layer 'sequential' of another model"):
        model.add(Dense(2))


def test_softmax_layer_takes_the_cross_entropy_shortcut(backend64):
    from backprop.layers import Dense, Softmax

    model = backprop.Sequential(
        [Dense(4, "tanh"), Dense(3), Softmax()], input_dim=5, backend=backend64, dtype="float64"
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((7, 5)), np.eye(3)[rng.integers(0, 3, 7)]
    fused = model.gradients(x, y, loss="categorical_crossentropy")
    general = model.gradients(x, y, loss="categorical_crossentropy", shortcut=False)
    for a, b in zip(fused, general, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert max(check_gradients(model, x, y, loss="categorical_crossentropy")) < 1e-6


def test_nested_model_gradient_check_and_mismatched_backends(backend64):
    from backprop.layers import Dense

    inner = backprop.Sequential(
        [Dense(4, "sigmoid"), Dense(3, "tanh")], input_dim=5, backend=backend64, dtype="float64"
    )
    outer = backprop.Sequential([inner, Dense(2, "softmax")], dtype="float64")
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 5)), np.eye(2)[rng.integers(0, 2, 6)]
    assert max(check_gradients(outer, x, y, loss="categorical_crossentropy")) < 1e-6
    other = backprop.Sequential([Dense(2)], input_dim=5, backend="numpy", dtype="float32")
    with pytest.raises(ValueError, match="already a layer"):
        backprop.Sequential([inner])
    with pytest.raises(ValueError, match="layers\\[0\\] is a model that is not built yet"):
        backprop.Sequential([backprop.Sequential([Dense(2)]), Dense(2)])
    with pytest.raises(ValueError, match="make both on the same backend"):
        backprop.Sequential([other], backend=backend64, dtype="float64")


@pytest.mark.parametrize(
    "make",
    [
        lambda L: L.Dense(4, "relu", use_bias=False, name="d"),
        lambda L: L.Dense(3, backprop.activations.selu, kernel_initializer="lecun_normal"),
        lambda L: L.Dense(3, kernel_initializer=backprop.initializers.GlorotUniform(seed=4)),
        lambda L: L.BatchNormalization(momentum=0.9, center=False),
        lambda L: L.Dropout(0.25, seed=2),
        lambda L: L.LeakyReLU(negative_slope=0.2),
        lambda L: L.Softmax(),
        lambda L: L.Activation("elu"),
        lambda L: L.Normalization(mean=[1.0, 2.0], variance=[4.0, 9.0]),
    ],
)
def test_get_config_from_config_round_trip(make):
    from backprop import layers as L

    layer = make(L)
    layer.trainable = False
    config = layer.get_config()
    assert config["trainable"] is False
    again = type(layer).from_config(config)
    assert type(again) is type(layer) and again.get_config() == config
    assert again.trainable is False


def test_dense_get_config_is_keras_shaped():
    from backprop.layers import Dense

    config = Dense(4, "relu", name="hidden").get_config()
    assert config["units"] == 4 and config["activation"] == "relu"
    assert config["use_bias"] is True and config["kernel_initializer"] == "glorot_uniform"
    assert config["name"] == "hidden" and config["trainable"] is True


@pytest.mark.parametrize("name", ["", 3])
def test_a_layer_name_must_be_a_non_empty_string(name):
    from backprop.layers import Dense

    with pytest.raises(ValueError) as caught:
        Dense(2, name=name)
    assert str(caught.value) == f"name must be a non-empty string, got {name!r}"


def test_a_layers_input_shape_is_checked_by_name_and_it_starts_unbuilt():
    from backprop.layers import Dense

    with pytest.raises(ValueError) as caught:
        Dense(2, input_shape=(0,))
    assert str(caught.value) == (
        "input_shape must be a tuple of integers >= 1 such as (784,), got (0,)"
    )
    assert Dense(2).built is False  # Keras's layer.built


def test_from_config_without_trainable_and_with_a_wrong_one():
    from backprop.layers import Dense

    config = Dense(2, name="d").get_config()
    del config["trainable"]
    assert Dense.from_config(config).trainable is True  # Keras's default
    with pytest.raises(ValueError, match="trainable must be True or False, got 'yes'"):
        Dense.from_config({**config, "trainable": "yes"})


def test_dense_config_keeps_the_bias_regularizer_and_the_input_shape(backend):
    from backprop import regularizers
    from backprop.layers import Dense

    config = Dense(2, bias_regularizer=regularizers.L2(0.5), input_dim=3).get_config()
    assert config["input_shape"] == [3]
    again = Dense.from_config(config)
    assert again.bias_regularizer == regularizers.L2(0.5)
    model = backprop.Sequential([again], backend=backend, seed=0)
    assert model.built and model.input_dim == 3 and model.count_params() == 3 * 2 + 2


class _Identity(backprop.layers.Layer):
    """A user's layer that overrides only the math."""

    def forward(self, x, out=None, training=False):
        self.a = x
        return x

    def backward(self, da, need_da_prev=True):
        return da


def test_a_users_layer_gets_the_protocols_config_and_repr():
    layer = _Identity(name="same")
    assert layer.get_config() == {"name": "same", "trainable": True}
    assert repr(layer) == "_Identity(name='same')"
    again = _Identity.from_config(layer.get_config())
    assert again.name == "same" and again.trainable is True


def test_dense_without_bias(backend64):
    from backprop.layers import Dense

    model = backprop.Sequential(
        [Dense(4, "tanh", use_bias=False), Dense(2, "softmax", use_bias=False)],
        input_dim=3,
        backend=backend64,
        dtype="float64",
    )
    assert [w.shape for w in model.get_weights()] == [(3, 4), (4, 2)]
    assert model.count_params() == 3 * 4 + 4 * 2
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 3)), np.eye(2)[rng.integers(0, 2, 5)]
    assert max(check_gradients(model, x, y, loss="categorical_crossentropy")) < 1e-6
    assert max(check_gradients(model, x, y, loss="mse")) < 1e-6
    np.testing.assert_allclose(model.predict(np.zeros((2, 3))), 0.5)  # no bias: z = 0
    with pytest.raises(ValueError, match="use_bias must be True or False"):
        Dense(2, use_bias=0)


def test_activation_objects_as_keras_activations(backend):
    from backprop import activations
    from backprop.layers import Dense

    x = np.array([[-2.0, -0.5, 0.0, 1.5]], dtype=np.float32)
    np.testing.assert_array_equal(activations.relu(x), [[0.0, 0.0, 0.0, 1.5]])
    np.testing.assert_allclose(activations.sigmoid(np.array([0.0])), [0.5])
    np.testing.assert_allclose(activations.softmax(np.zeros((2, 4))), np.full((2, 4), 0.25))
    by_object = backprop.Sequential(
        [Dense(4, activation=activations.relu), Dense(2, activation=activations.softmax)],
        input_dim=3,
        backend=backend,
        seed=5,
    )
    by_name = backprop.Sequential(
        [Dense(4, "relu"), Dense(2, "softmax")], input_dim=3, backend=backend, seed=5
    )
    data_x = np.random.default_rng(0).standard_normal((6, 3))
    np.testing.assert_array_equal(by_object.predict(data_x), by_name.predict(data_x))
    assert by_object.layers[0].get_config()["activation"] == "relu"
    with pytest.raises(TypeError, match="activation must be a name"):
        Dense(2, activation=3)


def test_initializer_objects(backend):
    from backprop import initializers
    from backprop.layers import Dense

    def first_kernel(init, seed):
        model = backprop.Sequential(
            [Dense(400, kernel_initializer=init)], input_dim=300, backend=backend, seed=seed
        )
        return model.get_weights()[0]

    W = first_kernel(initializers.HeNormal(), 0)
    assert abs(W.std() - np.sqrt(2 / 300)) < 0.002 and abs(W.mean()) < 0.002
    # HeNormal() draws what "he_normal" draws from the model's generator
    np.testing.assert_array_equal(W, first_kernel("he_normal", 0))
    # a seeded initializer draws the same weights whatever the model's seed
    a = first_kernel(initializers.GlorotUniform(seed=7), 0)
    b = first_kernel(initializers.GlorotUniform(seed=7), 1)
    np.testing.assert_array_equal(a, b)
    limit = np.sqrt(6 / 700)
    assert a.max() <= limit and a.min() >= -limit and a.max() > 0.95 * limit
    assert not np.array_equal(a, first_kernel(initializers.GlorotUniform(seed=8), 0))
    assert np.all(first_kernel(initializers.Constant(0.5), 0) == 0.5)
    W = first_kernel(initializers.RandomNormal(stddev=0.01), 0)
    assert abs(W.std() - 0.01) < 0.0005
    with pytest.raises(ValueError, match="unknown initializer 'nope'"):
        Dense(2, kernel_initializer="nope")
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        initializers.HeNormal(seed=-1)


def test_seeded_initializer_is_saved_and_loaded(tmp_path):
    from backprop import initializers
    from backprop.layers import Dense

    layer = Dense(3, kernel_initializer=initializers.GlorotUniform(seed=3))
    model = backprop.Sequential([layer], input_dim=2)
    model.compile(loss="mse")
    model.save(tmp_path / "m.keras")
    loaded = backprop.load_model(tmp_path / "m.keras")
    init = loaded.layers[0].kernel_initializer
    assert init == initializers.GlorotUniform(seed=3)
    np.testing.assert_array_equal(loaded.get_weights()[0], model.get_weights()[0])


def test_selu_with_lecun_normal_self_normalizes(backend):
    """Klambauer et al.'s claim: with lecun_normal weights a deep selu stack keeps standard
    normal inputs near zero mean and unit variance."""
    from backprop.layers import Dense

    model = backprop.Sequential(
        [Dense(300, "selu", kernel_initializer="lecun_normal") for _ in range(8)],
        input_dim=300,
        backend=backend,
        seed=0,
    )
    x = np.random.default_rng(0).standard_normal((500, 300)).astype(np.float32)
    a = model.predict(x)
    assert abs(a.mean()) < 0.1 and abs(a.std() - 1.0) < 0.1
    W = model.get_weights()[0]
    assert (
        abs(W.std() - np.sqrt(1 / 300)) < 0.002
        and np.abs(W).max() <= 2 * np.sqrt(1 / 300) / 0.87962566103423978 + 1e-7
    )


def test_selu_gradient_check(backend64):
    from backprop.layers import Dense

    model = backprop.Sequential(
        [Dense(5, "selu", kernel_initializer="lecun_normal"), Dense(3, "softmax")],
        input_dim=4,
        backend=backend64,
        dtype="float64",
        seed=1,
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 4)), np.eye(3)[rng.integers(0, 3, 8)]
    assert max(check_gradients(model, x, y, loss="categorical_crossentropy")) < 1e-6


def test_leaky_relu_layer(backend64):
    from backprop.layers import Dense, LeakyReLU

    model = backprop.Sequential(
        [Dense(4), LeakyReLU(negative_slope=0.2), Dense(2, "softmax")],
        input_dim=3,
        backend=backend64,
        dtype="float64",
        seed=0,
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 3)), np.eye(2)[rng.integers(0, 2, 9)]
    z = model.layers[0].forward(backend64.asarray(x))
    got = backend64.to_numpy(model.layers[1].forward(z))
    z = backend64.to_numpy(z)
    np.testing.assert_allclose(got, np.where(z > 0, z, 0.2 * z))
    assert max(check_gradients(model, x, y, loss="categorical_crossentropy")) < 1e-6
    assert LeakyReLU().negative_slope == 0.3 and LeakyReLU(alpha=0.1).negative_slope == 0.1
    with pytest.raises(ValueError, match="negative_slope must be a number >= 0"):
        LeakyReLU(-1)


def test_input_layer_and_keras_input_shape(backend):
    from backprop.layers import Dense, InputLayer

    model = backprop.Sequential([InputLayer(input_shape=(8,)), Dense(2)], backend=backend)
    assert model.input_shape == (None, 8) and model.input_dim == 8
    assert backprop.Sequential([InputLayer(shape=(8,)), Dense(2)]).input_shape == (None, 8)
    assert backprop.Sequential([Dense(2)]).input_shape is None
    with pytest.raises(ValueError, match="exactly one of them"):
        InputLayer()


def test_normalization_adapt_saved_and_loaded(backend, tmp_path):
    from backprop.layers import Dense, Normalization

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((200, 3)) * [1.0, 10.0, 0.1] + [5.0, -50.0, 2.0]).astype(np.float32)
    norm = Normalization()
    norm.adapt(x)
    model = backprop.Sequential([norm, Dense(2, "softmax")], input_dim=3, backend=backend, seed=0)
    mean, variance = norm.get_weights()
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(variance, x.astype(np.float64).var(axis=0), rtol=1e-5)
    z = backend.to_numpy(norm.forward(backend.asarray(x)))
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=1e-4)
    assert norm.trainable_weights == [] and len(norm.non_trainable_weights) == 2
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    model.fit(x, (x[:, 0] > 5).astype(int), epochs=2, batch_size=32, verbose=0)
    np.testing.assert_array_equal(norm.get_weights()[0], mean)  # not trained
    model.save(tmp_path / "n.keras")
    loaded = backprop.load_model(tmp_path / "n.keras", backend=backend)
    np.testing.assert_array_equal(loaded.layers[0].get_weights()[1], variance)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    # adapting a built layer sets its weights
    norm.adapt(x[:10])
    np.testing.assert_allclose(
        norm.get_weights()[0], x[:10].astype(np.float64).mean(axis=0), rtol=1e-5
    )
    with pytest.raises(ValueError, match="adapt got 2 features, but the layer was built for 3"):
        norm.adapt(x[:, :2])


def _frozen_model(backend):
    from backprop.layers import BatchNormalization, Dense

    return backprop.Sequential(
        [Dense(8, "relu"), BatchNormalization(), Dense(8, "tanh"), Dense(3, "softmax")],
        input_dim=6,
        backend=backend,
        seed=0,
    )


@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adamw"])
def test_frozen_layers_stay_bit_identical(backend, optimizer):
    """trainable=False: those weights are not updated, even by momentum carried over from
    before freezing or by weight decay, and are listed as non-trainable."""
    x, y = _blobs()
    model = _frozen_model(backend)
    opt = (
        backprop.SGD(0.05, momentum=0.9)
        if optimizer == "sgd-momentum"
        else backprop.AdamW(0.01, weight_decay=0.1)
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer=opt)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)  # momentum state now nonzero
    first, bn = model.layers[0], model.layers[1]
    first.trainable = False
    bn.trainable = False
    assert len(model.trainable_weights) == 4 and len(model.non_trainable_weights) == 6
    assert first.trainable_weights == [] and len(first.non_trainable_weights) == 2
    frozen = first.get_weights() + bn.get_weights()
    others = model.layers[2].get_weights()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for got, want in zip(first.get_weights() + bn.get_weights(), frozen, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(model.layers[2].get_weights()[0], others[0])
    # unfrozen, they train again
    first.trainable = True
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not np.array_equal(first.get_weights()[0], frozen[0])


def test_frozen_layers_in_a_captured_epoch():
    """On the emulated CuPy the recorded epoch keeps the frozen weights bit for bit too, and
    a change of `trainable` after a fit is not replayed from the old recording."""
    from backends import emulated_cupy

    x, y = _blobs(130)
    model = _frozen_model(emulated_cupy.emulated_cupy_backend())
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    X = model.backend.asarray(x)
    model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    model.layers[2].trainable = False
    frozen = model.layers[2].get_weights()
    first = model.layers[0].get_weights()
    model.fit(X, y, epochs=3, batch_size=16, verbose=0)
    (replay,) = model.trainer.train_function.replays.values()
    assert replay.mode == "graph"
    for got, want in zip(model.layers[2].get_weights(), frozen, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not np.array_equal(model.layers[0].get_weights()[0], first[0])


def test_freezing_a_nested_model(backend):
    """Keras's transfer-learning idiom: base.trainable = False, then train a head on it."""
    from backprop.layers import Dense

    x, y = _blobs()
    base = backprop.Sequential([Dense(8, "relu")], input_dim=6, backend=backend, seed=0)
    model = backprop.Sequential([base, Dense(3, "softmax")], seed=1)
    base.trainable = False
    assert model.layers[0].trainable_weights == [] and len(model.trainable_weights) == 2
    kept = base.get_weights()
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    for got, want in zip(base.get_weights(), kept, strict=True):
        np.testing.assert_array_equal(got, want)
    assert model.trainable and not base.trainable


def test_trainable_is_saved():
    from backprop.layers import Dense

    model = backprop.Sequential([Dense(3), Dense(2)], input_dim=4)
    model.layers[0].trainable = False
    model.compile(loss="mse")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save(f"{tmp}/m.keras")
        loaded = backprop.load_model(f"{tmp}/m.keras")
    assert [layer.trainable for layer in loaded.layers] == [False, True]


def test_batch_normalization_refuses_data_parallel_training():
    from backprop.distributed import Communicator

    class TwoRanks(Communicator):
        size = 2

    x, y = _blobs()
    model = _bn_model("numpy")
    model.compile(loss="sparse_categorical_crossentropy")
    before = model.get_weights()
    with pytest.raises(ValueError, match="BatchNormalization is not supported in data-parallel"):
        model.fit(x, y, epochs=1, verbose=0, distributed=TwoRanks())
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def test_summary_counts_trainable_and_non_trainable_parameters_with_keras_names():
    from backprop.layers import BatchNormalization, Dense, LeakyReLU, ReLU

    model = backprop.Sequential(
        [Dense(8, use_bias=False), BatchNormalization(), ReLU(), LeakyReLU(), Dense(3)],
        input_dim=4,
    )
    assert [layer.name for layer in model.layers] == [
        "dense",
        "batch_normalization",
        "re_lu",
        "leaky_re_lu",
        "dense_1",
    ]
    lines = []
    model.summary(print_fn=lines.append)
    # 4*8 + (8 gamma + 8 beta) + 8*3 + 3 = 75 trainable; 8 + 8 moving statistics
    assert "Total params: 91" in lines[0] and "Trainable params: 75" in lines[0]
    assert "Non-trainable params: 16" in lines[0]
    model.layers[0].trainable = False
    model.summary(print_fn=lines.append)
    assert "Trainable params: 43" in lines[1] and "Non-trainable params: 48" in lines[1]


# ===========================================================================================
# Issue 21, the API half (branch keras-api): 1-D targets, from_logits, submodules and seeds,
# regularizers, callback messages, metric objects, sample and class weights,
# predict_on_batch, learning_rate in the history, RMSprop's formula, missing layers.
# ===========================================================================================
def _binary_data(n=40, features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.float32)  # shape (n,): Keras's binary targets
    return x, y


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ---- item 1: 1-D targets for one-output models
@pytest.mark.parametrize(
    ("activation", "loss"), [("sigmoid", "binary_crossentropy"), (None, "mse")]
)
def test_one_dimensional_targets_equal_column_targets(backend, activation, loss):
    from backprop.layers import Dense

    x, y = _binary_data()
    models = []
    for targets in (y, y.reshape(-1, 1)):
        model = backprop.Sequential([Dense(4, "tanh"), Dense(1, activation)], 5, backend, seed=3)
        model.compile(loss=loss, optimizer="sgd", metrics=["accuracy"])
        history = model.fit(
            x[:30],
            targets[:30],
            epochs=2,
            batch_size=10,
            verbose=0,
            validation_data=(x[30:], targets[30:]),
        )
        batch = (model.train_on_batch(x[:8], targets[:8]), model.test_on_batch(x, targets))
        models.append((model, history.history, batch, model.evaluate(x, targets, verbose=0)))
    (one, h1, b1, e1), (_, h2, b2, e2) = models
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-6)
    np.testing.assert_allclose(b1, b2, rtol=1e-6)
    np.testing.assert_allclose(e1, e2, rtol=1e-6)
    # and the loss is the hand-computed one on the (n, 1) outputs
    a = one.predict(x)[:, 0]
    want = (
        np.mean(-(y * np.log(a) + (1 - y) * np.log(1 - a)))
        if loss != "mse"
        else np.mean((a - y) ** 2)
    )
    assert e1[0] == pytest.approx(want, rel=1e-4)


def test_one_dimensional_targets_need_one_output():
    from backprop.layers import Dense

    model = backprop.Sequential([Dense(2, "sigmoid")], 5, seed=0)
    model.compile(loss="binary_crossentropy")
    x, y = _binary_data()
    with pytest.raises(ValueError, match=r"y must have shape \(40, 2\)"):
        model.fit(x, y, verbose=0)


# ---- item 2: loss classes with from_logits
LOGIT_LOSSES = [
    ("SparseCategoricalCrossentropy", 3, "labels"),
    ("CategoricalCrossentropy", 3, "one_hot"),
    ("BinaryCrossentropy", 2, "binary"),
]


def _logit_data(kind, n_out, rng, n=7):
    x = rng.standard_normal((n, 4))
    if kind == "labels":
        return x, rng.integers(0, n_out, n)
    if kind == "one_hot":
        return x, np.eye(n_out)[rng.integers(0, n_out, n)]
    return x, rng.integers(0, 2, (n, n_out)).astype(float)


@pytest.mark.parametrize(("loss_name", "n_out", "kind"), LOGIT_LOSSES)
def test_from_logits_gradient_check(backend64, loss_name, n_out, kind):
    from backprop.layers import Dense

    rng = np.random.default_rng(2)
    model = backprop.Sequential(
        [Dense(5, "tanh"), Dense(n_out)], 4, backend64, dtype="float64", seed=0
    )
    x, y = _logit_data(kind, n_out, rng)
    loss = getattr(backprop.losses, loss_name)(from_logits=True)
    assert max(check_gradients(model, x, y, loss=loss)) < 1e-7
    # the fused closed form equals the general path (the loss gradient through linear)
    fused = model.gradients(x, y, loss=loss)
    general = model.gradients(x, y, loss=loss, shortcut=False)
    for f, g in zip(fused, general, strict=True):
        np.testing.assert_allclose(f, g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("loss_name", "n_out", "kind"), LOGIT_LOSSES)
def test_from_logits_equals_the_activation_inside_the_model(backend64, loss_name, n_out, kind):
    """A linear last layer with from_logits=True has the cost and the gradients of the same
    layer with softmax (sigmoid) and the plain loss; the cost is the hand-computed one."""
    from backprop.layers import Dense

    rng = np.random.default_rng(3)
    x, y = _logit_data(kind, n_out, rng)
    inside = "sigmoid" if kind == "binary" else "softmax"
    logits = backprop.Sequential([Dense(n_out)], 4, backend64, dtype="float64", seed=1)
    probs = backprop.Sequential([Dense(n_out, inside)], 4, backend64, dtype="float64", seed=1)
    cls = getattr(backprop.losses, loss_name)
    z = x @ logits.get_weights()[0] + logits.get_weights()[1]
    if kind == "binary":
        want = np.mean(np.log1p(np.exp(z)) - y * z)
    else:
        onehot = np.eye(n_out)[y] if kind == "labels" else y
        log_p = z - z.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        want = -np.mean(np.sum(onehot * log_p, axis=1))
    assert logits.cost(x, y, loss=cls(from_logits=True)) == pytest.approx(want, rel=1e-12)
    assert probs.cost(x, y, loss=cls()) == pytest.approx(want, rel=1e-6)  # clipped logs
    for a, b in zip(
        logits.gradients(x, y, loss=cls(from_logits=True)),
        probs.gradients(x, y, loss=cls()),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_from_logits_large_logits_stay_finite(backend):
    from backprop.layers import Dense

    model = backprop.Sequential([Dense(1)], 1, backend, seed=0)
    model.set_weights([np.array([[200.0]]), np.array([0.0])])
    loss = backprop.losses.BinaryCrossentropy(from_logits=True)
    # z = 200 and -200: softplus(200) - 200 = 0 exactly-ish; softplus(-200)... the cost of
    # the wrong side is 200
    cost = model.cost(np.array([[1.0], [-1.0]]), np.array([1.0, 1.0]), loss=loss)
    assert cost == pytest.approx(100.0, rel=1e-5)
    with pytest.raises(ValueError, match="from_logits must be True or False"):
        backprop.losses.CategoricalCrossentropy(from_logits="yes")


def test_from_logits_saved_and_loaded(tmp_path):
    from backprop.layers import Dense

    x, y = _binary_data()
    model = backprop.Sequential([Dense(1)], 5, seed=0)
    model.compile(loss=backprop.losses.BinaryCrossentropy(from_logits=True), optimizer="adam")
    model.fit(x, y, epochs=2, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = backprop.models.load_model(tmp_path / "m.keras")
    assert loaded.loss.from_logits is True
    assert loaded.evaluate(x, y, verbose=0) == pytest.approx(model.evaluate(x, y, verbose=0))


# ---- item 3: the submodules after `import backprop as keras`, seeds, clear_session
def test_import_backprop_as_keras_reaches_the_submodules():
    import backprop as keras

    assert keras.utils.to_categorical([1], 2).tolist() == [[0.0, 1.0]]
    assert keras.models.load_model is backprop.load_model
    assert keras.layers.Dense is backprop.Dense
    assert keras.metrics.Precision().name == "precision"
    assert keras.losses.BinaryCrossentropy(from_logits=True).from_logits
    assert keras.optimizers.RMSprop and keras.callbacks.EarlyStopping
    assert keras.regularizers.l2(1e-4).l2 == 1e-4
    assert keras.backend.clear_session() is None


def test_set_random_seed_makes_a_program_repeat(backend):
    import random

    from backprop.layers import Dense, Dropout
    from backprop.utils import set_random_seed

    def program():
        set_random_seed(42)
        draws = (random.random(), np.random.rand())  # noqa: NPY002  (the global one, on purpose)
        x, y = _binary_data()
        model = backprop.Sequential(
            [Dense(8, "relu"), Dropout(0.5), Dense(1, "sigmoid")], 5, backend=backend
        )
        model.compile(loss="binary_crossentropy", optimizer="adam")
        model.fit(x, y, epochs=2, batch_size=8, verbose=0)  # shuffled, dropped: both seeded
        other = backprop.Sequential([Dense(3)], 5, backend=backend)  # draws other weights
        return draws, model.get_weights(), other.get_weights()[0]

    (d1, w1, o1), (d2, w2, o2) = program(), program()
    assert d1 == d2
    for a, b in zip(w1, w2, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(o1, o2)
    assert not np.array_equal(w1[0][:, :3], o1)
    backprop.utils._model_seeds = None  # leave no seed behind for other tests
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        set_random_seed(-1)


# ---- item 4: regularizers
@pytest.mark.parametrize(
    "spec",
    [
        {"kernel_regularizer": "l2"},
        {"kernel_regularizer": backprop.regularizers.l1(0.03)},
        {"kernel_regularizer": backprop.regularizers.l1_l2(l1=0.02, l2=0.05)},
        {"bias_regularizer": backprop.regularizers.L2(0.1)},
        {"kernel_regularizer": backprop.regularizers.L1(0.01), "bias_regularizer": "l1"},
    ],
)
def test_regularizers_gradient_check(backend64, spec):
    from backprop.layers import Dense

    rng = np.random.default_rng(4)
    model = backprop.Sequential(
        [Dense(4, "tanh", **spec), Dense(3, "softmax", **spec)],
        5,
        backend64,
        dtype="float64",
        seed=0,
    )
    for layer in model.layers:  # biases away from 0, where |b| has no derivative
        w, b = layer.get_weights()
        layer.set_weights(
            [w, b + rng.uniform(0.1, 0.3, b.shape) * np.sign(rng.standard_normal(b.shape))]
        )
    x = rng.standard_normal((6, 5))
    y = np.eye(3)[rng.integers(0, 3, 6)]
    assert max(check_gradients(model, x, y, loss="categorical_crossentropy")) < 1e-7


def test_regularizer_penalty_is_in_the_reported_loss(backend):
    from backprop import regularizers
    from backprop.layers import Dense

    x, y = _binary_data()
    reg = regularizers.l1_l2(l1=0.01, l2=0.02)
    model = backprop.Sequential(
        [Dense(1, "sigmoid", kernel_regularizer=reg, bias_regularizer=regularizers.l2(0.5))],
        5,
        backend,
        seed=0,
    )
    model.set_weights([np.linspace(-1, 1, 5).reshape(5, 1), np.array([0.3])])
    model.compile(loss="binary_crossentropy", optimizer="sgd")
    W, b = model.get_weights()
    a = _sigmoid(x @ W + b)[:, 0]
    bce = np.mean(-(y * np.log(a) + (1 - y) * np.log(1 - a)))
    # 0.01 * sum|W| + 0.02 * sum W^2 + 0.5 * b^2 = 0.01 * 3 + 0.02 * 2.5 + 0.5 * 0.09
    penalty = 0.01 * 3.0 + 0.02 * 2.5 + 0.5 * 0.09
    assert reg(W) == pytest.approx(0.01 * 3.0 + 0.02 * 2.5)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(bce + penalty, rel=1e-5)
    history = model.fit(x, y, epochs=1, batch_size=40, shuffle=False, verbose=0)
    assert history.history["loss"][0] == pytest.approx(bce + penalty, rel=1e-5)


def test_regularizer_config_and_the_l2_shorthand(tmp_path):
    from backprop import regularizers
    from backprop.layers import Dense

    reg = regularizers.L1L2(l1=1e-5, l2=1e-4)
    assert reg.get_config() == {"l1": 1e-5, "l2": 1e-4}
    assert regularizers.L1L2.from_config(reg.get_config()) == reg
    assert regularizers.get("l2") == regularizers.L2(0.01)  # Keras's default strength
    x, y = _binary_data()
    short = backprop.Sequential([Dense(3, "relu", l2=0.01), Dense(1, "sigmoid")], 5, seed=0)
    spelled = backprop.Sequential(
        [Dense(3, "relu", kernel_regularizer=regularizers.l2(0.01)), Dense(1, "sigmoid")], 5, seed=0
    )
    assert short.cost(x, y, "binary_crossentropy") == spelled.cost(x, y, "binary_crossentropy")
    spelled.compile(loss="binary_crossentropy")
    spelled.save(tmp_path / "m.keras")
    loaded = backprop.models.load_model(tmp_path / "m.keras")
    assert loaded.layers[0].kernel_regularizer == regularizers.L2(0.01)
    assert loaded.cost(x, y) == pytest.approx(spelled.cost(x, y), rel=1e-6)
    with pytest.raises(ValueError, match="give l2 or kernel_regularizer, not both"):
        Dense(3, l2=0.1, kernel_regularizer="l1")
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0"):
        regularizers.l2(-1.0)
    with pytest.raises(ValueError, match="unknown regularizer 'l3'"):
        Dense(3, kernel_regularizer="l3")


# ---- item 6: verbose callbacks print Keras's messages
def test_callback_messages_with_verbose(backend, tmp_path, capsys):
    from backprop.callbacks import EarlyStopping, ModelCheckpoint, ReduceLROnPlateau

    values = iter([0.5, 0.4, 0.45, 0.6, 0.7, 0.8])

    class Feed(backprop.Callback):  # a made-up val_loss, so the messages are known
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = next(values)

    x, y = _binary_data()
    model = backprop.Sequential([backprop.Dense(1, "sigmoid")], 5, backend, seed=0)
    model.compile(loss="binary_crossentropy", optimizer=backprop.SGD(0.1))
    path = str(tmp_path / "best.keras")
    model.fit(
        x,
        y,
        epochs=6,
        verbose=0,
        validation_split=0.25,
        callbacks=[
            Feed(),
            ModelCheckpoint(path, save_best_only=True, verbose=1),
            ReduceLROnPlateau(factor=0.5, patience=1, verbose=1),
            EarlyStopping(patience=2, restore_best_weights=True, verbose=1),
        ],
    )
    out = capsys.readouterr().out
    assert f"\nEpoch 1: val_loss improved from None to 0.50000, saving model to {path}\n" in out
    assert f"\nEpoch 2: val_loss improved from 0.50000 to 0.40000, saving model to {path}\n" in out
    assert "\nEpoch 3: val_loss did not improve from 0.40000\n" in out
    assert "\nEpoch 3: ReduceLROnPlateau reducing learning rate to 0.05.\n" in out
    assert "\nEpoch 4: ReduceLROnPlateau reducing learning rate to 0.025.\n" in out
    assert "Epoch 4: early stopping\n" in out
    assert "Restoring model weights from the end of the best epoch: 2.\n" in out
    model.fit(x, y, epochs=1, verbose=0, callbacks=[EarlyStopping(monitor="loss")])
    assert capsys.readouterr().out == ""  # verbose=0, the default: silent
    with pytest.raises(ValueError, match="verbose must be 0"):
        EarlyStopping(verbose="yes")


# ---- item 7: metric objects
def _metric_logs(backend, metrics, a, y, loss="binary_crossentropy"):
    """evaluate's logs for outputs `a` exactly (a one-layer linear model fed the identity)."""
    from backprop.layers import Dense

    n_out = a.shape[1]
    model = backprop.Sequential([Dense(n_out)], n_out, backend, seed=0)
    model.set_weights([np.eye(n_out), np.zeros(n_out)])
    model.compile(loss=loss, metrics=metrics)
    return model.evaluate(a.astype(np.float32), y, return_dict=True)


def test_precision_recall_auc_against_hand_computed(backend):
    from backprop.metrics import AUC, BinaryAccuracy, Precision, Recall

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 200).astype(np.float32)
    a = np.clip(0.35 * y + rng.uniform(0, 0.65, 200), 0, 1).reshape(-1, 1)
    logs = _metric_logs(
        backend,
        [Precision(), Recall(), AUC(), BinaryAccuracy(), Precision(thresholds=0.7, name="p70")],
        np.round(a, 3),
        y,
    )
    a = np.round(a, 3).astype(np.float32)[:, 0]
    assert list(logs) == ["loss", "precision", "recall", "auc", "binary_accuracy", "p70"]
    predicted = a > 0.5
    tp = np.sum(predicted & (y == 1))
    assert logs["precision"] == pytest.approx(tp / predicted.sum(), rel=1e-6)
    assert logs["recall"] == pytest.approx(tp / (y == 1).sum(), rel=1e-6)
    assert logs["p70"] == pytest.approx(np.sum((a > 0.7) & (y == 1)) / np.sum(a > 0.7), rel=1e-6)
    assert logs["binary_accuracy"] == pytest.approx(np.mean(predicted == (y == 1)), rel=1e-6)
    # the exact AUC (Mann-Whitney: the fraction of positive-negative pairs ranked right,
    # ties half), which scikit-learn's roc_auc_score gives; Keras's 200 buckets come close
    pos, neg = a[y == 1], a[y == 0]
    exact = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert logs["auc"] == pytest.approx(exact, abs=5e-3)
    # and exactly Keras's bucketed trapezoid, computed by hand
    t = np.array([-1e-7, *[(i + 1) / 199 for i in range(198)], 1 + 1e-7], dtype=np.float32)
    tpr = ((a[:, None] > t) & (y[:, None] == 1)).sum(0) / (y == 1).sum()
    fpr = ((a[:, None] > t) & (y[:, None] == 0)).sum(0) / (y == 0).sum()
    bucketed = np.sum((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2)
    assert logs["auc"] == pytest.approx(bucketed, rel=1e-5)


def test_precision_with_no_predicted_positives_is_zero(backend):
    from backprop.metrics import Precision, Recall

    logs = _metric_logs(backend, [Precision(), Recall()], np.full((4, 1), 0.2), np.ones(4))
    assert logs["precision"] == 0.0 and logs["recall"] == 0.0


def test_accuracy_objects_and_their_history_names(backend):
    from backprop.layers import Dense
    from backprop.metrics import BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy

    rng = np.random.default_rng(6)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    model = backprop.Sequential([Dense(3)], 4, backend, seed=0)
    model.compile(
        loss=backprop.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer="adam",
        metrics=[SparseCategoricalAccuracy()],
    )
    history = model.fit(x, labels, epochs=2, verbose=0, validation_data=(x, labels))
    assert set(history.history) == {
        "loss",
        "sparse_categorical_accuracy",
        "val_loss",
        "val_sparse_categorical_accuracy",
    }
    z = model.predict(x)
    logs = model.evaluate(x, labels, return_dict=True)
    assert logs["sparse_categorical_accuracy"] == pytest.approx(np.mean(z.argmax(1) == labels))
    # logits of a binary classifier: BinaryAccuracy(threshold=0.0), as the TF tutorials write
    onehot = np.eye(3, dtype=np.float32)[labels]
    got = _metric_logs(backend, [CategoricalAccuracy()], z, onehot, "categorical_crossentropy")
    assert got["categorical_accuracy"] == pytest.approx(np.mean(z.argmax(1) == labels))
    y = (z[:, :1] > 0).astype(np.float32)[:, 0]
    y[:5] = 1 - y[:5]  # five wrong
    logs = _metric_logs(backend, [BinaryAccuracy(threshold=0.0)], z[:, :1], y)
    assert logs["binary_accuracy"] == pytest.approx(25 / 30)


def test_metric_objects_saved_and_loaded(tmp_path):
    from backprop.metrics import AUC, BinaryAccuracy, Precision

    x, y = _binary_data()
    model = backprop.Sequential([backprop.Dense(1, "sigmoid")], 5, seed=0)
    metrics = [BinaryAccuracy(threshold=0.3), Precision(name="prec"), AUC(num_thresholds=50)]
    model.compile(loss="binary_crossentropy", metrics=metrics)
    model.save(tmp_path / "m.keras")
    loaded = backprop.models.load_model(tmp_path / "m.keras")
    assert loaded.evaluate(x, y, return_dict=True) == pytest.approx(
        model.evaluate(x, y, return_dict=True)
    )
    assert loaded.trainer.metrics[0].threshold == 0.3


# ---- item 8: sample_weight and class_weight
def _linear_regression(backend, lr=0.1):
    from backprop.layers import Dense

    model = backprop.Sequential([Dense(1)], 2, backend, seed=0)
    model.set_weights([np.array([[0.5], [-0.25]]), np.array([0.1])])
    model.compile(loss="mse", optimizer=backprop.SGD(lr))
    return model


def test_sample_weight_in_train_on_batch_hand_worked(backend):
    # x = [[1, 2], [3, -1], [0, 1]], W = [0.5, -0.25], b = 0.1: a = [0.1, 1.85, -0.15]
    # y = [1, 1, 0]: a - y = [-0.9, 0.85, -0.15]; weights w = [2, 0.5, 1]
    # cost = sum w (a - y)^2 / 3 = (2 * 0.81 + 0.5 * 0.7225 + 0.0225) / 3 = 0.6679167
    # dW = 2 / 3 * sum w (a - y) x = 2 / 3 * [-1.8 + 1.275, -3.6 - 0.425 - 0.15]
    #    = [-0.35, -2.7833333]; db = 2 / 3 * (-1.8 + 0.425 - 0.15) = -1.0166667
    x = np.array([[1.0, 2.0], [3.0, -1.0], [0.0, 1.0]], dtype=np.float32)
    y = np.array([1.0, 1.0, 0.0], dtype=np.float32)
    w = np.array([2.0, 0.5, 1.0])
    model = _linear_regression(backend)
    assert model.test_on_batch(x, y, sample_weight=w) == pytest.approx(0.6679167, rel=1e-6)
    assert model.evaluate(x, y, sample_weight=w, verbose=0) == pytest.approx(0.6679167, rel=1e-6)
    assert model.train_on_batch(x, y, sample_weight=w) == pytest.approx(0.6679167, rel=1e-6)
    W, b = model.get_weights()
    np.testing.assert_allclose(W[:, 0], [0.5 + 0.035, -0.25 + 0.27833333], rtol=1e-5)
    np.testing.assert_allclose(b, [0.1 + 0.10166667], rtol=1e-5)


def test_class_weight_is_a_sample_weight_per_class(backend):
    # binary 1-D targets: class 1 weighs 3, class 0 (missing from the dict) 1, as in Keras
    x, y = _binary_data(n=24)
    weights = np.where(y == 1, 3.0, 1.0)
    by_class, by_sample = _binary_model(backend), _binary_model(backend)
    h1 = by_class.fit(x, y, epochs=2, batch_size=8, verbose=0, class_weight={1: 3.0})
    h2 = by_sample.fit(x, y, epochs=2, batch_size=8, verbose=0, sample_weight=weights)
    np.testing.assert_allclose(h1.history["loss"], h2.history["loss"], rtol=1e-6)
    for a, b in zip(by_class.get_weights(), by_sample.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    # with one-hot targets the class is the argmax
    onehot = np.eye(2, dtype=np.float32)[y.astype(int)]
    two = backprop.Sequential([backprop.Dense(2, "softmax")], 5, backend, seed=0)
    two.compile(loss="categorical_crossentropy", optimizer="sgd")
    logs = two.train_on_batch(x, onehot, class_weight={0: 0.0, 1: 2.0}, return_dict=True)
    a = two.predict(x)  # after the step; the loss was before it: check against a test batch
    assert logs["loss"] > 0 and a.shape == (24, 2)
    before = two.test_on_batch(x, onehot, sample_weight=np.where(y == 1, 2.0, 0.0))
    p = a[np.arange(24), y.astype(int)]
    assert before == pytest.approx(np.mean(np.where(y == 1, 2.0, 0.0) * -np.log(p)), rel=1e-5)


def _binary_model(backend):
    model = backprop.Sequential(
        [backprop.Dense(4, "tanh"), backprop.Dense(1, "sigmoid")], 5, backend, seed=0
    )
    model.compile(loss="binary_crossentropy", optimizer=backprop.SGD(0.1))
    return model


def test_weighted_fit_loss_is_the_weighted_mean_and_validation_keeps_sample_weights(backend):
    x, y = _binary_data(n=30)
    w = np.linspace(0.5, 2.0, 30)
    model = _binary_model(backend)
    before = model.evaluate(x[:20], y[:20], sample_weight=w[:20], verbose=0)
    val_before = model.evaluate(x[20:], y[20:], sample_weight=w[20:], verbose=0)
    history = model.fit(
        x,
        y,
        epochs=1,
        batch_size=20,
        shuffle=False,
        verbose=0,
        sample_weight=w,
        class_weight={0: 5.0},
        validation_split=1 / 3,
    )
    # full batch, one step: the epoch loss is the cost before the step, weighted by sample
    # and class weights; validation keeps the sample weights only (as Keras)
    cw = np.where(y[:20] == 0, 5.0, 1.0)
    assert history.history["loss"][0] == pytest.approx(
        model_cost_before(x[:20], y[:20], w[:20] * cw, backend), rel=1e-5
    )
    assert before != pytest.approx(history.history["loss"][0])
    after = model.evaluate(x[20:], y[20:], sample_weight=w[20:], verbose=0)
    assert history.history["val_loss"][0] == pytest.approx(after, rel=1e-6)
    assert val_before != pytest.approx(after)


def model_cost_before(x, y, weights, backend):
    model = _binary_model(backend)
    a = model.predict(x)[:, 0]
    return np.mean(weights * -(y * np.log(a) + (1 - y) * np.log(1 - a)))


def test_weighted_fit_captured_equals_eager(digits):
    from backends import emulated_cupy

    x, y = digits[0][:256], digits[1][:256]
    w = np.random.default_rng(7).uniform(0.2, 3.0, 256)
    results = []
    for capture in (True, False):
        model = _dropout_mlp(emulated_cupy.emulated_cupy_backend())
        history = model.fit(
            x,
            y,
            epochs=2,
            batch_size=32,
            verbose=0,
            capture=capture,
            sample_weight=w,
            class_weight={3: 2.0},
        )
        results.append((history.history["loss"], model.get_weights()))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-5)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_bad_weights_are_refused():
    x, y = _binary_data()
    model = _binary_model("numpy")
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(40,\)"):
        model.fit(x, y, verbose=0, sample_weight=np.ones(39))
    with pytest.raises(ValueError, match="sample_weight must hold finite numbers >= 0"):
        model.evaluate(x, y, sample_weight=-np.ones(40))
    with pytest.raises(ValueError, match="class_weight must be a dict"):
        model.fit(x, y, verbose=0, class_weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"class_weight\[1\] must be a finite number >= 0"):
        model.fit(x, y, verbose=0, class_weight={1: float("nan")})


# ---- item 11: predict_on_batch (test_on_batch: above)
def test_predict_on_batch(backend):
    x, _ = _binary_data()
    model = _binary_model(backend)
    out = model.predict_on_batch(x)
    assert isinstance(out, np.ndarray) and out.shape == (40, 1)
    np.testing.assert_allclose(out, model.predict(x, batch_size=7), rtol=1e-6)


# ---- item 12: learning_rate in the history only with a learning-rate callback; RMSprop
def test_learning_rate_is_logged_only_by_learning_rate_callbacks(digits):
    from backprop.callbacks import LearningRateScheduler, ReduceLROnPlateau

    x, y = digits[0][:100], digits[1][:100]
    assert "learning_rate" not in _small().fit(x, y, epochs=2, verbose=0).history
    history = _small().fit(
        x, y, epochs=2, verbose=0, callbacks=[LearningRateScheduler(lambda e: 0.1 / (e + 1))]
    )
    assert history.history["learning_rate"] == pytest.approx([0.1, 0.05])
    history = _small(lr=0.04).fit(
        x,
        y,
        epochs=3,
        verbose=0,
        callbacks=[ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=10.0)],
    )
    # logged as the epoch trained (Keras logs before reducing): epoch 1 improves on inf
    assert history.history["learning_rate"] == pytest.approx([0.04, 0.04, 0.02])


def test_rmsprop_epsilon_inside_the_square_root(backend):
    # one weight, x = 1, y = 0, mse: g = 2 (a - y) = 2 * 0.5 = 1 for W = 0.5, b = 0
    # ms = (1 - 0.9) * 1 = 0.1; step = 0.1 * 1 / sqrt(0.1 + 0.15) = 0.2 (Keras's form;
    # with epsilon outside it would be 0.1 / (sqrt(0.1) + 0.15) = 0.2145)
    model = backprop.Sequential([backprop.Dense(1)], 1, backend, seed=0)
    model.set_weights([np.array([[0.5]]), np.array([0.0])])
    model.compile(loss="mse", optimizer=backprop.RMSprop(learning_rate=0.1, epsilon=0.15))
    model.train_on_batch(np.ones((1, 1)), np.zeros(1))
    W, b = model.get_weights()
    assert W[0, 0] == pytest.approx(0.3, rel=1e-6) and b[0] == pytest.approx(-0.2, rel=1e-6)


# ---- importing a layer this library does not have
def test_importing_a_missing_layer_names_the_layers_there_are():
    with pytest.raises(
        ImportError, match=r"no layer 'Conv2D'.*Activation, BatchNormalization, Dense, Dropout"
    ):
        from backprop.layers import Conv2D  # noqa: F401
    with pytest.raises(AttributeError):
        backprop.layers.not_a_layer  # noqa: B018


# ---- the two examples in these idioms, run as programs
def _run_example(name, backend_name, tmp_path, *args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from backends import backend_unavailable_reason

    if backend_unavailable_reason(backend_name):
        pytest.skip(backend_unavailable_reason(backend_name))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(root / "examples" / name), *args],
        # this tree's packages, whatever is installed: the script's own folder comes first
        env=dict(os.environ, BACKPROP_BACKEND=backend_name, PYTHONPATH=str(root)),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# numpy trains as the program does; strict (several times slower) a few epochs, to run every
# line of the program on a backend that refuses NumPy calls on its arrays
@pytest.mark.parametrize(
    ("backend_name", "epochs", "floor"), [("numpy", 20, 0.75), ("strict", 3, 0.6)]
)
def test_keras_binary_logits_example(backend_name, epochs, floor, tmp_path):
    """examples/keras_binary_logits.py: 1-D targets, from_logits, metric objects, verbose
    early stopping; above chance (0.5) by far (Keras's figures: README)."""
    out = _run_example("keras_binary_logits.py", backend_name, tmp_path, str(epochs), "0")
    assert "history keys: ['auc', 'binary_accuracy', 'loss', 'val_auc'" in out
    assert float(out.split("test accuracy: ")[1]) > floor
    assert float(out.split("test auc: ")[1].split()[0]) > floor


@pytest.mark.parametrize(
    ("backend_name", "epochs", "ceiling"), [("numpy", 80, 3.0), ("strict", 40, 3.4)]
)
def test_keras_kfold_regression_example(backend_name, epochs, ceiling, tmp_path):
    """examples/keras_kfold_regression.py: K-fold, kernel_regularizer, 1-D regression
    targets. Predicting the training mean gives a test MAE of 3.71 on this data."""
    out = _run_example("keras_kfold_regression.py", backend_name, tmp_path, str(epochs), "0")
    assert len(out.split("fold MAEs: ")[1].split("\n")[0].split()) == 4
    assert float(out.split("mean validation MAE: ")[1].split()[0]) < ceiling
    assert float(out.split("test MAE: ")[1]) < ceiling
