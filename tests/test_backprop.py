"""Batch backpropagation: finite-difference checks for every activation x loss pairing, a
hand-worked network, the output-delta shortcuts, initial weights, and cross-backend equality."""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pytest
from conftest import make_backend

from backprop import (
    ACTIVATIONS,
    LOSSES,
    Dense,
    Maxout,
    Sequential,
    check_gradients,
    get_activation,
    get_loss,
)

GRADCHECK_TOL = 1e-6  # max relative error per parameter array, float64 central differences
FLOAT32_RTOL, FLOAT32_ATOL = 1e-4, 1e-6  # float32 results across backends


def make_targets(loss_name, n, n_out, rng):
    """Random targets of the kind `loss_name` expects."""
    loss = get_loss(loss_name)
    labels = rng.integers(0, n_out, n)
    if loss.targets == "labels":
        return labels
    if loss.targets == "one_hot":
        return np.eye(n_out)[labels]
    if loss.targets == "binary":
        return rng.uniform(0.0, 1.0, (n, n_out))
    return rng.standard_normal((n, n_out))


def output_activation_for(activation, loss_name):
    """The activation under test is the output activation wherever the loss is defined for
    it; cross-entropies need probabilities, so other activations get softmax (categorical)
    or sigmoid (binary) at the output and are tested in the hidden layers only."""
    targets = get_loss(loss_name).targets
    if targets in ("one_hot", "labels") and activation not in ("softmax", "sigmoid"):
        return "softmax"
    if targets == "binary" and activation not in ("softmax", "sigmoid"):
        return "sigmoid"
    return activation


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_gradient_check_every_activation_and_loss(backend64, activation, loss_name):
    rng = np.random.default_rng(zlib.crc32(f"{activation} {loss_name}".encode()))
    depth = 2 + (len(activation) + len(loss_name)) % 2  # 2- and 3-layer networks
    # Random biases: with zero biases a ReLU unit fed only zeros sits exactly on its kink at
    # z = 0, where a central difference straddles the kink and no derivative exists.
    hidden = [Dense(4, activation, bias_initializer="normal") for _ in range(depth - 1)]
    out = Dense(3, output_activation_for(activation, loss_name), bias_initializer="normal")
    model = Sequential(
        [*hidden, out],
        input_dim=3,
        backend=backend64,
        dtype="float64",
        seed=int(rng.integers(1000)),
    )
    x = rng.standard_normal((5, 3))
    y = make_targets(loss_name, 5, 3, rng)
    errors = check_gradients(model, x, y, loss=loss_name)
    assert len(errors) == 2 * depth
    assert max(errors) < GRADCHECK_TOL, errors


def test_gradient_check_maxout_with_three_pieces_and_l2(backend64, rng):
    model = Sequential(
        [Dense(3, Maxout(3), l2=0.01), Dense(2, "softmax", l2=0.1)],
        input_dim=4,
        backend=backend64,
        dtype="float64",
        seed=3,
    )
    assert model.params[0].shape == (4, 9)
    x, y = rng.standard_normal((6, 4)), rng.integers(0, 2, 6)
    assert max(check_gradients(model, x, y, loss="sparse_categorical_crossentropy")) < 1e-6


def test_gradient_check_detects_a_wrong_gradient(backend64, rng, monkeypatch):
    """The check can fail: a sigmoid derivative off by a factor shows up as a large error."""
    model = Sequential(
        [Dense(3, "sigmoid"), Dense(2)], input_dim=2, backend=backend64, dtype="float64", seed=0
    )
    act = model.layers[0].activation
    right = act.backward

    def wrong(be, z, a, da, out=None, bias_grad=None):
        delta = right(be, z, a, da) * 1.1
        if bias_grad is not None:
            be.sum(delta, axis=0, out=bias_grad)
        return delta

    monkeypatch.setattr(act, "backward", wrong)
    errors = check_gradients(
        model, rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), loss="mse"
    )
    assert errors[0] > 0.05 and errors[1] > 0.05  # layer 1's W and b are wrong
    assert errors[2] < 1e-6 and errors[3] < 1e-6  # the output layer is still right


