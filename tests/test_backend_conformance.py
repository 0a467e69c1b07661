"""Every interface method on every backend, in float32 and float64, against a float64 NumPy
reference, with the tolerances named in conftest (RTOL, ATOL)."""

from __future__ import annotations

import inspect
import tracemalloc
import warnings

import numpy as np
import pytest
from conftest import ATOL, RTOL

import backends
from backends import ArrayAPIBackend, Backend, NumpyBackend
from backends.kernels import KERNELS

# --------------------------------------------------------------------------- references
# Each entry: method name -> (argument kinds, float64 NumPy reference). "x" is an array of
# the standard shape (7, 5); "pos" a strictly positive one; floats are passed as scalars.


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


UNARY = {
    "exp": np.exp,
    "log": np.log,
    "tanh": np.tanh,
    "sqrt": np.sqrt,
    "square": np.square,
    "abs": np.abs,
    "sign": np.sign,
    "sigmoid": _sigmoid,
    "relu": lambda z: np.maximum(z, 0.0),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "softmax": _softmax,
    "log_softmax": lambda z: np.log(_softmax(z)),
    "maxout": lambda z: z.max(axis=-1),
}
POSITIVE_ONLY = {"log", "sqrt"}

BINARY = {
    "add": np.add,
    "subtract": np.subtract,
    "multiply": np.multiply,
    "divide": np.divide,
    "maximum": np.maximum,
    "minimum": np.minimum,
    "matmul": None,  # shapes differ; tested on its own
}

BACKWARD = {
    # name -> (reference delta, which forward values it takes)
    "sigmoid_backward": lambda z, da: da * _sigmoid(z) * (1 - _sigmoid(z)),
    "tanh_backward": lambda z, da: da * (1 - np.tanh(z) ** 2),
    "relu_backward": lambda z, da: da * (z > 0),
    "softplus_backward": lambda z, da: da * _sigmoid(z),
    "softmax_backward": lambda z, da: (
        _softmax(z) * (da - (da * _softmax(z)).sum(axis=-1, keepdims=True))
    ),
}


def close(backend, got, expected, dtype=None):
    dtype = dtype or backend.dtype_name
    got = backend.to_numpy(got)
    assert got.shape == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype], atol=ATOL[dtype])


def data(rng, shape=(7, 5), positive=False):
    x = rng.standard_normal(shape)
    return np.abs(x) + 0.1 if positive else x


def on(backend, x):
    """Round to the backend's dtype on the host, so the reference sees the same inputs."""
    host = np.asarray(x, dtype=backend.dtype_name)
    return backend.asarray(host), host.astype(np.float64)


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(typed_backend, rng, name):
    be = typed_backend
    x, ref = on(be, data(rng, positive=name in POSITIVE_ONLY))
    close(be, getattr(be, name)(x), UNARY[name](ref))


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_out(typed_backend, rng, name):
    """With out=, the result lands in `out` and `out` is returned."""
    be = typed_backend
    x, ref = on(be, data(rng, positive=name in POSITIVE_ONLY))
    expected = UNARY[name](ref)
    out = be.zeros(expected.shape)
    result = getattr(be, name)(x, out=out)
    assert result is out
    close(be, out, expected)


@pytest.mark.parametrize("name", sorted(k for k in BINARY if BINARY[k] is not None))
def test_binary(typed_backend, rng, name):
    be = typed_backend
    (a, ra), (b, rb) = on(be, data(rng)), on(be, data(rng, positive=True))
    close(be, getattr(be, name)(a, b), BINARY[name](ra, rb))
    out = be.zeros((7, 5))
    assert getattr(be, name)(a, b, out=out) is out
    close(be, out, BINARY[name](ra, rb))
    # a Python scalar as the second operand
    close(be, getattr(be, name)(a, 1.5), BINARY[name](ra, 1.5))


@pytest.mark.parametrize("name", sorted(BACKWARD))
def test_activation_backward(typed_backend, rng, name):
    """delta = da * f'(z), computed from what the forward pass keeps."""
    be = typed_backend
    (z, rz), (da, rda) = on(be, data(rng)), on(be, data(rng))
    forward = name.removesuffix("_backward")
    kept = {"sigmoid": "a", "tanh": "a", "relu": "a", "softplus": "z", "softmax": "a"}[forward]
    a = be.tanh(z) if forward == "tanh" else getattr(be, forward)(z)
    got = getattr(be, name)(a if kept == "a" else z, da)
    close(be, got, BACKWARD[name](rz, rda))
    out = be.zeros((7, 5))
    assert getattr(be, name)(a if kept == "a" else z, da, out=out) is out
    close(be, out, BACKWARD[name](rz, rda))


