"""The captured training step, verified without a GPU on the emulated CuPy
(backends/emulated_cupy.py), which records what a stream capture issues, replays it on
Graph.launch, and raises on what a real capture forbids."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from backends import emulated_cupy as ce
from backprop import SGD, Adagrad, Adam, AdamW, Dense, RMSprop, Sequential
from backprop.optimizers import ExponentialDecay
from bench.launches import count

OPTIMIZERS = {
    "sgd": lambda: SGD(0.1),
    "momentum": lambda: SGD(0.1, momentum=0.9),
    "nesterov": lambda: SGD(0.05, momentum=0.9, nesterov=True),
    "adagrad": lambda: Adagrad(0.05),
    "rmsprop": lambda: RMSprop(0.01),
    "adam": lambda: Adam(0.01),
    "adamw-clip": lambda: AdamW(0.01, weight_decay=0.01, global_clipnorm=0.5),
    "schedule": lambda: SGD(ExponentialDecay(0.2, decay_steps=3, decay_rate=0.5), momentum=0.5),
}


def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 12)).astype(np.float32)
    return x, rng.integers(0, 3, n)


def _train(be, opt, capture, epochs=4, l2=0.01, **fit_kwargs):
    x, y = _data()
    x_val, y_val = _data(20, seed=1)
    model = Sequential(
        [Dense(9, "tanh", l2=l2), Dense(7, "relu"), Dense(3, "softmax")],
        input_dim=12,
        backend=be,
        seed=3,
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer=opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning may pass unseen
        history = model.fit(
            be.asarray(x),
            y,
            epochs=epochs,
            batch_size=16,  # 70 samples: 4 batches of 16 and a last short one of 6
            validation_data=(x_val, y_val),
            verbose=0,
            capture=capture,
            **fit_kwargs,
        )
    return model, history


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_captured_training_equals_eager_bit_for_bit(name):
    """Four epochs (warm-up, capture, two replays) with L2, validation data and a last short
    batch give exactly the weights, optimizer state and history of eager training."""
    captured, h_captured = _train(ce.emulated_cupy_backend(), OPTIMIZERS[name](), True)
    eager, h_eager = _train(ce.emulated_cupy_backend(), OPTIMIZERS[name](), False)
    # 5 steps: one chunk, recorded once (epoch 2) and replayed in every later epoch
    (replay,) = captured.trainer.train_function.replays.values()
    assert replay.mode == "graph" and replay.launches == 4
    for got, want in zip(captured.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(captured.optimizer.state, eager.optimizer.state, strict=True):
        for k in got:
            np.testing.assert_array_equal(ce._plain(got[k]), ce._plain(want[k]))
    assert captured.optimizer.iterations == eager.optimizer.iterations == 4 * 5
    assert h_captured.history == h_eager.history


@pytest.mark.parametrize("output, loss", [("linear", "mse"), ("sigmoid", "quadratic")])
def test_the_squared_error_losses_are_captured_and_equal_eager(output, loss):
    """mse and quadratic write dC/da into the output layer's workspace (scaled_difference):
    no allocation in the step, so it is captured (mse + linear once fell back, warning)."""
    x, y = _data()
    Y = np.eye(3, dtype=np.float32)[y]
    models = []
    for capture in (True, False):
        be = ce.emulated_cupy_backend()
        model = Sequential([Dense(9, "tanh"), Dense(3, output)], input_dim=12, backend=be, seed=3)
        model.compile(loss=loss, optimizer=SGD(0.1, momentum=0.9))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warning
            model.fit(be.asarray(x), Y, epochs=4, batch_size=16, verbose=0, capture=capture)
        models.append(model)
    (replay,) = models[0].trainer.train_function.replays.values()
    assert replay.mode == "graph" and replay.launches == 4
    for got, want in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_changed_momentum_or_penalty_is_captured_anew():
    """A CUDA graph holds the optimizer's momentum and the regularizers' strengths as
    constants: changed between fits, the graph is captured again, and training is the eager
    one's bit for bit."""
    models = []
    for capture in (True, False):
        be = ce.emulated_cupy_backend()
        x, y = _data()
        model = Sequential([Dense(9, "tanh", l2=1e-3), Dense(3, "softmax")], 12, backend=be, seed=3)
        model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1, momentum=0.9))
        X = be.asarray(x)
        model.fit(X, y, epochs=3, batch_size=16, verbose=0, capture=capture)
        model.optimizer.momentum = 0.2
        model.layers[0].kernel_regularizer.l2 = 0.1
        model.fit(X, y, epochs=3, batch_size=16, verbose=0, capture=capture)
        models.append(model)
    (replay,) = models[0].trainer.train_function.replays.values()
    assert replay.mode == "graph" and replay.launches == 3  # the second fit's own graph
    for got, want in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_second_fit_replays_the_same_graph():
    """fit called again with the same device x records nothing new: one host launch for the
    epoch's steps, and the same weights as one eager fit of both epochs' worth."""
    be = ce.emulated_cupy_backend()
    x, y = _data()
    X = be.asarray(x)
    models = []
    for _ in range(2):
        model = Sequential(
            [Dense(5, "sigmoid"), Dense(3, "softmax")], input_dim=12, backend=be, seed=0
        )
        model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1, momentum=0.9))
        models.append(model)
    model, eager = models
    for _ in range(3):
        model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    (replay,) = model.trainer.train_function.replays.values()
    before = ce.launches()
    model.fit(X, y, epochs=1, batch_size=16, verbose=0)
    assert model.trainer.train_function.replays == {(5, 70): replay}
    assert replay.mode == "graph"
    per_epoch = ce.launches() - before
    # the graph, plus the epoch's own bookkeeping: far fewer than 5 steps of ~15 kernels
    assert per_epoch < 40
    eager.fit(X, y, epochs=4, batch_size=16, verbose=0, capture=False)
    for got, want in zip(model.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_fallback_without_nvmath_warns_once_and_trains_eagerly():
    be = ce.emulated_cupy_backend(blas=False)
    x, y = _data()
    model = Sequential([Dense(5, "sigmoid"), Dense(3, "softmax")], input_dim=12, backend=be, seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1))
    with pytest.warns(RuntimeWarning, match="without a CUDA graph.*nvmath-python") as record:
        model.fit(be.asarray(x), y, epochs=3, batch_size=16, verbose=0)
    assert len(record) == 1
    reference = Sequential(
        [Dense(5, "sigmoid"), Dense(3, "softmax")], input_dim=12, backend=be, seed=0
    )
    reference.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1))
    reference.fit(be.asarray(x), y, epochs=3, batch_size=16, verbose=0, capture=False)
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_planted_host_read_in_the_step_fails_the_capture(monkeypatch):
    """A step that reads a device value on the host (here: the batch cost, as a naive
    progress report would) cannot be captured; fit says so and goes on eagerly."""
    from backprop.network import Network

    real = Network.backward

    def backward_with_host_read(self, Y, loss, shortcut=True):
        float(self.backend.to_numpy(self.cost(Y, loss)))  # the planted device -> host read
        return real(self, Y, loss, shortcut)

    monkeypatch.setattr(Network, "backward", backward_with_host_read)
    be = ce.emulated_cupy_backend()
    x, y = _data()
    model = Sequential([Dense(5, "sigmoid"), Dense(3, "softmax")], input_dim=12, backend=be)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1))
    with pytest.warns(RuntimeWarning, match="capture failed.*not permitted while a stream"):
        model.fit(be.asarray(x), y, epochs=3, batch_size=16, verbose=0)
    (replay,) = model.trainer.train_function.replays.values()
    assert replay.mode == "eager"


