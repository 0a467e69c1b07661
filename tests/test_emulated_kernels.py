"""CuPy kernels run on the emulated CuPy (backends/emulated_cupy.py), which interprets each
ElementwiseKernel's CUDA-C text: the two bias-gradient kernels (one warp per column; two
passes over row tiles for tall, narrow arrays) against NumPy, the choice between them, and
the translator's handling of what it can and cannot translate."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from backends import emulated_cupy as ce
from backends.cupy_backend import SPECS, TILED_MIN_ROWS, bias_grad_tiles

# backward job: (its arguments from z and da on the backend, its NumPy reference)
JOBS = {
    "sigmoid_backward": (
        lambda be, z, da: (be.sigmoid(z), da),
        lambda z, da: da / (1 + np.exp(-z)) * (1 - 1 / (1 + np.exp(-z))),
    ),
    "scaled_difference": (lambda be, z, da: (z, da, 0.125), lambda z, da: (z - da) * 0.125),
    "elu_backward": (
        lambda be, z, da: (z, be.elu(z, 0.5), da, 0.5),
        lambda z, da: np.where(z > 0, da, da * 0.5 * np.exp(z)),
    ),
}
TALL = [(60000, 10), (8192, 16), (TILED_MIN_ROWS, 32), (4100, 3), (5000, 1)]
OTHER = [(1024, 1024), (128, 10), (TILED_MIN_ROWS - 1, 1), (100, 10), (33, 40), (1, 3)]
RTOL = {"float32": 2e-6, "float64": 1e-13}


def test_the_choice_is_tiled_for_tall_narrow_arrays_only():
    """60,000 x 10 (an output layer over MNIST) and 8,192 x 16 get row tiles, a multiple of
    32 near sqrt(32 rows); a square 1,024 x 1,024 and a batch of 128 x 10 keep one warp per
    column."""
    assert bias_grad_tiles(60000, 10) == 1408  # 32 * ceil(sqrt(60,000 / 32) = 43.3)
    assert bias_grad_tiles(8192, 16) == 512  # 32 * sqrt(8,192 / 32)
    assert bias_grad_tiles(1024, 1024) == 0
    assert bias_grad_tiles(128, 10) == 0
    for shape in TALL:
        tiles = bias_grad_tiles(*shape)
        assert tiles > 0 and tiles % 32 == 0, shape
    for shape in OTHER:
        assert bias_grad_tiles(*shape) == 0, shape


def _case(be, name, shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape).astype(dtype)
    da = rng.standard_normal(shape).astype(dtype)
    expected = JOBS[name][1](z.astype(np.float64), da.astype(np.float64))
    return JOBS[name][0](be, be.asarray(z), be.asarray(da)), expected


def _check_db(db, expected, dtype):
    """db equals the float64 column sums within the rounding of a sum of many terms, which
    scales with the sum of their magnitudes."""
    bound = 4 * RTOL[dtype] * (np.abs(expected).sum(axis=0) + 1)
    error = np.abs(db.astype(np.float64) - expected.sum(axis=0))
    assert np.all(error <= bound), (error.max(), bound.min())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", TALL + OTHER)
@pytest.mark.parametrize("name", sorted(JOBS))
def test_bias_grad_equals_numpy(name, shape, dtype):
    """delta as the elementwise reference, db as its column sums, whichever kernel the shape
    picks; the tiled kernel takes two launches, the warp kernel one."""
    be = ce.emulated_cupy_backend(dtype)
    args, expected = _case(be, name, shape, dtype, seed=sum(shape))
    out, db = be.empty(shape), be.full((shape[1],), 7.0)
    before = ce.launches()
    assert getattr(be, name)(*args, out=out, bias_grad=db) is out
    assert ce.launches() - before == (2 if bias_grad_tiles(*shape) else 1)
    np.testing.assert_allclose(be.to_numpy(out), expected, rtol=RTOL[dtype], atol=RTOL[dtype])
    _check_db(be.to_numpy(db), expected, dtype)


def test_tiled_kernels_run_their_own_text():
    """The backend's launches on a tall array are the tiled kernel and the column sums of its
    tiles (not the warp kernel), each interpreted from its CUDA text."""
    be = ce.emulated_cupy_backend()
    names = []
    real = ce.ElementwiseKernel.__call__

    def spy(self, *args, **kwargs):
        names.append(self.name)
        return real(self, *args, **kwargs)

    args, _ = _case(be, "scaled_difference", (60000, 10), "float32")
    ce.ElementwiseKernel.__call__ = spy
    try:
        be.scaled_difference(*args, bias_grad=be.empty((10,)))
        be.scaled_difference(*args[:2], 0.5, bias_grad=be.empty((10,)))
        square, _ = _case(be, "scaled_difference", (1024, 1024), "float32")
        be.scaled_difference(*square, bias_grad=be.empty((1024,)))
    finally:
        ce.ElementwiseKernel.__call__ = real
    tiled = SPECS["scaled_difference_tiled_bias_grad"].name
    sums = SPECS["column_sums_of_tiles"].name
    assert names == [tiled, sums, tiled, sums, SPECS["scaled_difference_bias_grad"].name]


def test_tiled_bias_grad_is_reproducible_and_keeps_one_scratch_buffer():
    """The same inputs give the same bits (a fixed summation order); the partial sums'
    buffer is made once per size and reused."""
    be = ce.emulated_cupy_backend()
    args, _ = _case(be, "sigmoid_backward", (8192, 16), "float32")
    db1, db2 = be.empty((16,)), be.empty((16,))
    be.sigmoid_backward(*args, bias_grad=db1)
    be.sigmoid_backward(*args, bias_grad=db2)
    np.testing.assert_array_equal(be.to_numpy(db1), be.to_numpy(db2))
    assert len(be._scratch) == 1


def test_tiled_bias_grad_is_captured_and_replayed():
    """A captured step using the tiled kernel allocates nothing while capturing (the partials
    buffer comes from the warm-up) and its replays follow new inputs."""
    be = ce.emulated_cupy_backend()
    rng = np.random.default_rng(1)
    a, da = be.asarray(rng.random((6000, 10))), be.asarray(rng.standard_normal((6000, 10)))
    out, db = be.empty((6000, 10)), be.empty((10,))
    replay = be.capture(lambda: be.sigmoid_backward(a, da, out=out, bias_grad=db))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to eager steps would warn
        for _ in range(4):  # warm-up, capture and launch, then two replays
            A, dA = rng.random((6000, 10)), rng.standard_normal((6000, 10))
            a[...], da[...] = be.asarray(A), be.asarray(dA)
            replay()
            expected = dA * A * (1 - A)
            np.testing.assert_allclose(be.to_numpy(out), expected, rtol=1e-6, atol=1e-7)
            _check_db(be.to_numpy(db), expected, "float32")
    assert replay.mode == "graph" and replay.graph is not None
    assert len(be._scratch) == 1


# --------------------------------------------------------------------------- the translator
def _run(operation, x):
    cp = ce.fake_cupy()
    y = ce.ElementwiseKernel("T x", "T y", operation, "bp_test")(cp.asarray(x))
    return cp.asnumpy(y)


X = np.array([-2.0, -0.5, 0.0, 0.5, 2.0])


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        # right-associative: a ? b : (c ? d : e)
        ("y = x < T(-1) ? T(-1) : x < T(1) ? T(0) : T(1);", [-1, 0, 0, 0, 1]),
        # a ternary inside the true branch: a ? (b ? c : d) : e
        ("y = x < T(0) ? x < T(-1) ? T(-2) : T(-1) : T(1);", [-2, -1, 1, 1, 1]),
        # three deep, in parentheses too
        ("y = (x < T(-1) ? T(1) : x < T(0) ? T(2) : x < T(1) ? T(3) : T(4)) * T(2);",
         [2, 4, 6, 6, 8]),
        # *= like += and -=: ((x + 1) * 3 - x) * 2
        ("y = x + T(1); y *= T(3); y -= x; y *= T(2);", 2 * ((X + 1) * 3 - X)),
    ],
)  # fmt: skip
def test_translator_runs_chained_ternaries_and_times_equals(operation, expected):
    np.testing.assert_array_equal(_run(operation, X), expected)


def test_translator_multiplies_a_raw_element_in_place():
    cp = ce.fake_cupy()
    a = cp.asarray(np.arange(4.0))
    kernel = ce.ElementwiseKernel("T s", "raw T a", "a[i] *= s;", "bp_test")
    kernel(3.0, a, size=4)
    np.testing.assert_array_equal(cp.asnumpy(a), [0, 3, 6, 9])


@pytest.mark.parametrize(
    ("operation", "named"),
    [
        ("y = x > T(0) && x < T(1) ? x : T(0);", "logical && or ||"),
        ("y = x > T(0) || x < T(1) ? x : T(0);", "logical && or ||"),
        ("y = !x;", r"logical not \(!\)"),
        ("y = --x;", r"increment or decrement"),
        ("y = x; y /= T(2);", r"compound assignment other than \+=, -=, \*=, '/='"),
        ("y = x; y <<= 1;", "compound assignment"),
        ("y = (float)x;", "a C cast"),
        ("y = x * 2.0f;", "a literal with a type suffix, '2.0f'"),
        ("y = x > T(0) ? x;", "a '\\?' without its ':'"),
        ("y = x : T(0);", "a ':' without its '\\?'"),
        ("for (ptrdiff_t j = 0; j < 3; j++) { y = x; }", "cannot translate the loop"),
        ("int y = x;", "cannot translate the statement"),
    ],
)
def test_translator_refuses_what_it_cannot_translate(operation, named):
    with pytest.raises(ce.TranslationError, match=named):
        _run(operation, X)


# --------------------------------------------------------------------------- warp shuffles
def _shuffle(mask, delta, dtype="float32"):
    """Each of 64 threads (two warps) reads `x` of the lane `delta` below it."""
    cp = ce.fake_cupy()
    x, y = cp.asarray(np.arange(64, dtype=dtype)), cp.asarray(np.zeros(64, dtype=dtype))
    operation = f"y[i] = __shfl_down_sync({mask}, x[i], {delta});"
    ce.ElementwiseKernel("raw T x", "raw T y", operation, "bp_test")(x, y, size=64)
    return cp.asnumpy(y)


def test_shuffle_down_with_the_full_mask():
    """Lane l gets lane l + 4's value; the last four lanes of each warp keep their own (no
    lane 32 in a warp), so values never cross from one warp into the next."""
    lane = np.arange(64) % 32
    expected = np.arange(64) + np.where(lane < 28, 4, 0)
    np.testing.assert_array_equal(_shuffle("0xffffffff", 4), expected)


@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_shuffle_outside_its_mask_reads_garbage(dtype):
    """With only lanes 0-15 in the mask, lanes 0-11 read lanes 4-15 as before; lanes 12-15
    read lanes outside the mask and lanes 16-31 are outside it themselves: undefined on a
    GPU, garbage (NaN, or an integer's largest value) here."""
    got = _shuffle("0x0000ffff", 4, dtype)
    lane = np.arange(64) % 32
    defined = lane < 12
    np.testing.assert_array_equal(got[defined], np.arange(64)[defined] + 4)
    garbage = np.nan if dtype == "float32" else np.iinfo(dtype).max
    np.testing.assert_array_equal(got[~defined], np.full((~defined).sum(), garbage, dtype=dtype))


def test_bias_grad_kernel_with_a_narrowed_shuffle_mask_is_wrong():
    """The warp sum with a 16-lane mask (lanes 16-31 left out) gives garbage db here, as it
    does on a GPU, so test_bias_grad_equals_numpy fails on such a kernel; the real one is
    right."""
    cp = ce.fake_cupy()
    spec = SPECS["scaled_difference_bias_grad"]
    rows, n = 100, 3
    rng = np.random.default_rng(0)
    z, da = rng.standard_normal((rows, n)), rng.standard_normal((rows, n))
    for mask, ok in (("0xffffffff", True), ("0x0000ffff", False)):
        operation = spec.operation.replace("0xffffffff", mask)
        kernel = ce.ElementwiseKernel(spec.in_params, spec.out_params, operation, spec.name)
        out, db = cp.zeros((rows, n), dtype="float32"), cp.zeros(n, dtype="float32")
        args = (cp.asarray(z, dtype="float32"), cp.asarray(da, dtype="float32"), 0.5)
        kernel(*args, rows, n, out, db, size=32 * n)
        expected = ((z - da) * 0.5).sum(axis=0)
        if ok:
            np.testing.assert_allclose(cp.asnumpy(db), expected, rtol=1e-5)
        else:
            assert np.isnan(cp.asnumpy(db)).all()


# --------------------------------------------------------------------------- double literals
@pytest.mark.parametrize("literal", ["0.5", "2.", ".25", "1e-8", "1.5E+3"])
def test_a_double_literal_in_a_float_kernel_is_refused(literal):
    """`x * 0.5` in a float kernel computes in double on a GPU; the translator names it
    (NVRTC would compile it without a word). In a double kernel it is what it says."""
    operation = f"y = x * {literal};"
    with pytest.raises(ce.TranslationError, match=f"double literal '{re.escape(literal)}'"):
        _run(operation, X.astype(np.float32))
    np.testing.assert_array_equal(_run(operation, X), X * float(literal))


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("y = x * T(0.5);", X * 0.5),
        ("y = x * T( -1.5 ) + T(1e-8);", X * -1.5 + 1e-8),
        ("y = x * 2 + T(3);", X * 2 + 3),  # integer literals are not doubles
        ("y = x * T(.5);", X * 0.5),
    ],
)
def test_float_kernels_may_cast_double_literals_to_t(operation, expected):
    got = _run(operation, X.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_kernel_is_single_precision_in_float(key):
    """The check NVRTC's PTX makes (no .f64 in a float kernel), without NVRTC: every kernel
    text of the backend passes the translator's double-literal check."""
    ce.check_single_precision(SPECS[key].operation, SPECS[key].name)