# Each backward job with the bias gradient: (arguments from z and da, the reference delta).
BIAS_GRAD_JOBS = {
    "sigmoid_backward": (lambda be, z, da: (be.sigmoid(z), da), BACKWARD["sigmoid_backward"]),
    "tanh_backward": (lambda be, z, da: (be.tanh(z), da), BACKWARD["tanh_backward"]),
    "relu_backward": (lambda be, z, da: (be.relu(z), da), BACKWARD["relu_backward"]),
    "softplus_backward": (lambda be, z, da: (z, da), BACKWARD["softplus_backward"]),
    "leaky_relu_backward": (
        lambda be, z, da: (z, da, 0.2),
        lambda z, da: np.where(z > 0, da, 0.2 * da),
    ),
    "elu_backward": (
        lambda be, z, da: (z, be.elu(z, 0.5), da, 0.5),
        lambda z, da: np.where(z > 0, da, da * 0.5 * np.exp(z)),
    ),
    "scaled_difference": (lambda be, z, da: (z, da, 0.125), lambda z, da: (z - da) * 0.125),
}


@pytest.mark.parametrize("name", sorted(BIAS_GRAD_JOBS))
@pytest.mark.parametrize("shape", [(7, 5), (1, 3), (33, 40), (64, 1), (100, 10)])
def test_backward_writes_bias_grad(typed_backend, rng, name, shape):
    """With bias_grad=, a backward job also writes the column sums of its result (the layer's
    db), on row counts below, at and across 32 (a GPU sums each column over 32 lanes)."""
    be = typed_backend
    (z, rz), (da, rda) = on(be, data(rng, shape)), on(be, data(rng, shape))
    args, reference = BIAS_GRAD_JOBS[name]
    expected = reference(rz, rda)
    out, db = be.zeros(shape), be.full((shape[1],), 7.0)
    assert getattr(be, name)(*args(be, z, da), out=out, bias_grad=db) is out
    close(be, out, expected)
    close(be, db, expected.sum(axis=0))
    # without out=: a new array, and the same sums
    db2 = be.zeros((shape[1],))
    close(be, getattr(be, name)(*args(be, z, da), bias_grad=db2), expected)
    close(be, db2, expected.sum(axis=0))


@pytest.mark.parametrize("name", sorted(BIAS_GRAD_JOBS))
def test_backward_writes_bias_grad_of_a_tall_array(typed_backend, rng, name):
    """The same on a tall, narrow array (4,100 x 3), which CuPy sums in two passes over row
    tiles (backends.cupy_backend.bias_grad_tiles). A sum of 4,100 terms is held to a bound
    that scales with the sum of their magnitudes, as its rounding does."""
    be = typed_backend
    (z, rz), (da, rda) = on(be, data(rng, (4100, 3))), on(be, data(rng, (4100, 3)))
    args, reference = BIAS_GRAD_JOBS[name]
    expected = reference(rz, rda)
    out, db = be.zeros((4100, 3)), be.full((3,), 7.0)
    assert getattr(be, name)(*args(be, z, da), out=out, bias_grad=db) is out
    close(be, out, expected)
    error = np.abs(be.to_numpy(db) - expected.sum(axis=0))
    assert np.all(error <= RTOL[be.dtype_name] * np.abs(expected).sum(axis=0)), error


@pytest.mark.parametrize("alpha", [0.01, 0.3])
def test_leaky_relu_pair(typed_backend, rng, alpha):
    be = typed_backend
    (z, rz), (da, rda) = on(be, data(rng)), on(be, data(rng))
    close(be, be.leaky_relu(z, alpha), np.where(rz > 0, rz, alpha * rz))
    close(be, be.leaky_relu_backward(z, da, alpha), np.where(rz > 0, rda, alpha * rda))


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_elu_pair(typed_backend, rng, alpha):
    be = typed_backend
    (z, rz), (da, rda) = on(be, data(rng)), on(be, data(rng))
    a = be.elu(z, alpha)
    close(be, a, np.where(rz > 0, rz, alpha * np.expm1(rz)))
    close(be, be.elu_backward(z, a, da, alpha), np.where(rz > 0, rda, rda * alpha * np.exp(rz)))


def test_maxout_backward_routes_to_first_winner(typed_backend):
    be = typed_backend
    z, _ = on(be, [[[1.0, 3.0, 2.0], [5.0, 5.0, 0.0]]])  # second unit: a tie
    da, _ = on(be, [[10.0, 20.0]])
    close(be, be.maxout_backward(z, da), [[[0.0, 10.0, 0.0], [20.0, 0.0, 0.0]]])