@pytest.mark.parametrize(
    "forbidden",
    ["float", "bool", "asnumpy", "synchronize", "host copy", "cupy.matmul", "allocation"],
)
def test_the_emulated_capture_refuses_what_a_real_capture_forbids(forbidden):
    be = ce.emulated_cupy_backend()
    cp = be.xp
    a = be.asarray(np.ones((3, 3), dtype=np.float32))
    stream, pool = cp.cuda.Stream(non_blocking=True), cp.cuda.MemoryPool()
    actions = {
        "float": lambda: float(a.sum()),
        "bool": lambda: bool(a.sum() > 0),
        "asnumpy": lambda: cp.asnumpy(a),
        "synchronize": lambda: stream.synchronize(),
        "host copy": lambda: cp.asarray(np.ones(3)),
        "cupy.matmul": lambda: a @ a,
        "allocation": lambda: a + 1.0,  # the pool was never warmed for it
    }
    error = NotImplementedError if forbidden == "cupy.matmul" else ce.CaptureError
    with cp.cuda.using_allocator(pool.malloc), stream:
        stream.begin_capture()
        try:
            with pytest.raises(error):
                actions[forbidden]()
        finally:
            stream.end_capture()


def test_the_emulated_capture_records_then_replays():
    """Nothing runs while capturing; each launch replays the recorded kernels on whatever the
    buffers hold then."""
    be = ce.emulated_cupy_backend()
    cp = be.xp
    x = be.asarray(np.array([1.0, 2.0], dtype=np.float32))
    y = be.zeros((2,))
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        be.sigmoid(x, out=y)
        be.add(x, 1.0, out=x)
        graph = stream.end_capture()
    np.testing.assert_array_equal(be.to_numpy(x), [1.0, 2.0])  # nothing ran
    graph.launch()
    graph.launch()
    np.testing.assert_array_equal(be.to_numpy(x), [3.0, 4.0])
    np.testing.assert_allclose(be.to_numpy(y), 1 / (1 + np.exp(-np.array([2.0, 3.0]))), 1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["a b", "a.T b", "a b.T", "a.T b.T", "strided rows"])
