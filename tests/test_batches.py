"""An epoch's data pass (training.Batches), the Trainer's steps and inference in batches.

A fit's epoch must report, and train to, what its batches stepped one at a time by
`train_on_batch` give: the loss (L2 term and sample weights included) and the metrics as the
size-weighted means of the batches' figures, and the same weights at its end. That
holds in every way a pass runs: eagerly batch by batch, in chunks of recorded steps (the CPU's
windows of row indices), and in chunks whose rows are gathered at once (CuPy's way, run here
over the NumPy stand-in for CuPy). evaluate and predict forward their rows in batches of
`batch_size`, each row once."""

from __future__ import annotations

import copy

import mpi_worker
import numpy as np
import pytest
from test_threaded_ranks import on_ranks

from backends import emulated_cupy as ce
from backprop import SGD, Adam, BatchNormalization, Callback, Dense, Sequential, regularizers
from backprop.training import CHUNK_STEPS

FEATURES, CLASSES = 4, 3
TOL = 1e-12  # float64 throughout: the two ways do the same arithmetic in another order


def _problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES))
    y = np.eye(CLASSES)[rng.integers(0, CLASSES, n)]
    return x, y, rng.uniform(0.5, 2.0, n)


def _model(backend, optimizer=None) -> Sequential:
    model = Sequential(
        [Dense(5, "tanh", l2=0.01), Dense(CLASSES, "softmax")],
        input_dim=FEATURES,
        backend=backend,
        dtype="float64",
        seed=2,
    )
    # Adam: every step reads its own bias-corrected step size from the optimizer's step table
    model.compile(
        loss="categorical_crossentropy",
        optimizer=optimizer or Adam(0.05),
        metrics=["accuracy"],
    )
    return model


def _stepped_by_hand(model, x, y, w, orders, epochs, batch_size):
    """Each epoch's loss and accuracy from train_on_batch over the fit's batches: the means
    of the batches' figures weighted by their sizes."""
    n, figures = len(x), []
    for _ in range(epochs):
        order = np.arange(n) if orders is None else orders.permutation(n)
        total = np.zeros(2)
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            weights = None if w is None else w[rows]
            loss, accuracy = model.train_on_batch(x[rows], y[rows], sample_weight=weights)
            total += len(rows) * np.array([loss, accuracy])
        figures.append(total / n)
    return np.array(figures)