def test_matmul(typed_backend, rng):
    be = typed_backend
    (a, ra), (b, rb) = on(be, data(rng, (6, 4))), on(be, data(rng, (4, 3)))
    close(be, be.matmul(a, b), ra @ rb)
    out = be.zeros((6, 3))
    assert be.matmul(a, b, out=out) is out
    close(be, out, ra @ rb)
    # transposed views, as backprop uses them: a_prev.T @ delta and delta @ W.T
    (d, rd) = on(be, data(rng, (6, 3)))
    close(be, be.matmul(a.T, d), ra.T @ rd)
    close(be, be.matmul(d, b.T), rd @ rb.T)


def test_matmul_transposed_view_is_not_copied(rng):
    """On NumPy, W.T is a view sharing memory with W, and matmul consumes it as it is: a
    product into `out` with a 4 MB W.T allocates nowhere near a copy of W."""
    be = NumpyBackend()
    W = rng.random((1000, 1000), dtype=np.float32)
    x = rng.random((2, 1000), dtype=np.float32)
    out = np.empty((2, 1000), dtype=np.float32)
    tracemalloc.start()
    try:
        assert be.matmul(x, W.T, out=out) is out
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < W.nbytes // 8, peak
    np.testing.assert_allclose(out, x.astype(np.float64) @ W.T.astype(np.float64), rtol=1e-5)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reductions(typed_backend, rng, name, axis, keepdims):
    be = typed_backend
    x, rx = on(be, data(rng))
    close(
        be,
        getattr(be, name)(x, axis=axis, keepdims=keepdims),
        getattr(np, name)(rx, axis=axis, keepdims=keepdims),
    )


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_argmax(typed_backend, rng, axis):
    be = typed_backend
    x, rx = on(be, data(rng))
    got = be.to_numpy(be.argmax(x, axis=axis))
    np.testing.assert_array_equal(got, np.argmax(rx, axis=axis))
    kept = be.to_numpy(be.argmax(x, axis=1, keepdims=True))
    np.testing.assert_array_equal(kept, np.argmax(rx, axis=1)[:, None])


def test_sum_out(typed_backend, rng):
    be = typed_backend
    x, rx = on(be, data(rng))
    out = be.zeros((5,))
    assert be.sum(x, axis=0, out=out) is out
    close(be, out, rx.sum(axis=0))


def test_where_clip_all_finite(typed_backend, rng):
    be = typed_backend
    (x, rx), (y, ry) = on(be, data(rng)), on(be, data(rng))
    with be.device_context():  # an operator on backend arrays runs on the current device
        x_greater = x > y
    close(be, be.where(x_greater, x, y), np.where(rx > ry, rx, ry))
    close(be, be.clip(x, -0.5, 0.5), np.clip(rx, -0.5, 0.5))
    out = be.zeros((7, 5))
    assert be.clip(x, -0.5, 0.5, out=out) is out
    close(be, out, np.clip(rx, -0.5, 0.5))
    assert bool(be.to_numpy(be.all_finite(x))) is True
    bad, _ = on(be, [1.0, np.inf])
    assert bool(be.to_numpy(be.all_finite(bad))) is False
    nan, _ = on(be, [np.nan, 1.0])
    assert bool(be.to_numpy(be.all_finite(nan))) is False


def test_transfer_and_creation(typed_backend, rng):
    be = typed_backend
    host = data(rng).astype(be.dtype_name)
    x = be.asarray(host)
    assert be.is_array(x)
    if be.name != "numpy":
        assert not be.is_array(host)
    back = be.to_numpy(x)
    assert isinstance(back, np.ndarray) and back.dtype == host.dtype
    np.testing.assert_array_equal(back, host)
    # dtype=None keeps the input dtype; a dtype converts
    labels = be.asarray(np.array([2, 0, 1]))
    assert be.to_numpy(labels).dtype.kind == "i"
    assert be.to_numpy(be.asarray(np.arange(3), dtype="float64")).dtype == np.float64
    for make in (be.zeros, be.empty):
        arr = make((3, 2))
        assert arr.shape == (3, 2) and be.to_numpy(arr).dtype == np.dtype(be.dtype_name)
    assert be.to_numpy(be.zeros((2,), dtype="int64")).dtype == np.int64
    np.testing.assert_array_equal(be.to_numpy(be.zeros_like(x)), np.zeros_like(host))
    np.testing.assert_array_equal(be.to_numpy(be.full((2, 2), 3.0)), np.full((2, 2), 3.0))
    np.testing.assert_array_equal(be.to_numpy(be.arange(4)), np.arange(4))
    assert be.to_numpy(be.astype(x, "float64")).dtype == np.float64
    c = be.copy(x)
    with be.device_context():
        c[0, 0] = 99.0
    assert be.to_numpy(x)[0, 0] == host[0, 0]
    out = be.zeros((7, 5))
    assert be.copy(x, out=out) is out
    close(be, out, host)