def test_check_gradients_needs_float64(backend):
    model = Sequential([Dense(2)], input_dim=2, backend=backend)
    with pytest.raises(ValueError, match="needs a float64 model"):
        check_gradients(model, np.ones((1, 2)), np.ones((1, 2)), loss="mse")


def test_hand_worked_2_2_1_sigmoid_mse(backend64):
    """A 2-2-1 sigmoid network, one sample x = [1, 2], target y = 1, MSE; by the chain rule:

    z1 = x W1 + b1 = [1*0.5 + 2*0.25 + 0, 1*(-0.5) + 2*0 + 0.5] = [1, 0]
    a1 = sigmoid(z1) = [0.7310585786300049, 0.5]
    z2 = a1 W2 + b2 = 0.7310585786300049 * 1 + 0.5 * (-2) + 0.5 = 0.2310585786300049
    a2 = sigmoid(z2) = 0.5575090141074611
    C  = (a2 - y)^2 / (batch * n_out) = 0.4424909858925389^2 = 0.19579827259615104
    dC/da2 = 2 (a2 - y) = -0.8849819717850778
    delta2 = dC/da2 * a2 (1 - a2) = -0.8849819717850778 * 0.24669... = -0.2183186038380482
    dW2 = a1^T delta2 = [0.7310585786300049, 0.5] * delta2
        = [-0.15960368821033064, -0.1091593019190241];   db2 = delta2
    da1 = delta2 W2^T = [-0.2183186038380482, 0.4366372076760964]
    delta1 = da1 * a1 (1 - a1) = [-0.2183186 * 0.1966119, 0.4366372 * 0.25]
           = [-0.04292404276317985, 0.1091593019190241]
    dW1 = x^T delta1 = [[1 * delta1], [2 * delta1]];   db1 = delta1
    """
    model = Sequential(
        [Dense(2, "sigmoid"), Dense(1, "sigmoid")], input_dim=2, backend=backend64, dtype="float64"
    )
    model.set_weights(
        [
            np.array([[0.5, -0.5], [0.25, 0.0]]),
            np.array([0.0, 0.5]),
            np.array([[1.0], [-2.0]]),
            np.array([0.5]),
        ]
    )
    x, y = np.array([[1.0, 2.0]]), np.array([[1.0]])
    assert model.cost(x, y, loss="mse") == pytest.approx(0.19579827259615104, rel=1e-14)
    dW1, db1, dW2, db2 = model.gradients(x, y, loss="mse")
    delta1 = [-0.04292404276317985, 0.1091593019190241]
    np.testing.assert_allclose(dW2, [[-0.15960368821033064], [-0.1091593019190241]], rtol=1e-13)
    np.testing.assert_allclose(db2, [-0.2183186038380482], rtol=1e-13)
    np.testing.assert_allclose(dW1, [delta1, [2 * d for d in delta1]], rtol=1e-13)
    np.testing.assert_allclose(db1, delta1, rtol=1e-13)


@pytest.mark.parametrize(
    "activation, loss_name",
    [
        ("softmax", "categorical_crossentropy"),
        ("softmax", "sparse_categorical_crossentropy"),
        ("sigmoid", "binary_crossentropy"),
    ],
)
def test_shortcut_equals_general_path(backend64, rng, activation, loss_name):
    """The closed-form delta^L of the canonical pairings equals dC/da through f'(z)."""
    loss = get_loss(loss_name)
    assert loss.shortcut(get_activation(activation)) is not None
    model = Sequential(
        [Dense(4, "tanh"), Dense(3, activation)],
        input_dim=3,
        backend=backend64,
        dtype="float64",
        seed=5,
    )
    x = rng.standard_normal((8, 3))
    y = make_targets(loss_name, 8, 3, rng)
    fused = model.gradients(x, y, loss=loss_name, shortcut=True)
    general = model.gradients(x, y, loss=loss_name, shortcut=False)
    for f, g in zip(fused, general, strict=True):
        np.testing.assert_allclose(f, g, rtol=1e-10, atol=1e-14)


