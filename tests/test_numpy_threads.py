"""The NumPy backend's parallel elementwise paths: bit for bit what one thread computes, on
odd sizes and on views; small jobs stay in the calling thread; the thread count's default."""

from __future__ import annotations

import numpy as np
import pytest

from backends.numpy_backend import (
    PARALLEL_MIN,
    UPDATE_PARALLEL_MIN,
    NumpyBackend,
    default_threads,
)

SHAPE = (1031, 257)  # odd sizes
SPLIT = 100_000  # the split threshold in these tests, so that SHAPE's jobs are split


@pytest.fixture
def backends(monkeypatch):
    monkeypatch.setenv("BACKPROP_PARALLEL_MIN", str(SPLIT))
    return NumpyBackend(threads=1), NumpyBackend(threads=3)


def _data(seed=0, shape=SHAPE, view=False):
    rng = np.random.default_rng(seed)
    if view:  # a strided view: every other column of a wider array
        return rng.standard_normal((shape[0], 2 * shape[1])).astype(np.float32)[:, ::2]
    return rng.standard_normal(shape).astype(np.float32)


# every forward and backward job of the table (backends/kernels.py), with its scalar alpha
FORWARD = {
    "sigmoid": (),
    "tanh": (),
    "relu": (),
    "leaky_relu": (0.1,),
    "elu": (0.7,),
    "softplus": (),
}
BACKWARD = {
    "sigmoid_backward": ("a", "da"),
    "tanh_backward": ("a", "da"),
    "relu_backward": ("a", "da"),
    "leaky_relu_backward": ("z", "da", 0.1),
    "elu_backward": ("z", "a", "da", 0.7),
    "softplus_backward": ("z", "da"),
    "scaled_difference": ("a", "z", 0.25),
}

# the same jobs in float64 NumPy, written from the formulas: what both thread counts must equal
FORWARD_REFERENCE = {
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.1 * z),
    "elu": lambda z: np.where(z > 0, z, 0.7 * np.expm1(z)),
    "softplus": lambda z: np.logaddexp(0, z),
}
BACKWARD_REFERENCE = {
    "sigmoid_backward": lambda a, da, z: da * a * (1 - a),
    "tanh_backward": lambda a, da, z: da * (1 - a * a),
    "relu_backward": lambda a, da, z: np.where(a > 0, da, 0),
    "leaky_relu_backward": lambda a, da, z: np.where(z > 0, da, 0.1 * da),
    "elu_backward": lambda a, da, z: np.where(z > 0, da, da * (a + 0.7)),
    "softplus_backward": lambda a, da, z: da / (1 + np.exp(-z)),
    "scaled_difference": lambda a, da, z: (a - z) * 0.25,
}


def _close(got, expected):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("view", [False, True])
@pytest.mark.parametrize("name", sorted(FORWARD))
def test_forward_with_bias_equals_one_thread(backends, name, view):
    results = []
    for be in backends:
        z = _data(view=view).copy() if not view else _data(view=True)
        bias = _data(1, (SHAPE[1],))
        out = np.empty(SHAPE, dtype=np.float32)
        getattr(be, name)(z, *FORWARD[name], out=out, bias=bias)
        results.append((out, z))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])  # z keeps z + b alike
    zb = _data(view=view).astype(np.float64) + _data(1, (SHAPE[1],))
    _close(results[1][1], zb)
    _close(results[1][0], FORWARD_REFERENCE[name](zb))


@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_backward_with_bias_grad_equals_one_thread(backends, name):
    results = []
    for be in backends:
        arrays = {"a": np.tanh(_data(2)), "da": _data(3), "z": _data(4)}
        args = [arrays.get(x, x) if isinstance(x, str) else x for x in BACKWARD[name]]
        db = np.empty(SHAPE[1], dtype=np.float32)
        out = getattr(be, name)(*args, bias_grad=db)
        results.append((out, db))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=1e-6)
    a, da, z = (x.astype(np.float64) for x in (np.tanh(_data(2)), _data(3), _data(4)))
    delta = BACKWARD_REFERENCE[name](a, da, z)
    _close(results[1][0], delta)
    # db sums 1,031 terms: its rounding grows with the sum of their magnitudes
    bound = 1e-6 * np.abs(delta).sum(axis=0) + 1e-6
    assert np.all(np.abs(results[1][1] - delta.sum(axis=0)) <= bound)


def test_gather_equals_one_thread(backends):
    x = _data(4)
    order = np.random.default_rng(5).permutation(SHAPE[0])
    outs = [be.take(x, order, out=np.empty_like(x)) for be in backends]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], x[order])