def test_captured_gemm_through_cublas_bindings_equals_matmul(dtype, layout):
    """The row-major product issued as cuBLAS's column-major C^T = B^T A^T, with transposed
    views as op T and row strides as leading dimensions, equals NumPy's a @ b."""
    be = ce.emulated_cupy_backend(dtype)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((5, 4)), rng.standard_normal((4, 3))
    if "a.T" in layout:
        A = np.ascontiguousarray(A.T)
    if "b.T" in layout:
        B = np.ascontiguousarray(B.T)
    a, b = be.asarray(A.astype(dtype)), be.asarray(B.astype(dtype))
    a = a.T if "a.T" in layout else a
    b = b.T if "b.T" in layout else b
    if layout == "strided rows":  # a view with a row stride wider than its width
        wide = be.asarray(np.zeros((5, 7), dtype=dtype))
        wide[:, :4] = a
        a = wide[:, :4]
    expected = ce._plain(a) @ ce._plain(b)
    be._prepare_capture()
    out = be.zeros((5, 3))
    stream = be.xp.cuda.Stream(non_blocking=True)
    replay = be.capture(lambda: be.matmul(a, b, out=out))
    with stream:
        be._capture = replay
        stream.begin_capture()
        be.matmul(a, b, out=out)
        graph = stream.end_capture()
        be._capture = None
    graph.launch()
    np.testing.assert_allclose(
        be.to_numpy(out), expected, rtol=1e-6 if dtype == "float32" else 1e-12
    )


def test_launch_counts():
    """What bench.launches reports for 784-500-500-10 at batch 128: 15 kernels per eager step
    (36 before the fused jobs): per layer a GEMM and a bias+activation forward; the output
    delta with its db; per layer dW, and below the top an activation backward with its db
    and da_prev; the update. The shuffled rows are gathered once per chunk of 64 steps on
    CuPy (Backend.gather_chunks), not per step. Captured, a full epoch of 469 steps makes
    59 host launches: per chunk its staging and one graph launch, per epoch its own
    bookkeeping (0.13 per step)."""
    result = count("784-500-500-10")
    assert result["eager_kernels_per_step"] == 15
    assert result["captured_launches_per_epoch"] == 59
    assert result["captured_launches_per_step"] < 0.15


def test_backward_with_bias_grad_is_one_kernel():
    """delta and its column sums (db) come from one launch on CuPy, not two."""
    be = ce.emulated_cupy_backend()
    a, da = be.asarray(np.full((40, 6), 0.5)), be.asarray(np.ones((40, 6)))
    out, db = be.empty((40, 6)), be.empty((6,))
    before = ce.launches()
    be.sigmoid_backward(a, da, out=out, bias_grad=db)
    assert ce.launches() - before == 1
    np.testing.assert_allclose(be.to_numpy(db), np.full(6, 40 * 0.25))


def test_train_on_batch_is_one_step_and_returns_the_cost_before_it(backend):
    x, y = _data(16)
    model = Sequential(
        [Dense(5, "tanh"), Dense(3, "softmax")], input_dim=12, backend=backend, seed=0
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1), metrics=[])
    twin = Sequential(
        [Dense(5, "tanh"), Dense(3, "softmax")], input_dim=12, backend=backend, seed=0
    )
    twin.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1), metrics=[])
    before = model.cost(x, y)
    assert model.train_on_batch(x, y) == pytest.approx(before, rel=1e-6)
    twin.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for got, want in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1), metrics=["acc"])
    expected_accuracy = np.mean(np.argmax(model.predict(x), axis=1) == y)
    cost = model.cost(x, y)
    loss, accuracy = model.train_on_batch(x, y)  # both of the weights before the step
    assert loss == pytest.approx(cost, rel=1e-6)
    assert accuracy == pytest.approx(expected_accuracy)


def test_gathering_in_chunks_equals_gathering_per_step(monkeypatch):
    """CuPy gathers a chunk's shuffled rows of x with one launch (Backend.gather_chunks) into
    fixed windows; training is bit for bit what per-step gathers give, for chunks that cover
    the epoch, chunks that split it (2 + 2 + a last chunk of one short batch), and those
    chunks recorded and replayed."""
    from backprop import training

    x, y = _data(150)  # batch 32: 5 steps, the last of 22 samples
    runs = {}
    for how, chunk, capture in [
        ("per step", None, False),
        ("one chunk", 64, False),
        ("chunks of 2", 2, False),
        ("chunks of 2, replayed", 2, True),
    ]:
        be = ce.emulated_cupy_backend()
        if chunk is None:
            be.gather_chunks = False
        else:
            monkeypatch.setattr(training, "CHUNK_STEPS", chunk)
        model = Sequential(
            [Dense(5, "tanh"), Dense(3, "softmax")], input_dim=12, backend=be, seed=0
        )
        model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1, momentum=0.9))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history = model.fit(
                be.asarray(x), y, epochs=4, batch_size=32, verbose=0, capture=capture
            )
        runs[how] = model.get_weights(), history.history
        if capture:  # the shapes (steps, rows): two full chunks of 2, the last of one batch
            replays = model.trainer.train_function.replays
            assert sorted(replays) == [(1, 22), (2, 64)]
            assert replays[(2, 64)].mode == "graph" and replays[(2, 64)].launches == 8
    reference = runs.pop("per step")
    for weights, history in runs.values():
        for a, b in zip(weights, reference[0], strict=True):
            np.testing.assert_array_equal(a, b)
        assert history == reference[1]