def test_softmax_with_mse_is_the_jacobian_product(backend64):
    """The seeds' pairing: softmax output, MSE loss, no shortcut. For one sample with
    z = [0, ln 3] (a = [1/4, 3/4]) and y = [0, 1]:
    dC/da = 2 (a - y) / 2 = [1/4, -1/4];  sum(dC/da * a) = 1/16 - 3/16 = -1/8
    delta = a * (dC/da + 1/8) = [1/4 * 3/8, 3/4 * (-1/8)] = [3/32, -3/32]."""
    model = Sequential([Dense(2, "softmax")], input_dim=1, backend=backend64, dtype="float64")
    model.set_weights([np.array([[0.0, np.log(3.0)]]), np.zeros(2)])
    dW, db = model.gradients(np.array([[1.0]]), np.array([[0.0, 1.0]]), loss="mse")
    np.testing.assert_allclose(db, [3 / 32, -3 / 32], rtol=1e-14)
    np.testing.assert_allclose(dW, [[3 / 32, -3 / 32]], rtol=1e-14)


def test_the_shortcut_keeps_a_saturated_softmax_finite(backend64):
    """z = [0, 800]: a = [0, 1] exactly (e^-800 underflows), y = [1, 0]. The closed form gives
    delta = a - y = [-1, 1]. The general path, the Jacobian product a * (dC/da - sum(dC/da a)),
    multiplies a's 0 by dC/da's (clipped) -1/a and gives 0: the unit never learns."""
    model = Sequential([Dense(2, "softmax")], input_dim=1, backend=backend64, dtype="float64")
    model.set_weights([np.array([[0.0, 800.0]]), np.zeros(2)])
    x, y = np.array([[1.0]]), np.array([[1.0, 0.0]])
    dW, db = model.gradients(x, y, loss="categorical_crossentropy")
    np.testing.assert_array_equal(db, [-1.0, 1.0])
    np.testing.assert_array_equal(dW, [[-1.0, 1.0]])
    dW, db = model.gradients(x, y, loss="categorical_crossentropy", shortcut=False)
    np.testing.assert_array_equal(db, [0.0, 0.0])
    np.testing.assert_array_equal(dW, [[0.0, 0.0]])
    # the output layer called directly takes the shortcut by default
    layer, be = model.layers[0], backend64
    layer.forward(be.asarray(x))
    layer.output_backward(get_loss("categorical_crossentropy"), be.asarray(y))
    np.testing.assert_array_equal(be.to_numpy(layer.delta), [[-1.0, 1.0]])


def test_same_seed_same_initial_weights_on_every_backend(backend_name):
    be = make_backend(backend_name, "float32")

    def layers():
        return [
            Dense(5, "relu", kernel_initializer="he_normal"),
            Dense(4, "sigmoid", kernel_initializer="normal"),
            Dense(3, "softmax"),
        ]

    reference = Sequential(layers(), input_dim=6, backend="numpy", seed=42).get_weights()
    ours = Sequential(layers(), input_dim=6, backend=be, seed=42).get_weights()
    for r, o in zip(reference, ours, strict=True):
        assert o.dtype == np.float32
        np.testing.assert_array_equal(o, r)  # bit-identical
    other = Sequential(layers(), input_dim=6, backend=be, seed=43).get_weights()
    assert not np.array_equal(other[0], ours[0])


