"""Normalization and BatchNormalization, called as a user or a custom training loop calls
them: their argument checks (the exact messages), configs, weights and initial values, the
forward and backward passes against hand-computed values and finite differences, and the
arrays a pass reuses (issue 24: the mutants these layers' other tests let survive)."""

from __future__ import annotations

import re

import numpy as np
import pytest

import backprop
from backprop import check_gradients
from backprop.layers import BatchNormalization, Dense, Normalization

EPSILON = 1e-3  # BatchNormalization's default epsilon (Keras's)


def _exactly(message: str) -> str:
    """A `match=` pattern that accepts this message and nothing longer."""
    return f"^{re.escape(message)}$"


# =============================================================================================
# Normalization
# =============================================================================================
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axis": 0}, "axis must be -1 (the features of flat samples), got 0"),
        ({"axis": 2}, "axis must be -1 (the features of flat samples), got 2"),
        ({"mean": [1.0]}, "give both mean and variance, or neither (then call adapt(x))"),
        ({"variance": [1.0]}, "give both mean and variance, or neither (then call adapt(x))"),
        (
            {"mean": [0.0, np.nan], "variance": [1.0, 1.0]},
            "mean and variance must be finite numbers",
        ),
        (
            {"mean": [0.0, 1.0], "variance": [1.0, np.inf]},
            "mean and variance must be finite numbers",
        ),
        # a missing value in a list is a NaN, not NumPy's TypeError about object arrays
        ({"mean": [0.0, None], "variance": [1.0, 1.0]}, "mean and variance must be finite numbers"),
    ],
)
def test_normalization_refuses_bad_arguments_by_name(kwargs, message):
    with pytest.raises(ValueError, match=_exactly(message)):
        Normalization(**kwargs)


def test_normalization_refuses_inputs_it_cannot_normalize():
    with pytest.raises(ValueError) as caught:
        backprop.Sequential([Normalization(input_shape=(2, 2))])
    assert str(caught.value) == (
        "Normalization takes flat samples, but its input has shape (2, 2) per sample: "
        "put Flatten() before it"
    )
    with pytest.raises(
        ValueError, match=_exactly("mean and variance have 2 features, the input 3")
    ):
        backprop.Sequential([Normalization(mean=[1.0, 2.0], variance=[1.0, 1.0])], input_dim=3)


def test_normalization_config_holds_the_given_statistics_until_built():
    """Unbuilt, the config rebuilds the layer with its statistics; built, the statistics are
    weights (saved as such, and changed by adapt), so the config leaves them out. axis=1 is
    Keras's feature axis of flat samples, the same as -1."""
    assert Normalization().get_config() == {"axis": -1, "name": None, "trainable": True}
    layer = Normalization(
        axis=1, mean=[1.0, 2.0], variance=[4.0, 9.0], name="norm", input_shape=(2,)
    )
    want = {
        "axis": -1,
        "name": "norm",
        "mean": [1.0, 2.0],
        "variance": [4.0, 9.0],
        "input_shape": [2],
        "trainable": True,
    }
    assert layer.get_config() == want
    assert Normalization.from_config(want).get_config() == want
    assert repr(layer) == "Normalization()"
    backprop.Sequential([layer], backend="numpy")
    assert layer.get_config() == {"axis": -1, "name": "norm", "input_shape": [2], "trainable": True}