@pytest.mark.parametrize("size", [SPLIT + 5, 4_000_003])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam"])
def test_optimizer_updates_equal_one_thread(backends, optimizer, size):
    rng = np.random.default_rng(6)
    start = rng.standard_normal(size).astype(np.float32)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(2)]
    finals = []
    for be in backends:
        p, s1, s2 = start.copy(), np.zeros(size, np.float32), np.zeros(size, np.float32)
        for g in grads:
            if optimizer == "sgd":
                be.sgd_update(p, g, 0.1)
            elif optimizer in ("momentum", "nesterov"):
                be.momentum_update(p, g, s1, 0.1, 0.9, nesterov=optimizer == "nesterov")
            elif optimizer == "adagrad":
                be.adagrad_update(p, g, s1, 0.1, 1e-7)
            elif optimizer == "rmsprop":
                be.rmsprop_update(p, g, s1, 0.01, 0.9, 1e-7)
            else:
                be.adam_step(p, g, s1, s2, 0.001, 0.9, 0.999, 1e-7, 0.0001)
        finals.append((p, s1, s2))
    for got, want in zip(finals[1], finals[0], strict=True):
        np.testing.assert_array_equal(got, want)
    # and both equal the update rules, written out in float64
    p, g0, g1 = (x.astype(np.float64) for x in (start, *grads))
    s1, s2 = np.zeros(size), np.zeros(size)
    for g in (g0, g1):
        if optimizer == "sgd":
            p = p - 0.1 * g
        elif optimizer in ("momentum", "nesterov"):
            s1 = 0.9 * s1 - 0.1 * g
            p = p + (0.9 * s1 - 0.1 * g if optimizer == "nesterov" else s1)
        elif optimizer == "adagrad":
            s1 = s1 + g * g
            p = p - 0.1 * g / (np.sqrt(s1) + 1e-7)
        elif optimizer == "rmsprop":
            s1 = 0.9 * s1 + 0.1 * g * g
            p = p - 0.01 * g / np.sqrt(s1 + 1e-7)  # Keras: epsilon inside the root
        else:  # adam_step: decay first, then the step with the given (bias-corrected) size
            p = p - 0.0001 * p
            s1, s2 = 0.9 * s1 + 0.1 * g, 0.999 * s2 + 0.001 * g * g
            p = p - 0.001 * s1 / (np.sqrt(s2) + 1e-7)
    _close(finals[0][0], p)
    _close(finals[0][1], s1)
    _close(finals[0][2], s2)


def test_small_jobs_stay_in_the_calling_thread():
    """With the default thresholds no job of the bench's networks is split (on two cores
    they lost to BLAS's spinning threads), and the big standalone jobs are."""
    be = NumpyBackend(threads=4)
    z = _data(shape=(1024, 1024))  # the largest activation: 784-1024-1024-10 at batch 1024
    be.sigmoid(z, out=np.empty_like(z))
    n = 1_863_690  # 784-1024-1024-10's parameters
    p = np.zeros(n, np.float32)
    be.momentum_update(p, p.copy(), np.zeros(n, np.float32), 0.1, 0.9)
    assert be._pool is None  # no thread was ever handed work
    assert z.size <= PARALLEL_MIN and n <= UPDATE_PARALLEL_MIN
    be.sigmoid(_data(shape=(2000, 1000)), out=np.empty((2000, 1000), np.float32))
    assert be._pool is not None


def test_thread_count_default_and_settings(monkeypatch):
    monkeypatch.setenv("BACKPROP_NUM_THREADS", "3")
    assert default_threads() == 3 and NumpyBackend().threads == 3
    monkeypatch.setenv("BACKPROP_PARALLEL_MIN", "many")
    with pytest.raises(ValueError, match="BACKPROP_PARALLEL_MIN must be an integer >= 0"):
        NumpyBackend()
    monkeypatch.delenv("BACKPROP_PARALLEL_MIN")
    monkeypatch.setenv("BACKPROP_NUM_THREADS", "zero")
    with pytest.raises(ValueError, match="BACKPROP_NUM_THREADS must be an integer >= 1"):
        default_threads()
    monkeypatch.delenv("BACKPROP_NUM_THREADS")
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", str(max(1, cores)))
    assert default_threads() == 1  # the ranks on this machine share its cores
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        NumpyBackend(threads=0)
    be = NumpyBackend(threads=2)
    be.threads = 1
    assert be.threads == 1