def test_take_and_one_hot(typed_backend, rng):
    be = typed_backend
    x, rx = on(be, data(rng))
    idx = be.asarray(np.array([4, 0, 0, 6]))
    close(be, be.take(x, idx), rx[[4, 0, 0, 6]])
    out = be.zeros((4, 5))
    assert be.take(x, idx, out=out) is out
    close(be, out, rx[[4, 0, 0, 6]])
    labels = be.asarray(np.array([2, 0, 1, 2]))
    close(be, be.one_hot(labels, 3), np.eye(3)[[2, 0, 1, 2]])


def test_reshape(typed_backend, rng):
    be = typed_backend
    x, rx = on(be, data(rng, (6, 4)))
    close(be, be.reshape(x, (6, 2, 2)), rx.reshape(6, 2, 2))
    close(be, be.reshape(x, (24,)), rx.reshape(24))


def test_dtype_of_results(typed_backend, rng):
    """float32 in, float32 out: no silent float64 promotion inside an op."""
    be = typed_backend
    x, _ = on(be, data(rng))
    for name in ("sigmoid", "relu", "softmax", "log_softmax", "softplus", "tanh"):
        assert be.to_numpy(getattr(be, name)(x)).dtype == np.dtype(be.dtype_name), name
    assert be.to_numpy(be.sigmoid_backward(x, x)).dtype == np.dtype(be.dtype_name)