def test_normalization_uses_the_given_statistics(backend):
    """(x - mean) / max(sqrt(variance), 1e-7) per feature, from statistics given in Keras's
    (1, features) shape; a zero variance divides by 1e-7. Built from the layer's own
    input_shape, under its own name; predict writes the last layer's output into its buffer."""
    layer = Normalization(
        mean=[[1.0, -2.0, 0.0]], variance=[[4.0, 0.25, 0.0]], name="norm", input_shape=(3,)
    )
    assert layer.adapted is True
    model = backprop.Sequential([layer], backend=backend)
    assert model.input_shape == (None, 3) and model.get_layer("norm") is layer
    mean, variance = layer.get_weights()
    np.testing.assert_array_equal(mean, [1.0, -2.0, 0.0])
    np.testing.assert_array_equal(variance, [4.0, 0.25, 0.0])
    with pytest.raises(
        ValueError, match=_exactly("layer 'norm' takes 2 arrays (mean, variance), got 1")
    ):
        layer.set_weights([mean])
    x = np.array([[3.0, -1.0, 2e-7], [-1.0, -2.5, -1e-7]], dtype=np.float32)
    want = [[1.0, 2.0, 2.0], [-1.0, -1.0, -1.0]]  # (3 - 1) / 2, (-1 + 2) / 0.5, 2e-7 / 1e-7
    np.testing.assert_allclose(model.predict(x), want, rtol=1e-6)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        (np.arange(3.0), "adapt takes x of shape (n_samples, n_features), got (3,)"),
        (np.zeros((0, 3)), "adapt takes x of shape (n_samples, n_features), got (0, 3)"),
        (np.array([[1.0, np.nan]]), "adapt: x holds NaN or infinite values"),
        (np.array([[1.0, -np.inf]]), "adapt: x holds NaN or infinite values"),
    ],
)
def test_normalization_adapt_refuses_bad_data(x, message):
    layer = Normalization()
    with pytest.raises(ValueError, match=_exactly(message)):
        layer.adapt(x)
    assert layer.adapted is False and layer.get_config() == Normalization().get_config()


def test_normalization_adapts_to_a_single_sample():
    """One sample is enough (Keras's adapt takes it): its values are the mean, the variance
    is 0 (then forward divides by 1e-7)."""
    layer = Normalization()
    layer.adapt([[1.0, 2.0]])
    assert layer.adapted is True
    assert layer.get_config() == {
        "axis": -1,
        "name": None,
        "mean": [1.0, 2.0],
        "variance": [0.0, 0.0],
        "trainable": True,
    }


def test_normalization_adapts_in_float64_to_host_or_device_data(backend):
    """adapt computes the statistics in float64 whatever the data's dtype, then rounds them
    once to the model's: summed in float32, the first column's 1e8 + 1 rounds to 1e8 (mean
    0.25); in float64 the mean is 0.5. It takes an array of the model's own backend as well as
    a host one."""
    x = np.array([[1e8, 1.0], [1.0, 2.0], [-1e8, 3.0], [1.0, 4.0]], dtype=np.float32)
    layer = Normalization()
    backprop.Sequential([layer], input_dim=2, backend=backend)
    for data in (x, backend.asarray(x)):
        layer.set_weights([np.zeros(2), np.ones(2)])
        layer.adapt(data)
        mean, variance = layer.get_weights()
        np.testing.assert_array_equal(mean, np.float32([0.5, 2.5]))
        x64 = x.astype(np.float64)
        np.testing.assert_array_equal(variance, x64.var(axis=0).astype(np.float32))


def test_normalization_forward_and_backward_by_hand(backend64):
    """Called directly: a = (x - mean) / s with s = max(sqrt(variance), 1e-7), and backward(da)
    returns da / s (the statistics are constants); the next pass with this batch size writes
    into the arrays the last one returned; `out` receives the output when given."""
    be = backend64
    layer = Normalization(mean=[1.0, -2.0, 0.5], variance=[4.0, 0.25, 1.0])
    backprop.Sequential([layer], input_dim=3, backend=be, dtype="float64")
    assert layer.trainable_weights == [] and len(layer.non_trainable_weights) == 2
    x = be.asarray(np.array([[3.0, -1.0, 0.5], [-1.0, -2.5, 2.5]]))
    a = layer.forward(x)
    want_a = [[1.0, 2.0, 0.0], [-1.0, -1.0, 2.0]]
    np.testing.assert_allclose(be.to_numpy(a), want_a)
    da = be.asarray(np.array([[2.0, 1.0, -3.0], [4.0, -0.5, 1.0]]))
    da_prev = layer.backward(da)  # need_da_prev defaults to True, as for every layer
    want_da_prev = [[1.0, 2.0, -3.0], [2.0, -1.0, 1.0]]  # da / [2, 0.5, 1]
    np.testing.assert_allclose(be.to_numpy(da_prev), want_da_prev)
    assert layer.forward(x) is a and layer.backward(da) is da_prev
    assert layer.backward(da, need_da_prev=False) is None
    out = be.zeros((2, 3))
    assert layer.forward(x, out=out) is out
    np.testing.assert_allclose(be.to_numpy(out), want_a)


