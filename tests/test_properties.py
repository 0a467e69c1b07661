"""Property-based tests (hypothesis): every backend operation against its float64 NumPy
reference on random shapes, dtypes and memory layouts (contiguous, strided, transposed),
and save / load round trips of random models. Example counts are kept small so that the
suite stays fast; a failure prints the smallest example hypothesis found."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import ATOL, RTOL, make_backend, unavailable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_backend_conformance import (
    BACKWARD,
    BINARY,
    NONNEGATIVE_STATE,
    POSITIVE_ONLY,
    SCALARS,
    UNARY,
    _names,
)

import backprop
from backends.kernels import KERNELS
from backprop import Dense, Dropout, Sequential, load_model

EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# per operation (there are some 50 of them): fewer each, every one covered on every run
PER_OP = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAMES = [name for name in ("numpy", "strict", "cupy", "cupy-emulated") if name != "cupy"]
if unavailable("cupy") is None:
    NAMES.append("cupy")
_BACKENDS: dict[tuple[str, str], object] = {}


def backend_of(name, dtype):
    """One backend per (name, dtype) for all examples (hypothesis reruns a test's body, not
    its fixtures)."""
    if (name, dtype) not in _BACKENDS:
        _BACKENDS[name, dtype] = make_backend(name, dtype)
    return _BACKENDS[name, dtype]


dtypes = st.sampled_from(["float32", "float64"])
layouts = st.sampled_from(["contiguous", "strided", "transposed"])
shapes_2d = st.tuples(st.integers(1, 9), st.integers(1, 9))


@st.composite
def host_arrays(draw, shape, positive=False):
    """A float64 host array of `shape` laid out as drawn: contiguous, every other column of
    a wider array, or the transpose of a (cols, rows) array."""
    layout = draw(layouts)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows, cols = shape

    def values(s):
        x = rng.standard_normal(s) * draw(st.sampled_from([0.1, 1.0, 4.0]))
        return np.abs(x) + 0.1 if positive else x

    if layout == "strided":
        return values((rows, 2 * cols))[:, ::2]
    if layout == "transposed":
        return values((cols, rows)).T
    return values((rows, cols))


def on(be, host):
    """The host array rounded to the backend's dtype (keeping its layout on NumPy), on the
    backend, and its float64 twin for the reference."""
    dtype = be.dtype_name
    if host.flags.c_contiguous:
        rounded = host.astype(dtype)
    elif host.flags.f_contiguous:  # a transposed view
        rounded = np.asfortranarray(host, dtype=dtype)
    else:  # every other column of a wider array
        wide = np.zeros((host.shape[0], 2 * host.shape[1]), dtype=dtype)
        wide[:, ::2] = host
        rounded = wide[:, ::2]
    return be.asarray(rounded), rounded.astype(np.float64)


def close(be, got, expected):
    got = be.to_numpy(got)
    assert got.shape == np.shape(expected)
    dtype = be.dtype_name
    np.testing.assert_allclose(got, expected, rtol=RTOL[dtype], atol=ATOL[dtype])


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("backend_name", NAMES)
@PER_OP
@given(dtype=dtypes, shape=shapes_2d, data=st.data())
def test_unary_ops_equal_numpy(backend_name, name, dtype, shape, data):
    be = backend_of(backend_name, dtype)
    x, ref = on(be, data.draw(host_arrays(shape, positive=name in POSITIVE_ONLY)))
    close(be, getattr(be, name)(x), UNARY[name](ref))


@pytest.mark.parametrize("name", sorted(k for k in BINARY if BINARY[k] is not None))
@pytest.mark.parametrize("backend_name", NAMES)
@PER_OP
@given(dtype=dtypes, shape=shapes_2d, row=st.booleans(), data=st.data())
def test_binary_ops_equal_numpy(backend_name, name, dtype, shape, row, data):
    """Both operands of the drawn shape, or the second one a broadcast row (a bias)."""
    be = backend_of(backend_name, dtype)
    a, ra = on(be, data.draw(host_arrays(shape)))
    b, rb = on(be, data.draw(host_arrays((1, shape[1]) if row else shape, positive=True)))
    if row:
        b, rb = be.asarray(be.to_numpy(b)[0]), rb[0]
    close(be, getattr(be, name)(a, b), BINARY[name](ra, rb))


@pytest.mark.parametrize("name", sorted(BACKWARD))
@pytest.mark.parametrize("backend_name", NAMES)
@PER_OP
@given(dtype=dtypes, shape=shapes_2d, data=st.data())
def test_activation_backward_ops_equal_numpy(backend_name, name, dtype, shape, data):
    be = backend_of(backend_name, dtype)
    (z, rz), (da, rda) = (
        on(be, data.draw(host_arrays(shape))),
        on(be, data.draw(host_arrays(shape))),
    )
    forward = name.removesuffix("_backward")
    a = getattr(be, forward)(z)
    kept = z if forward == "softplus" else a
    close(be, getattr(be, name)(kept, da), BACKWARD[name](rz, rda))


@pytest.mark.parametrize("backend_name", NAMES)
@EXAMPLES
@given(
    dtype=dtypes,
    m=st.integers(1, 9),
    k=st.integers(1, 9),
    n=st.integers(1, 9),
    data=st.data(),
)
def test_matmul_equals_numpy(backend_name, dtype, m, k, n, data):
    """a @ b, and the transposed views backprop uses: a_prev.T @ delta and delta @ W.T."""
    be = backend_of(backend_name, dtype)
    (a, ra), (b, rb) = (
        on(be, data.draw(host_arrays((m, k)))),
        on(be, data.draw(host_arrays((k, n)))),
    )
    close_product(be, be.matmul(a, b), ra, rb)
    d, rd = on(be, data.draw(host_arrays((m, n))))
    close_product(be, be.matmul(a.T, d), ra.T, rd)
    close_product(be, be.matmul(d, b.T), rd, rb.T)


def close_product(be, got, ra, rb):
    """A product's entries against the reference within the rounding bound of a dot product
    of k terms, k eps (|a| @ |b|), beside the usual tolerances: where the terms cancel (a small
    entry from large terms) their rounding, not the entry, sets the error."""
    got, ra, rb = be.to_numpy(got), np.asarray(ra, np.float64), np.asarray(rb, np.float64)
    expected = ra @ rb
    assert got.shape == expected.shape
    dtype = be.dtype_name
    bound = ra.shape[1] * np.finfo(dtype).eps * (np.abs(ra) @ np.abs(rb))
    error = np.abs(got - expected)
    allowed = ATOL[dtype] + RTOL[dtype] * np.abs(expected) + bound
    assert np.all(error <= allowed), (error - allowed).max()


@pytest.mark.parametrize("backend_name", NAMES)
@EXAMPLES
@given(
    dtype=dtypes,
    shape=shapes_2d,
    name=st.sampled_from(["sum", "mean", "max", "argmax"]),
    axis=st.sampled_from([None, 0, 1, -1]),
    keepdims=st.booleans(),
    data=st.data(),
)
def test_reductions_equal_numpy(backend_name, dtype, shape, name, axis, keepdims, data):
    be = backend_of(backend_name, dtype)
    x, rx = on(be, data.draw(host_arrays(shape)))
    if name == "argmax":
        axis = 1 if axis is None else axis
        got = be.to_numpy(be.argmax(x, axis=axis, keepdims=keepdims))
        np.testing.assert_array_equal(got, np.argmax(rx, axis=axis, keepdims=keepdims))
        return
    close(
        be,
        getattr(be, name)(x, axis=axis, keepdims=keepdims),
        getattr(np, name)(rx, axis=axis, keepdims=keepdims),
    )


def _table_case(key, dtype, shape, data):
    """Inputs and outputs of the table's job `key` by name (host arrays of `shape` in
    `dtype`, in drawn layouts; scalars rounded to dtype), as in the conformance test."""
    kernel = KERNELS[key]
    ins = {}
    for name in _names(kernel.cuda.in_params):
        if name in kernel.arrays:
            ins[name] = data.draw(host_arrays(shape)).astype(dtype)
        elif name == "key":
            ins[name] = np.array(data.draw(st.tuples(*[st.integers(0, 2**32 - 1)] * 2)), np.uint32)
        else:
            ins[name] = float(np.dtype(dtype).type(SCALARS[name]))
    if key == "dropout":
        one = np.dtype(dtype).type(1)
        ins["scale"] = float(one / (one - np.dtype(dtype).type(ins["rate"])))
    outs = {}
    for name in _names(kernel.cuda.out_params):
        if name in NONNEGATIVE_STATE:
            outs[name] = np.ascontiguousarray(data.draw(host_arrays(shape, positive=True)), dtype)
        elif name in ("param", "velocity", "m"):
            outs[name] = np.ascontiguousarray(data.draw(host_arrays(shape)), dtype)
        else:
            outs[name] = np.zeros(shape, dtype=dtype)
    return ins, outs


@pytest.mark.parametrize("key", sorted(KERNELS))
@pytest.mark.parametrize("backend_name", NAMES)
@PER_OP
@given(dtype=dtypes, shape=shapes_2d, data=st.data())
def test_table_jobs_equal_their_reference(backend_name, key, dtype, shape, data):
    """Every entry of backends/kernels.py, through each backend's method (NumPy's threaded
    form, the generic one, CuPy's kernel), against the entry's float64 reference."""
    be = backend_of(backend_name, dtype)
    ins, outs = _table_case(key, dtype, shape, data)
    outs64 = {n: np.array(x, dtype=np.float64) for n, x in outs.items()}
    ins64 = {n: np.array(x, np.float64) if n in KERNELS[key].arrays else x for n, x in ins.items()}
    KERNELS[key].reference(np, *ins64.values(), *outs64.values())
    args = {n: be.asarray(x) if isinstance(x, np.ndarray) else x for n, x in ins.items()}
    if "param" in outs:
        state = {n: be.asarray(x) for n, x in outs.items()}
        param, *rest = state.values()
        scalars = [x for n, x in args.items() if n != "grad"]
        extra = {"nesterov": True} if key == "nesterov_update" else {}
        method = key.replace("nesterov", "momentum")
        getattr(be, method)(param, args["grad"], *rest, *scalars, **extra)
        results = state
    elif key == "dropout":
        results = dict(zip(outs, be.dropout(args["x"], args["key"], args["rate"]), strict=True))
    else:
        (name,) = outs
        results = {name: getattr(be, key)(*args.values())}
    for name, got in results.items():
        close(be, got, outs64[name])


# --------------------------------------------------------------------------- save / load
ACTIVATIONS = ["linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "softplus"]
OPTIMIZERS = [
    lambda: backprop.SGD(0.05, momentum=0.9, nesterov=True),
    lambda: backprop.SGD(0.05),
    lambda: backprop.Adagrad(0.05),
    lambda: backprop.RMSprop(0.01, global_clipnorm=1.0),
    lambda: backprop.Adam(learning_rate=backprop.ExponentialDecay(0.01, 3, 0.5)),
    lambda: backprop.AdamW(learning_rate=backprop.CosineDecay(0.01, 10), weight_decay=0.1),
]


@st.composite
def models(draw):
    """A random Sequential: 1-3 hidden Dense layers of 1-8 units (any activation, maybe L2),
    maybe a Dropout after each, a softmax output; float32 or float64; compiled with a
    drawn optimizer, or not compiled."""
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        l2 = draw(st.sampled_from([0.0, 1e-3]))
        layers.append(Dense(draw(st.integers(1, 8)), draw(st.sampled_from(ACTIVATIONS)), l2=l2))
        if draw(st.booleans()):
            layers.append(Dropout(draw(st.sampled_from([0.1, 0.5])), seed=draw(st.integers(0, 99))))
    layers.append(Dense(draw(st.integers(2, 4)), "softmax"))
    model = Sequential(
        layers,
        input_dim=draw(st.integers(1, 6)),
        dtype=draw(dtypes),
        seed=draw(st.integers(0, 2**16)),
    )
    if draw(st.booleans()):
        model.compile(
            loss="sparse_categorical_crossentropy", optimizer=draw(st.sampled_from(OPTIMIZERS))()
        )
    return model


def _data_for(model, seed):
    rng = np.random.default_rng(seed)
    n_out = model.layers[-1].units
    return rng.standard_normal((12, model.input_dim)), rng.integers(0, n_out, 12)


@EXAMPLES
@given(model=models(), seed=st.integers(0, 2**16), epochs=st.integers(0, 2))
def test_save_load_round_trip_of_random_models(model, seed, epochs):
    """After 0-2 epochs, a saved and loaded model equals the original: the layers' configs,
    weights, layer states (Dropout's keys), optimizer config, step count and state, and its
    predictions; and training both one more epoch gives the same weights."""
    x, y = _data_for(model, seed)
    compiled = model.optimizer is not None
    if compiled and epochs:
        model.fit(x, y, epochs=epochs, batch_size=5, verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / "m.npz")
        loaded = load_model(Path(tmp) / "m.npz")
    assert [layer.config() for layer in loaded.layers] == [layer.config() for layer in model.layers]
    assert loaded.dtype == model.dtype
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(loaded.network.states, model.network.states, strict=True):
        np.testing.assert_array_equal(loaded.backend.to_numpy(got), model.backend.to_numpy(want))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    if not compiled:
        assert loaded.optimizer is None
        return
    assert loaded.optimizer.config() == model.optimizer.config()
    assert loaded.optimizer.iterations == model.optimizer.iterations
    for got, want in zip(loaded.optimizer.state, model.optimizer.state, strict=True):
        assert got.keys() == want.keys()
        for slot in got:
            np.testing.assert_array_equal(got[slot], want[slot])
    model.fit(x, y, epochs=1, batch_size=5, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=5, verbose=0)
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