# --------------------------------------------------------------------------- numerics
def test_softmax_extreme_logits(typed_backend):
    be = typed_backend
    z, _ = on(be, [[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning fails the test
        a = be.to_numpy(be.softmax(z))
        log_a = be.to_numpy(be.log_softmax(z))
    np.testing.assert_array_equal(a[0], [1.0, 0.0, 0.0])  # exact limits
    np.testing.assert_array_equal(a[2], [0.5, 0.5, 0.0])
    np.testing.assert_allclose(a[1], [1 / 3] * 3, rtol=RTOL[be.dtype_name])
    assert np.all(np.isfinite(log_a))
    np.testing.assert_allclose(log_a[0], [0.0, -2e4, -1e4], rtol=RTOL[be.dtype_name])
    np.testing.assert_allclose(
        log_a[2], [-np.log(2), -np.log(2), -2e4 - np.log(2)], rtol=RTOL[be.dtype_name]
    )


def test_full_reductions_and_0d_arithmetic_stay_arrays(backend):
    """A full reduction is a 0-d array on every backend, and so is arithmetic on one (NumPy's
    own functions give scalars there): the cost, L2's penalty and the pass's accumulators
    stay on the device, and a recorded CPU step can tell them from host values."""
    be = backend
    x = be.asarray(np.array([[1.0, -2.0], [3.0, 4.0]], dtype=np.float32))
    s, m, top = be.sum(x), be.mean(x), be.max(x)
    results = [
        (s, 6.0),
        (m, 1.5),
        (top, 4.0),
        (be.multiply(s, 2.0), 12.0),
        (be.add(s, m), 7.5),
        (be.subtract(s, 1.0), 5.0),
        (be.divide(s, 4.0), 1.5),
        (be.square(top), 16.0),
        (be.abs(be.multiply(s, -1.0)), 6.0),
    ]
    for got, want in results:
        # (a NumPy scalar passes is_array and has shape (): it must not be one)
        assert not isinstance(got, np.generic), type(got)
        assert be.is_array(got) and tuple(got.shape) == ()
        assert float(be.to_numpy(got)) == want


def test_sign_of_zero_is_zero(backend):
    x = backend.asarray(np.array([-2.5, -0.0, 0.0, 1e-30, 3.0], dtype=np.float32))
    np.testing.assert_array_equal(backend.to_numpy(backend.sign(x)), [-1.0, 0.0, 0.0, 1.0, 1.0])


def test_sigmoid_extremes(typed_backend):
    be = typed_backend
    z, _ = on(be, [-1000.0, -100.0, 0.0, 100.0, 1000.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = be.to_numpy(be.sigmoid(z))
        sp = be.to_numpy(be.softplus(z))
    assert a[0] == 0.0 and a[-1] == 1.0 and a[2] == 0.5  # exact limits
    assert a[3] == 1.0 and 0.0 <= a[1] < 1e-30
    np.testing.assert_allclose(
        sp, [0.0, 0.0, np.log(2), 100.0, 1000.0], atol=1e-30, rtol=RTOL[be.dtype_name]
    )


# --------------------------------------------------------------------------- the interface
def _public(cls):
    return {n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)}


@pytest.mark.parametrize("cls_name", ["NumpyBackend", "ArrayAPIBackend", "CupyBackend"])
def test_no_backend_adds_public_methods_and_signatures_match(cls_name):
    cls = getattr(backends, cls_name)
    base_methods = {n for n in dir(Backend) if not n.startswith("_")}
    added = {n for n in dir(cls) if not n.startswith("_")} - base_methods
    assert not added, f"{cls_name} adds public names the base lacks: {sorted(added)}"
    for name in _public(cls):
        if name == "__init__":
            continue
        ours, base = (
            inspect.signature(getattr(cls, name)),
            inspect.signature(getattr(Backend, name)),
        )
        assert list(ours.parameters) == list(base.parameters), f"{cls_name}.{name}"
        for p, q in zip(ours.parameters.values(), base.parameters.values(), strict=True):
            assert p.default == q.default, f"{cls_name}.{name}({p.name}) default differs"


def test_array_api_backend_is_the_generic_base(rng):
    """ArrayAPIBackend over NumPy itself is a working backend with no overrides."""
    be = ArrayAPIBackend(np, device="cpu")
    x = rng.standard_normal((3, 4)).astype(np.float32)
    close(be, be.softmax(x), _softmax(x.astype(np.float64)))
    assert _public(ArrayAPIBackend) == set()


# --------------------------------------------------------------------------- fused jobs
BIASED = {
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "relu": lambda z: np.maximum(z, 0.0),
    "softplus": lambda z: np.log1p(np.exp(z)),
    "softmax": _softmax,
    "leaky_relu": lambda z: np.where(z > 0, z, 0.1 * z),
    "elu": lambda z: np.where(z > 0, z, 0.7 * np.expm1(np.minimum(z, 0))),
}


@pytest.mark.parametrize("name", sorted(BIASED))
def test_activation_with_bias(typed_backend, rng, name):
    """f(z + b) in one call: z is left holding z + b (what the backward pass needs) and a
    lands in `out`, equal to adding the bias and then applying f."""
    be = typed_backend
    (z, rz), (b, rb) = on(be, data(rng)), on(be, data(rng, shape=(5,)))
    alpha = {"leaky_relu": (0.1,), "elu": (0.7,)}.get(name, ())
    out = be.zeros((7, 5))
    assert getattr(be, name)(z, *alpha, out=out, bias=b) is out
    close(be, out, BIASED[name](rz + rb))
    close(be, z, rz + rb)
    # without out=, a new array
    expected = BIASED[name](rz + rb)
    z2, _ = on(be, rz.copy())  # (on NumPy in float64, z2 would otherwise be rz itself)
    close(be, getattr(be, name)(z2, *alpha, bias=b), expected)


def test_softmax_rows_of_odd_width_and_extremes(typed_backend):
    """The row softmax (a kernel of its own on CuPy) on a batch of 1, a width of 1, and
    +-1e4 logits: exact, no overflow."""
    be = typed_backend
    z = be.asarray(np.array([[1e4, -1e4, 0.0]], dtype=be.dtype_name))
    close(be, be.softmax(z), [[1.0, 0.0, 0.0]])
    close(be, be.softmax(be.asarray(np.ones((4, 1), dtype=be.dtype_name))), np.ones((4, 1)))


def test_scaled_difference(typed_backend, rng):
    """(a - b) * scale: softmax + cross-entropy's output delta (a - y) / batch."""
    be = typed_backend
    (a, ra), (b, rb) = on(be, data(rng)), on(be, data(rng))
    close(be, be.scaled_difference(a, b, 0.25), (ra - rb) * 0.25)
    out = be.zeros((7, 5))
    assert be.scaled_difference(a, b, 1 / 7, out=out) is out
    close(be, out, (ra - rb) / 7)


@pytest.mark.parametrize("on_device", [False, True])
def test_adam_step_takes_step_values_as_floats_or_device_scalars(typed_backend, rng, on_device):
    """adam_step reads step_size and decay as floats or as 0-d device arrays (the row of a
    step table a captured step reads), with the same result."""
    be = typed_backend
    (p, rp), (g, rg) = on(be, data(rng, shape=(6,))), on(be, data(rng, shape=(6,)))
    m, v = be.zeros((6,)), be.zeros((6,))
    step_size, decay = 0.01, 0.002
    if on_device:
        row = be.asarray(np.array([step_size, decay], dtype=be.dtype_name))
        step_size, decay = row[..., 0], row[..., 1]
    be.adam_step(p, g, m, v, step_size, 0.9, 0.999, 1e-7, decay)
    rm, rv = 0.1 * rg, 0.001 * rg * rg
    expected = rp - 0.002 * rp
    expected = expected - 0.01 * rm / (np.sqrt(rv) + 1e-7)
    close(be, p, expected)
    close(be, m, rm)
    close(be, v, rv)


def test_capture_runs_eagerly_off_the_gpu(backend):
    """capture() gives a callable that does what the function does; strict runs it eagerly
    every call (records is False), CuPy records it as a CUDA graph and NumPy records its
    backend calls (True), running it on the first two calls to do so."""
    calls = []
    replay = backend.capture(lambda: calls.append(1))
    assert replay.records == (backend.capture_records is not None)
    assert backend.capture_records == {"cupy": "device", "numpy": "calls"}.get(backend.name)
    if backend.capture_records != "device":
        replay()
        replay()
        assert calls == [1, 1]
        assert replay.mode == ("eager" if backend.capture_records is None else "tape")
    # device work: each call adds one, whether run eagerly or recorded and replayed
    x = backend.zeros((3,))
    count = backend.capture(lambda: backend.add(x, 1.0, out=x))
    for _ in range(4):
        count()
    np.testing.assert_array_equal(backend.to_numpy(x), [4.0, 4.0, 4.0])
    modes = {"device": "graph", "calls": "tape", None: "eager"}
    assert count.mode == modes[backend.capture_records]


# --------------------------------------------------------------------------- the kernel table
# Each entry of backends/kernels.py holds a job's formula twice, as a NumPy reference and as
# CUDA text. The CUDA text runs here through the emulated CuPy (which interprets it on NumPy;
# tests/test_cuda_kernels.py compiles it with NVRTC), and each backend's method runs whatever
# that backend derived from the entry: all three must equal the reference.
SCALARS = {
    "alpha": 0.3,
    "scale": 0.25,
    "lr": 0.1,
    "momentum": 0.9,
    "epsilon": 1e-7,
    "rho": 0.9,
    "step_size": 0.01,
    "beta_1": 0.9,
    "beta_2": 0.999,
    "decay": 0.002,
    "rate": 0.3,
}
NONNEGATIVE_STATE = {"accumulator", "mean_square", "v"}  # sums of squares


def _names(params):
    return [p.split()[-1] for p in params.split(",")]


def _table_case(key, rng, dtype):
    """Inputs and outputs of the table's job `key`, by name, in `dtype` (host arrays for the
    arrays, floats rounded to dtype for the scalars); the outputs hold a kernel's read-write
    state (param, velocity, ...) or zeros."""
    kernel = KERNELS[key]
    ins = {}
    for name in _names(kernel.cuda.in_params):
        if name in kernel.arrays:
            ins[name] = data(rng).astype(dtype)
        elif name == "key":  # dropout's [seed, counter]
            ins[name] = np.array([rng.integers(2**32), rng.integers(2**32)], dtype=np.uint32)
        else:
            ins[name] = float(np.dtype(dtype).type(SCALARS[name]))
    if key == "dropout":  # the scale its method computes in T: 1 / (1 - rate)
        one = np.dtype(dtype).type(1)
        ins["scale"] = float(one / (one - np.dtype(dtype).type(ins["rate"])))
    outs = {}
    for name in _names(kernel.cuda.out_params):
        if name in NONNEGATIVE_STATE:
            outs[name] = np.abs(data(rng)).astype(dtype)
        elif name in ("param", "velocity", "m"):
            outs[name] = data(rng).astype(dtype)
        else:
            outs[name] = np.zeros((7, 5), dtype=dtype)
    return ins, outs


def _reference(key, ins, outs):
    """The table's reference on float64 copies: the outputs it writes, by name."""
    outs64 = {n: np.array(x, dtype=np.float64) for n, x in outs.items()}
    ins64 = {
        n: np.array(x, dtype=np.float64) if n in KERNELS[key].arrays else x for n, x in ins.items()
    }
    KERNELS[key].reference(np, *ins64.values(), *outs64.values())
    return outs64


@pytest.mark.parametrize("key", sorted(KERNELS))
def test_table_cuda_text_equals_its_reference(key, dtype, rng):
    """The entry's CUDA text (interpreted by the emulated CuPy, in dtype) equals its NumPy
    reference (float64, on the same inputs)."""
    from backends import emulated_cupy

    cp = emulated_cupy.fake_cupy()
    ins, outs = _table_case(key, rng, dtype)
    expected = _reference(key, ins, outs)
    device_outs = [cp.asarray(x) for x in outs.values()]
    args = [cp.asarray(x) if isinstance(x, np.ndarray) else x for x in ins.values()]
    emulated_cupy.ElementwiseKernel(*KERNELS[key].cuda)(*args, *device_outs)
    for name, got in zip(outs, device_outs, strict=True):
        np.testing.assert_allclose(
            cp.asnumpy(got), expected[name], rtol=RTOL[dtype], atol=ATOL[dtype], err_msg=name
        )


@pytest.mark.parametrize("key", sorted(KERNELS))
def test_backend_method_equals_the_table_reference(typed_backend, key, rng):
    """Each backend's method for the entry (NumPy's threaded form, the generic one, CuPy's
    kernel) equals the entry's reference. A forward or backward takes the kernel's inputs in
    the kernel's order; an update takes (param, grad, *state, *scalars)."""
    be = typed_backend
    ins, outs = _table_case(key, rng, be.dtype_name)
    expected = _reference(key, ins, outs)
    args = {n: be.asarray(x) if isinstance(x, np.ndarray) else x for n, x in ins.items()}
    if "param" in outs:
        state = {n: be.asarray(x) for n, x in outs.items()}
        param, *rest = state.values()
        scalars = [x for n, x in args.items() if n != "grad"]
        method, extra = key.replace("nesterov", "momentum"), {}
        if key == "nesterov_update":
            extra = {"nesterov": True}
        assert getattr(be, method)(param, args["grad"], *rest, *scalars, **extra) is None
        results = state
    elif key == "dropout":
        results = dict(zip(outs, be.dropout(args["x"], args["key"], args["rate"]), strict=True))
    else:
        (name,) = outs
        results = {name: getattr(be, key)(*args.values())}
    for name, got in results.items():
        close(be, got, expected[name])


# --------------------------------------------------------------------------- SELU, batch norm
SELU_ALPHA, SELU_SCALE = 1.6732632423543772, 1.0507009873554805


def test_selu_pair(typed_backend, rng):
    """SELU against its definition (Klambauer et al., 2017), and its backward against the
    derivative scale * (1 if z > 0 else alpha e^z)."""
    be = typed_backend
    (z, rz), (da, rda) = on(be, data(rng)), on(be, data(rng))
    a = be.selu(z)
    close(be, a, SELU_SCALE * np.where(rz > 0, rz, SELU_ALPHA * np.expm1(rz)))
    slope = SELU_SCALE * np.where(rz > 0, 1.0, SELU_ALPHA * np.exp(rz))
    close(be, be.selu_backward(z, a, da), rda * slope)
    bias, rbias = on(be, data(rng, (5,)))
    z2, rz2 = on(be, data(rng))
    db = be.zeros((5,))
    got = be.selu_backward(be.add(z2, 0.0), be.selu(z2), da, bias_grad=db)
    slope2 = SELU_SCALE * np.where(rz2 > 0, 1.0, SELU_ALPHA * np.exp(rz2))
    close(be, got, rda * slope2)
    close(be, db, (rda * slope2).sum(axis=0))
    z3 = be.add(z2, 0.0)
    close(
        be,
        be.selu(z3, bias=bias),
        SELU_SCALE * np.where(rz2 + rbias > 0, rz2 + rbias, SELU_ALPHA * np.expm1(rz2 + rbias)),
    )


def _batch_norm_reference(x, gamma, beta, mean0, var0, momentum, epsilon):
    """float64: what batch_norm returns and leaves in the moving statistics."""
    mean, var = x.mean(axis=0), x.var(axis=0)
    x_hat = (x - mean) / np.sqrt(var + epsilon)
    return (
        gamma * x_hat + beta,
        x_hat,
        1 / np.sqrt(var + epsilon),
        momentum * mean0 + (1 - momentum) * mean,
        momentum * var0 + (1 - momentum) * var,
    )


@pytest.mark.parametrize("shape", [(7, 5), (64, 3), (1, 4)])
def test_batch_norm_forward(typed_backend, rng, shape):
    be = typed_backend
    n = shape[1]
    (x, rx) = on(be, 3.0 * data(rng, shape) + 2.0)
    (gamma, rg), (beta, rb) = on(be, data(rng, (n,))), on(be, data(rng, (n,)))
    (mean, rm), (var, rv) = on(be, data(rng, (n,))), on(be, data(rng, (n,), positive=True))
    want = _batch_norm_reference(rx, rg, rb, rm, rv, 0.9, 1e-3)
    out, x_hat, inv_std = be.zeros(shape), be.zeros(shape), be.zeros((n,))
    got = be.batch_norm(x, gamma, beta, mean, var, 0.9, 1e-3, out, x_hat, inv_std)
    assert got[0] is out and got[1] is x_hat and got[2] is inv_std
    for g, w in zip((out, x_hat, inv_std, mean, var), want, strict=True):
        np.testing.assert_allclose(
            be.to_numpy(g), w, rtol=RTOL[be.dtype_name] * 10, atol=ATOL[be.dtype_name] * 10
        )


def test_batch_norm_backward_equals_finite_differences(backend64, rng):
    """dC/dx, dC/dgamma, dC/dbeta of C = sum(da * batch_norm(x)) (x's statistics moving
    with x) against central differences of the forward pass, in float64."""
    be, eps = backend64, 1e-6
    x, gamma, beta = data(rng, (6, 4)), data(rng, (4,)), data(rng, (4,))
    da = data(rng, (6, 4))

    def cost(x_, g_, b_):
        m, v = be.zeros((4,)), be.full((4,), 1.0)
        out, _, _ = be.batch_norm(be.asarray(x_), be.asarray(g_), be.asarray(b_), m, v, 0.9, 1e-3)
        return float((be.to_numpy(out) * da).sum())

    def numeric(index):
        args = [x.copy(), gamma.copy(), beta.copy()]
        grad = np.zeros_like(args[index])
        for k in np.ndindex(grad.shape):
            for sign in (1, -1):
                moved = [a.copy() for a in args]
                moved[index][k] += sign * eps
                grad[k] += sign * cost(*moved) / (2 * eps)
        return grad

    m, v = be.zeros((4,)), be.full((4,), 1.0)
    _, x_hat, inv_std = be.batch_norm(
        be.asarray(x), be.asarray(gamma), be.asarray(beta), m, v, 0.9, 1e-3
    )
    dx, dgamma, dbeta = be.batch_norm_backward(be.asarray(da), x_hat, be.asarray(gamma), inv_std)
    for got, index in ((dx, 0), (dgamma, 1), (dbeta, 2)):
        np.testing.assert_allclose(be.to_numpy(got), numeric(index), rtol=1e-6, atol=1e-8)


def test_batch_norm_backward_into_given_arrays(typed_backend, rng):
    be = typed_backend
    (x, rx), (gamma, rg) = on(be, data(rng)), on(be, data(rng, (5,)))
    (da, rda) = on(be, data(rng))
    _, x_hat, inv_std = be.batch_norm(
        x, gamma, be.zeros((5,)), be.zeros((5,)), be.zeros((5,)), 0.5, 1e-3
    )
    out, dgamma, dbeta = be.zeros((7, 5)), be.zeros((5,)), be.zeros((5,))
    got = be.batch_norm_backward(da, x_hat, gamma, inv_std, out, dgamma, dbeta)
    assert got == (out, dgamma, dbeta) or (got[0] is out and got[1] is dgamma and got[2] is dbeta)
    rx_hat = (rx - rx.mean(0)) / np.sqrt(rx.var(0) + 1e-3)
    n = 7
    want = (
        rg / np.sqrt(rx.var(0) + 1e-3) / n * (n * rda - rda.sum(0) - rx_hat * (rda * rx_hat).sum(0))
    )
    tol = {"rtol": RTOL[be.dtype_name] * 10, "atol": ATOL[be.dtype_name] * 10}
    np.testing.assert_allclose(be.to_numpy(out), want, **tol)
    np.testing.assert_allclose(be.to_numpy(dgamma), (rda * rx_hat).sum(0), **tol)
    np.testing.assert_allclose(be.to_numpy(dbeta), rda.sum(0), **tol)


def test_batch_norm_is_one_kernel_per_direction_on_cupy(rng):
    """On (emulated) CuPy each direction is one launch: statistics, normalization and the
    moving averages in the forward kernel, both reductions and dC/dx in the backward one."""
    from backends import emulated_cupy as ce

    be = ce.emulated_cupy_backend()
    x, gamma = be.asarray(data(rng, (32, 6))), be.asarray(data(rng, (6,)))
    beta, m, v = be.zeros((6,)), be.zeros((6,)), be.full((6,), 1.0)
    out, x_hat, inv_std, delta, dg, db = (
        be.empty(s) for s in [(32, 6)] * 2 + [(6,)] + [(32, 6)] + [(6,)] * 2
    )
    start = ce.launches()
    be.batch_norm(x, gamma, beta, m, v, 0.99, 1e-3, out, x_hat, inv_std)
    assert ce.launches() - start == 1
    start = ce.launches()
    be.batch_norm_backward(x, x_hat, gamma, inv_std, delta, dg, db)
    assert ce.launches() - start == 1