def _chunk_shapes(n: int, batch_size: int) -> set[tuple[int, int]]:
    """(steps, rows) of each chunk of a pass: CHUNK_STEPS steps each, the last one fewer."""
    steps = -(-n // batch_size)
    return {
        (min(CHUNK_STEPS, steps - first), min(CHUNK_STEPS * batch_size, n - first * batch_size))
        for first in range(0, steps, CHUNK_STEPS)
    }


# (backend, capture, shuffle, sample weights, samples, batch size)
WAYS = {
    # batch by batch, each gathered on its own; the last batch has one sample
    "eager-shuffled-weighted": ("numpy", False, True, True, 11, 2),
    "eager-in-order": ("numpy", False, False, False, 11, 2),
    # recorded chunks of 64 steps over windows of row indices: 66 steps, so a second chunk
    # of two steps whose last batch is partial
    "recorded-shuffled-weighted": ("numpy", True, True, True, 131, 2),
    "recorded-in-order": ("numpy", True, False, False, 11, 2),
    # the smallest pass that runs in chunks: two steps
    "recorded-two-steps": ("numpy", True, True, False, 5, 3),
    # chunks whose X rows are gathered at once (CupyBackend, over the NumPy stand-in)
    "gathered-in-order-weighted": ("emulated", True, False, True, 11, 2),
    "gathered-shuffled": ("emulated", True, True, False, 11, 2),
}


@pytest.mark.parametrize("way", list(WAYS))
def test_an_epoch_reports_and_trains_as_its_batches_stepped_by_hand(way):
    name, capture, shuffle, weighted, n, batch_size = WAYS[way]
    backend = ce.emulated_cupy_backend("float64") if name == "emulated" else name
    x, y, w = _problem(n)
    w = w if weighted else None
    fitted, stepped = _model(backend), _model(backend)
    orders = copy.deepcopy(fitted.shuffle_rng) if shuffle else None  # the fit's shuffles
    X = fitted.backend.asarray(x)  # the caller's device array: the fit keeps its recordings
    epochs = 3
    history = fitted.fit(
        X,
        y,
        epochs=epochs,
        batch_size=batch_size,
        shuffle=shuffle,
        capture=capture,
        sample_weight=w,
        verbose=0,
    ).history
    expected = _stepped_by_hand(stepped, x, y, w, orders, epochs, batch_size)
    np.testing.assert_allclose(history["loss"], expected[:, 0], rtol=TOL)
    np.testing.assert_allclose(history["accuracy"], expected[:, 1], rtol=TOL)
    for got, want in zip(fitted.get_weights(), stepped.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)
    replays = fitted.trainer.train_function.replays
    if capture:  # every chunk's shape was recorded once and replayed after that
        assert set(replays) == _chunk_shapes(n, batch_size)
        assert {r.mode for r in replays.values()} == {"graph" if name == "emulated" else "tape"}
        assert all(r.launches == epochs for r in replays.values())
    else:
        assert replays == {}


def _batch_sizes(model, monkeypatch) -> list[int]:
    """The number of rows of each forward pass the model's network makes from now on."""
    sizes: list[int] = []
    forward = model.network.forward

    def counted(X, out=None, training=False):
        sizes.append(int(X.shape[0]))
        return forward(X, out=out, training=training)

    monkeypatch.setattr(model.network, "forward", counted)
    return sizes


def test_evaluate_forwards_each_row_once_in_batches_and_reports_the_whole_sets_figures(
    monkeypatch,
):
    """10 samples in batches of 3: the loss (weighted, L2 term included) and the accuracy
    of the whole set, as one batch of all 10 gives them."""
    x, y, w = _problem(10)
    model = _model("numpy")
    whole = model.test_on_batch(x, y, sample_weight=w, return_dict=True)
    sizes = _batch_sizes(model, monkeypatch)
    got = model.evaluate(x, y, batch_size=3, sample_weight=w, return_dict=True)
    assert sizes == [3, 3, 3, 1]
    assert got.keys() == whole.keys() == {"loss", "accuracy"}
    for key, value in whole.items():
        assert got[key] == pytest.approx(value, rel=TOL)
    # the Trainer's own evaluate (fit's validation) takes batch_size=None: all rows at once
    be = model.backend
    X, Y, S = be.asarray(x), be.asarray(y), be.asarray(w.reshape(-1, 1))
    sizes.clear()
    got = model.trainer.evaluate(X, Y, None, weights=S)
    assert sizes == [10]
    for key, value in whole.items():
        assert got[key] == pytest.approx(value, rel=TOL)


def test_predict_forwards_each_row_once_in_batches(monkeypatch):
    x, _, _ = _problem(10)
    model = _model("numpy")
    sizes = _batch_sizes(model, monkeypatch)
    whole = model.predict_on_batch(x)
    assert sizes == [10]
    sizes.clear()
    got = model.predict(x, batch_size=3)
    assert sizes == [3, 3, 3, 1]
    assert got.shape == (10, CLASSES)
    np.testing.assert_allclose(got, whole, rtol=TOL, atol=TOL)


def test_a_refit_on_the_same_device_x_trains_on_its_new_targets_and_leaves_the_old_alone():
    """The second fit on the caller's device x reuses the first one's pass (and recordings)
    with new targets and sample weights: it trains as a model that never saw the first
    pass, and the first fit's arrays stay as the caller gave them."""
    x, y1, w1 = _problem(11, seed=0)
    _, y2, w2 = _problem(11, seed=1)
    given = [a.copy() for a in (y1, w1, y2, w2)]
    model, twin = _model("numpy"), _model("numpy")
    X = model.backend.asarray(x)
    fits = [(y1, w1), (y2, w2)]
    histories, functions = [], []
    for y, w in fits:
        histories.append(model.fit(X, y, epochs=2, batch_size=4, sample_weight=w, verbose=0))
        functions.append(model.trainer.train_function)
    assert functions[1] is functions[0]
    for before, now in zip(given, (y1, w1, y2, w2), strict=True):
        np.testing.assert_array_equal(now, before)
    for (y, w), history in zip(fits, histories, strict=True):
        # a new x each time: a new pass
        expected = twin.fit(x.copy(), y, epochs=2, batch_size=4, sample_weight=w, verbose=0)
        for key in ("loss", "accuracy"):
            np.testing.assert_allclose(history.history[key], expected.history[key], rtol=TOL)
    for got, want in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("capture", [False, True], ids=["eager", "recorded"])
def test_a_regularizer_set_between_fits_counts_in_the_next_fits_loss(capture):
    """A kernel regularizer added after a fit (then taken away) on the same device x: the
    next fit reports the loss with its term (then without), as a new model with the same
    weights and regularizer does."""
    x, y, _ = _problem(11)

    def plain(weights=None, regularizer=None):
        model = Sequential(
            [Dense(5, "tanh"), Dense(CLASSES, "softmax")],
            input_dim=FEATURES,
            dtype="float64",
            seed=2,
        )
        model.compile(loss="categorical_crossentropy", optimizer=SGD(0.1))  # no state
        if weights is not None:
            model.set_weights(weights)
        model.layers[0].kernel_regularizer = regularizer
        return model

    model = plain()
    X = model.backend.asarray(x)
    fit = {"epochs": 2, "batch_size": 4, "shuffle": False, "verbose": 0, "capture": capture}
    model.fit(X, y, **fit)
    for regularizer in (regularizers.L2(0.1), None):
        twin = plain(model.get_weights(), regularizer)
        model.layers[0].kernel_regularizer = regularizer
        got = model.fit(X, y, **fit).history["loss"]
        np.testing.assert_allclose(got, twin.fit(x.copy(), y, **fit).history["loss"], rtol=TOL)
        for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("setting, value", [("momentum", 0.5), ("global_clipnorm", 0.05)])
def test_an_optimizer_setting_changed_between_fits_reaches_the_recorded_steps(setting, value):
    """A recording holds the optimizer's settings (not its learning rate) as constants: set
    between two fits on the same device x, the second fit records its steps anew and trains
    as eager steps with the new setting do."""
    x, y, _ = _problem(11)
    recorded, eager = (
        _model("numpy", SGD(0.1, momentum=0.9, global_clipnorm=1.0)) for _ in range(2)
    )
    X = recorded.backend.asarray(x)
    histories = []
    for model, capture in ((recorded, True), (eager, False)):
        fit = {"epochs": 3, "batch_size": 4, "verbose": 0, "capture": capture}
        model.fit(X if capture else x.copy(), y, **fit)
        setattr(model.optimizer, setting, value)
        histories.append(model.fit(X if capture else x.copy(), y, **fit).history)
    assert {r.mode for r in recorded.trainer.train_function.replays.values()} == {"tape"}
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(histories[0][key], histories[1][key], rtol=TOL)
    for a, b in zip(recorded.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


def test_a_training_step_runs_the_layers_in_training_mode():
    """BatchNormalization in train_on_batch normalizes with the batch's statistics and moves
    its moving mean and variance toward them: momentum 0.9, from 0 and 1, by a tenth of the
    way to the batch's mean and (biased) variance of its input x W + b."""
    x, y, _ = _problem(8)
    model = Sequential(
        [Dense(5), BatchNormalization(momentum=0.9), Dense(CLASSES, "softmax")],
        input_dim=FEATURES,
        dtype="float64",
        seed=2,
    )
    model.compile(loss="categorical_crossentropy", optimizer=SGD(0.1))
    W, b = model.layers[0].get_weights()
    z = x @ W + b
    model.train_on_batch(x, y)
    *_, moving_mean, moving_variance = model.layers[1].get_weights()
    np.testing.assert_allclose(moving_mean, 0.1 * z.mean(axis=0), rtol=TOL)
    np.testing.assert_allclose(moving_variance, 0.9 + 0.1 * z.var(axis=0), rtol=TOL)


def test_train_on_batch_after_a_data_parallel_fit_steps_as_one_process():
    """After a data-parallel fit, every rank giving the same batch to train_on_batch (as they
    give fit the same data) takes the step one process takes on it, and reports its loss."""
    x, y, _, _ = mpi_worker.problem("float64")

    def work(comm):
        model = mpi_worker.model("float64")
        mpi_worker.train(model, "float64", comm)
        return model.train_on_batch(x[:10], y[:10]), model.get_weights()

    results, errors, _ = on_ranks(work)
    assert errors == [None, None]
    reference = mpi_worker.model("float64")
    mpi_worker.train(reference, "float64", distributed=False)
    loss = reference.train_on_batch(x[:10], y[:10])
    for got, weights in results:
        assert got == pytest.approx(loss, rel=TOL)
        for a, b in zip(weights, reference.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


def test_a_batch_hook_sees_the_mean_loss_of_the_samples_seen_so_far_in_the_epoch():
    """Keras's running loss: after batch k, the mean over the epoch's batches 0..k of their
    losses (L2 term and weights included), weighted by their sizes."""
    x, y, w = _problem(11)
    fitted, stepped = _model("numpy"), _model("numpy")
    orders = copy.deepcopy(fitted.shuffle_rng)
    running: list[float] = []

    class Running(Callback):
        batch_logs = True

        def on_train_batch_end(self, batch, logs=None):
            running.append(logs["loss"])

    fitted.fit(x, y, epochs=2, batch_size=2, sample_weight=w, callbacks=[Running()], verbose=0)
    expected = []
    for _ in range(2):
        order, total = orders.permutation(11), 0.0
        for start in range(0, 11, 2):
            rows = order[start : start + 2]
            loss, _ = stepped.train_on_batch(x[rows], y[rows], sample_weight=w[rows])
            total += len(rows) * loss
            expected.append(total / min(start + 2, 11))
    np.testing.assert_allclose(running, expected, rtol=TOL)


def test_data_parallel_ranks_step_their_shards_where_the_backend_gathers_chunks():
    """CupyBackend (over the NumPy stand-in) gathers a chunk's rows at once when a pass runs
    in chunks; data-parallel, each rank steps its shard of each batch, batch by batch, and
    the ranks train as one process does."""
    x, y, _ = _problem(11)
    fit = {"epochs": 2, "batch_size": 4, "capture": False, "verbose": 0}

    def work(comm):
        model = _model(ce.emulated_cupy_backend("float64"), SGD(0.1))
        history = model.fit(x, y, distributed=comm, **fit)
        return history.history, model.get_weights()

    results, errors, _ = on_ranks(work)
    assert errors == [None, None]
    reference = _model(ce.emulated_cupy_backend("float64"), SGD(0.1))
    expected = reference.fit(x, y, **fit).history
    for history, weights in results:
        for key in ("loss", "accuracy"):
            np.testing.assert_allclose(history[key], expected[key], rtol=TOL)
        for a, b in zip(weights, reference.get_weights(), strict=True):
            np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL)


def test_every_failing_rank_is_named_in_the_error_every_rank_raises():
    def work(comm):
        model = mpi_worker.model("float64")
        mpi_worker.fail_third_backward(model)
        return mpi_worker.train(model, "float64", comm)

    _, errors, _ = on_ranks(work)
    failure = "ValueError: injected failure in the third batch"
    message = (
        f"data-parallel training stopped on every rank because rank 0: {failure}; rank 1: {failure}"
    )
    assert [str(error) for error in errors] == [message, message]