def test_normalization_between_layers_passes_the_gradient_on(backend64):
    """Dense -> Normalization -> Dense: the gradients of both Dense layers match central
    differences, so Normalization's backward hands dC/dx to the layer before it."""
    rng = np.random.default_rng(0)
    model = backprop.Sequential(
        [
            Dense(4, "tanh", input_dim=3),
            Normalization(mean=[0.5, -1.0, 0.0, 2.0], variance=[4.0, 0.25, 1.0, 9.0]),
            Dense(2, "softmax"),
        ],
        backend=backend64,
        dtype="float64",
        seed=0,
    )
    x, y = rng.standard_normal((5, 3)), np.eye(2)[rng.integers(0, 2, 5)]
    errors = check_gradients(model, x, y, loss="categorical_crossentropy")
    W1, b1, W2, b2 = errors[0], errors[1], errors[4], errors[5]  # not the statistics
    assert max(W1, b1, W2, b2) < 1e-6, errors


# =============================================================================================
# BatchNormalization
# =============================================================================================
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axis": 0}, "axis must be -1 (the features of flat samples), got 0"),
        ({"axis": 2}, "axis must be -1 (the features of flat samples), got 2"),
        ({"momentum": 1.0}, "momentum must be a number in [0, 1), got 1.0"),
        ({"momentum": -0.1}, "momentum must be a number in [0, 1), got -0.1"),
        ({"center": "no"}, "center must be True or False, got 'no'"),
        ({"scale": "yes"}, "scale must be True or False, got 'yes'"),
    ],
)
def test_batch_normalization_refuses_bad_arguments_by_name(kwargs, message):
    with pytest.raises(ValueError, match=_exactly(message)):
        BatchNormalization(**kwargs)


def test_batch_normalization_refuses_samples_that_are_not_flat():
    with pytest.raises(ValueError) as caught:
        backprop.Sequential([BatchNormalization(input_shape=(4, 4))])
    assert str(caught.value) == (
        "BatchNormalization takes flat samples, but its input has shape (4, 4) per sample: "
        "put Flatten() before it"
    )


@pytest.mark.parametrize(
    ("options", "names"),
    [
        ({}, ["gamma", "beta", "moving_mean", "moving_variance"]),
        ({"center": False}, ["gamma", "moving_mean", "moving_variance"]),
        ({"scale": False}, ["beta", "moving_mean", "moving_variance"]),
        ({"center": False, "scale": False}, ["moving_mean", "moving_variance"]),
    ],
)
def test_batch_normalization_weights_config_and_inference(backend, options, names):
    """Keras's weights in Keras's order and initial values (gamma 1, beta 0, moving mean 0,
    moving variance 1), named in set_weights' message; the config rebuilds the layer; at
    inference out = gamma (x - moving_mean) / sqrt(moving_variance + epsilon) + beta, with
    gamma 1 and beta 0 where the layer has none."""
    layer = BatchNormalization(axis=1, momentum=0.9, name="bn", input_shape=(2,), **options)
    model = backprop.Sequential([layer], backend=backend)
    initial = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}
    for got, name in zip(layer.get_weights(), names, strict=True):
        np.testing.assert_array_equal(got, [initial[name]] * 2)
    with pytest.raises(ValueError) as caught:
        layer.set_weights([np.ones(2)])
    assert str(caught.value) == f"layer 'bn' takes {len(names)} arrays ({', '.join(names)}), got 1"
    config = {"axis": -1, "momentum": 0.9, "epsilon": EPSILON, "center": True, "scale": True}
    config.update(options, name="bn", input_shape=[2], trainable=True)
    assert layer.get_config() == config
    assert BatchNormalization.from_config(config).get_config() == config

    values = {
        "gamma": [2.0, 0.5],
        "beta": [1.0, -1.0],
        "moving_mean": [3.0, -2.0],
        "moving_variance": [4.0 - EPSILON, 1.0 - EPSILON],  # so sqrt(var + epsilon) = 2, 1
    }
    layer.set_weights([np.array(values[name]) for name in names])
    gamma = np.array(values["gamma"] if "gamma" in names else [1.0, 1.0])
    beta = np.array(values["beta"] if "beta" in names else [0.0, 0.0])
    x = np.array([[5.0, 0.0], [1.0, -4.0]], dtype=np.float32)
    x_hat = np.array([[1.0, 2.0], [-1.0, -2.0]])  # (x - [3, -2]) / [2, 1]
    np.testing.assert_allclose(model.predict(x), gamma * x_hat + beta, rtol=1e-6, atol=1e-6)