def test_layers_draw_their_weights_in_order_from_the_models_generator():
    """W1, then b1 (one row of `units` values), then W2, each from the seeded generator in
    turn: a layer that drew more or fewer numbers would change every layer after it."""
    from backprop.initializers import get_initializer, host_generators

    rng = host_generators(3)[0]
    glorot, normal = get_initializer("glorot_uniform"), get_initializer("normal")
    want = [glorot(rng, 4, 3), normal(rng, 1, 3)[0], glorot(rng, 3, 2), np.zeros(2)]
    model = Sequential([Dense(3, bias_initializer="normal"), Dense(2)], input_dim=4, seed=3)
    got = model.get_weights()
    assert [w.shape for w in got] == [(4, 3), (3,), (3, 2), (2,)]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_initializer_statistics():
    n_in, n_out = 400, 300

    def W(init):
        return Sequential(
            [Dense(n_out, kernel_initializer=init)],
            input_dim=n_in,
            seed=0,
        ).get_weights()[0]

    limit = np.sqrt(6 / (n_in + n_out))
    g = W("glorot_uniform")
    assert g.min() >= -limit and g.max() <= limit and g.std() == pytest.approx(limit / 3**0.5, 0.02)
    assert W("he_normal").std() == pytest.approx(np.sqrt(2 / n_in), rel=0.02)
    assert W("normal").std() == pytest.approx(1 / np.sqrt(n_in), rel=0.02)
    assert np.all(W("zeros") == 0)
    assert np.all(Sequential([Dense(3)], input_dim=2, seed=0).get_weights()[1] == 0)


@pytest.mark.parametrize("loss_name", ["mse", "categorical_crossentropy"])
def test_forward_and_gradients_match_numpy_in_float32(backend, rng, loss_name):
    layers = lambda: [Dense(16, "relu"), Dense(8, "tanh"), Dense(4, "softmax")]  # noqa: E731
    x = rng.standard_normal((32, 10)).astype(np.float32)
    y = np.eye(4)[rng.integers(0, 4, 32)]
    ref = Sequential(layers(), input_dim=10, backend="numpy", seed=7)
    ours = Sequential(layers(), input_dim=10, backend=backend, seed=7)
    assert ours.cost(x, y, loss_name) == pytest.approx(ref.cost(x, y, loss_name), rel=1e-5)
    for r, o in zip(ref.gradients(x, y, loss_name), ours.gradients(x, y, loss_name), strict=True):
        np.testing.assert_allclose(o, r, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)


# --------------------------------------------------------------------------- bad input
@pytest.fixture
def small(backend):
    return Sequential([Dense(4, "relu"), Dense(3, "softmax")], input_dim=5, backend=backend, seed=0)


def test_wrong_feature_count(small):
    with pytest.raises(ValueError, match=r"x has 4 features per sample but the model expects 5"):
        small.gradients(np.ones((2, 4)), np.eye(3)[:2], loss="categorical_crossentropy")