def test_batch_normalization_momentum_zero_keeps_the_last_batch_statistics(backend):
    """momentum=0 is allowed (as in Keras): the moving statistics become the batch's."""
    layer = BatchNormalization(momentum=0.0)
    backprop.Sequential([layer], input_dim=2, backend=backend)
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0]], dtype=np.float32)
    layer.forward(backend.asarray(x), training=True)
    _, _, moving_mean, moving_variance = layer.get_weights()
    np.testing.assert_allclose(moving_mean, [3.0, 30.0], rtol=1e-6)
    np.testing.assert_allclose(moving_variance, [8.0 / 3.0, 1400.0 / 3.0], rtol=1e-6)


def test_batch_normalization_forward_and_backward_by_hand(backend64):
    """Called directly: forward(x) is inference unless told otherwise (the moving statistics,
    left as they are); backward(da) returns dC/dx and fills dgamma and dbeta, and with
    need_da_prev=False (as the first layer) fills them and returns None. The next pass with
    this batch size writes into the arrays the last one returned."""
    be = backend64
    layer = BatchNormalization(momentum=0.5)
    backprop.Sequential([layer], input_dim=2, backend=be, dtype="float64")
    weights = [[2.0, 0.5], [1.0, -1.0], [3.0, -2.0], [4.0 - EPSILON, 1.0 - EPSILON]]
    layer.set_weights([np.array(w) for w in weights])
    x = be.asarray(np.array([[5.0, 0.0], [1.0, -4.0]]))
    da = be.asarray(np.array([[1.0, 2.0], [3.0, -1.0]]))
    a = layer.forward(x)
    np.testing.assert_allclose(be.to_numpy(a), [[3.0, 0.0], [-1.0, -2.0]])
    dgamma, dbeta = layer.grads[0], layer.grads[1]
    for need_da_prev in (True, False):
        be.copy(be.zeros((2,)), out=dgamma)
        be.copy(be.zeros((2,)), out=dbeta)
        da_prev = layer.backward(da) if need_da_prev else layer.backward(da, need_da_prev=False)
        np.testing.assert_allclose(be.to_numpy(dgamma), [-2.0, 6.0])  # sum(da * x_hat)
        np.testing.assert_allclose(be.to_numpy(dbeta), [4.0, 1.0])  # sum(da)
        if need_da_prev:  # da gamma / sqrt(var + epsilon)
            np.testing.assert_allclose(be.to_numpy(da_prev), [[1.0, 1.0], [3.0, -0.5]])
        else:
            assert da_prev is None
    assert [w.tolist() for w in layer.get_weights()] == weights  # inference changed nothing
    assert layer.forward(x) is a and layer.backward(da) is layer.backward(da)

    a = layer.forward(x, training=True)  # the batch's statistics: x_hat = +-1 per feature
    np.testing.assert_allclose(be.to_numpy(a), [[3.0, -0.5], [-1.0, -1.5]], atol=1e-3)
    delta = layer.backward(da)
    assert layer.backward(da) is delta
    assert layer.backward(da, need_da_prev=False) is None


def test_batch_normalization_as_the_output_layer(backend64):
    """As the last layer the loss's gradient starts from its output: the gradients of a
    regression head Dense -> BatchNormalization match central differences (training mode)."""
    rng = np.random.default_rng(1)
    model = backprop.Sequential(
        # no bias: the batch's mean would cancel it, leaving a gradient of rounding noise
        [Dense(3, use_bias=False, input_dim=4), BatchNormalization(momentum=0.5)],
        backend=backend64,
        dtype="float64",
        seed=0,
    )
    x, y = rng.standard_normal((6, 4)), rng.standard_normal((6, 3))
    assert max(check_gradients(model, x, y, loss="mse", training=True)) < 1e-6