def test_one_dimensional_x(small):
    with pytest.raises(ValueError, match=r"shape \(n_samples, n_features\).*reshape\(1, -1\)"):
        small.gradients(np.ones(5), np.eye(3)[:1], loss="categorical_crossentropy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_x(small, bad):
    x = np.ones((2, 5))
    x[1, 3] = bad
    with pytest.raises(
        ValueError,
        match=r"x contains NaN or infinite values \(first at row 1, "
        r"column 3\)",
    ):
        small.gradients(x, np.eye(3)[:2], loss="categorical_crossentropy")


def test_huge_but_finite_x_is_accepted(small):
    """Finiteness is checked with one sum; a sum that overflows on finite data falls back to
    the exact check instead of rejecting the data."""
    x = np.full((2, 5), 3e38, dtype=np.float32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(x.sum())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the network itself overflows on such inputs
        grads = small.gradients(x, np.eye(3)[:2], loss="categorical_crossentropy")
    assert [g.shape for g in grads] == [w.shape for w in small.get_weights()]
    x[1, 4] = np.inf  # the same data with one infinity is still refused
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        small.gradients(x, np.eye(3)[:2], loss="categorical_crossentropy")


def test_non_finite_x_on_the_backend(small, backend):
    x = np.ones((2, 5), dtype=np.float32)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="x contains NaN or infinite values"):
        small.gradients(backend.asarray(x), np.eye(3)[:2], loss="categorical_crossentropy")


def test_labels_out_of_range(small):
    with pytest.raises(ValueError, match=r"labels outside \[0, 2\].*3 outputs.*found 3"):
        small.gradients(
            np.ones((3, 5)), np.array([0, 3, 1]), loss="sparse_categorical_crossentropy"
        )
    with pytest.raises(ValueError, match=r"labels outside \[0, 2\].*found -1"):
        small.gradients(np.ones((2, 5)), np.array([-1, 0]), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="must hold integer class labels"):
        small.gradients(np.ones((2, 5)), np.array([0.5, 1]), loss="sparse_categorical_crossentropy")


def test_y_of_the_wrong_shape(small):
    with pytest.raises(ValueError, match=r"y must have shape \(2, 3\).*got shape \(2, 4\)"):
        small.gradients(np.ones((2, 5)), np.ones((2, 4)), loss="mse")
    with pytest.raises(ValueError, match="use sparse_categorical_crossentropy"):
        small.gradients(np.ones((2, 5)), np.array([0, 1]), loss="categorical_crossentropy")
    with pytest.raises(ValueError, match="y has 3 samples but x has 2"):
        small.gradients(np.ones((2, 5)), np.eye(3), loss="mse")
    with pytest.raises(ValueError, match=r"y must be integer class labels of shape \(2,\)"):
        small.gradients(np.ones((2, 5)), np.eye(3)[:2], loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        small.gradients(np.ones((2, 5)), 2 * np.eye(3)[:2], loss="categorical_crossentropy")


def test_unknown_names():
    with pytest.raises(ValueError, match=r"unknown activation 'sigmoidd'; valid names are elu, "):
        Dense(3, "sigmoidd")
    with pytest.raises(ValueError, match=r"unknown loss 'msee'; valid names are binary_cross"):
        get_loss("msee")
    with pytest.raises(ValueError, match=r"unknown initializer 'glorot'"):
        Dense(3, kernel_initializer="glorot")


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="units must be an integer >= 1, got 0"):
        Dense(0)
    with pytest.raises(ValueError, match="pieces must be an integer >= 1"):
        Maxout(0)
    with pytest.raises(ValueError, match="the model has no layers: add some before building"):
        Sequential([], input_dim=3).build(3)
    with pytest.raises(
        TypeError, match=r"layers\[1\] must be a layer \(Dense, Dropout, ...\), got str"
    ):
        Sequential([Dense(2), "relu"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1, got -3"):
        Sequential([Dense(2)], input_dim=-3)
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        Sequential([Dense(2)], dtype="float16")


def test_set_weights_validates_and_changes_nothing_on_error(small):
    before = small.get_weights()
    bad = [w.copy() for w in before]
    bad[2] = np.ones((3, 4))
    with pytest.raises(
        ValueError,
        match=r"weights\[2\] has shape \(3, 4\), expected shape "
        r"\(4, 3\)",
    ):
        small.set_weights(bad)
    with pytest.raises(ValueError, match="must be a list of 4 arrays"):
        small.set_weights(before[:3])
    wrong_kind = [w.copy() for w in before]
    wrong_kind[0] = wrong_kind[0].astype(str)
    with pytest.raises(ValueError, match=r"weights\[0\] must hold real numbers"):
        small.set_weights(wrong_kind)
    for b, a in zip(before, small.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    twice = [2 * w for w in before]
    small.set_weights(twice)
    np.testing.assert_array_equal(small.get_weights()[0], twice[0])


def test_get_weights_returns_copies(small):
    w = small.get_weights()
    w[0][...] = 123.0
    assert not np.any(small.get_weights()[0] == 123.0)


def test_model_built_on_first_data(rng):
    model = Sequential([Dense(3, "sigmoid"), Dense(2)], seed=0)
    assert not model.built
    x, y = rng.standard_normal((4, 7)), rng.standard_normal((4, 2))
    grads = model.gradients(x, y, loss="mse")
    assert model.input_dim == 7 and grads[0].shape == (7, 3)
    # the same as a model told input_dim=7 up front: same seeded weights, same gradients
    explicit = Sequential([Dense(3, "sigmoid"), Dense(2)], input_dim=7, seed=0)
    for got, want in zip(model.get_weights(), explicit.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(grads, explicit.gradients(x, y, loss="mse"), strict=True):
        np.testing.assert_array_equal(got, want)
