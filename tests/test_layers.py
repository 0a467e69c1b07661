"""The layers other than Dense's math, as a user meets them: their arguments (checked, kept in
the config, round-tripped), what each computes, `out=` and the reused workspaces of the
protocol, the loss's gradient through a last layer without an activation, and the look-up of
layers by name (issue 24: the surviving mutants of backprop/layers.py)."""

from __future__ import annotations

import numpy as np
import pytest

import backprop
from backends import get_backend
from backends.numpy_backend import NumpyBackend
from backprop import check_gradients, layers, regularizers
from backprop.layers import (
    Activation,
    Dense,
    Dropout,
    Flatten,
    Input,
    InputLayer,
    Layer,
    LeakyReLU,
    ReLU,
    Softmax,
    layer_from_config,
    register_layer,
)
from backprop.losses import get_loss


def _built(layer, input_shape, backend, dtype="float32", seed=0):
    """`layer`, built as the only layer of a model on `backend` (its seeded generator)."""
    backprop.Sequential([Input(shape=input_shape), layer], backend=backend, dtype=dtype, seed=seed)
    return layer


def _host(x, dtype=np.float32):
    return np.asarray(x, dtype=dtype)


X = _host([[-2.0, -0.5, 0.0, 1.5], [3.0, -1.0, 0.25, -4.0]])


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- arguments
# (a layer's class, its arguments, what its config holds besides name and input_shape, and
# the per-sample input shape it is given)
CONFIGS = {
    "dropout": (Dropout, {"rate": 0.25, "seed": 3}, {"rate": 0.25, "seed": 3}, (3,)),
    "flatten": (Flatten, {}, {}, (2, 3)),
    "activation": (Activation, {"activation": "tanh"}, {"activation": "tanh"}, (3,)),
    "softmax": (Softmax, {}, {"axis": -1}, (3,)),
    "relu": (ReLU, {}, {}, (3,)),
    "leaky_relu": (LeakyReLU, {"negative_slope": 0.2}, {"negative_slope": 0.2}, (3,)),
}


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_name_and_input_shape_are_kept_in_the_config_and_round_trip(kind):
    cls, args, own, shape = CONFIGS[kind]
    layer = cls(**args, name="mine", input_shape=shape)
    assert layer.name == "mine" and layer.requested_input_shape == shape
    config = layer.get_config()
    assert config == {**own, "name": "mine", "input_shape": list(shape), "trainable": True}
    again = cls.from_config(config)
    assert again.get_config() == config
    # the input shape is the model's: it builds without input_dim or an Input
    model = backprop.Sequential([again], backend="numpy", seed=0)
    assert model.built and model.input_shape == (None, *shape)
    plain = cls(**args)
    assert plain.name is None and plain.requested_input_shape is None
    assert plain.get_config() == {**own, "name": None, "trainable": True}


def test_reprs_of_the_keras_activation_layers():
    assert repr(ReLU()) == "ReLU()" and repr(Softmax()) == "Softmax()"
    assert repr(LeakyReLU(0.2)) == "LeakyReLU(negative_slope=0.2)"
    assert repr(Activation("tanh")) == "Activation('tanh')" and repr(Dropout(0.5)) == "Dropout(0.5)"


# (what is called, the exact message of its ValueError)
BAD_ARGUMENTS = {
    "rate 1": (lambda: Dropout(1.0), "rate must be a number in [0, 1), got 1.0"),
    "rate < 0": (lambda: Dropout(-0.1), "rate must be a number in [0, 1), got -0.1"),
    "rate text": (lambda: Dropout("0.5"), "rate must be a number in [0, 1), got '0.5'"),
    "seed < 0": (
        lambda: Dropout(0.5, seed=-1),
        "seed must be an integer in [0, 2**32) or None, got -1",
    ),
    "seed 2**32": (
        lambda: Dropout(0.5, seed=2**32),
        "seed must be an integer in [0, 2**32) or None, got 4294967296",
    ),
    "seed bool": (
        lambda: Dropout(0.5, seed=True),
        "seed must be an integer in [0, 2**32) or None, got True",
    ),
    "seed float": (
        lambda: Dropout(0.5, seed=1.5),
        "seed must be an integer in [0, 2**32) or None, got 1.5",
    ),
    "units bool": (lambda: Dense(True), "units must be an integer >= 1, got True"),
    "units float": (lambda: Dense(2.5), "units must be an integer >= 1, got 2.5"),
    "units 0": (lambda: Dense(0), "units must be an integer >= 1, got 0"),
    "l2 < 0": (lambda: Dense(2, l2=-0.1), "l2 must be a number >= 0, got -0.1"),
    "l2 text": (lambda: Dense(2, l2="0.1"), "l2 must be a number >= 0, got '0.1'"),
    "l2 and kernel_regularizer": (
        lambda: Dense(2, l2=0.1, kernel_regularizer="l1"),
        "give l2 or kernel_regularizer, not both (l2=x is L2(x))",
    ),
    "input_dim and input_shape": (
        lambda: Dense(2, input_dim=3, input_shape=(3,)),
        "give input_dim or input_shape, not both",
    ),
    "input_dim 0": (
        lambda: Dense(2, input_dim=0),
        "input_dim must be a tuple of integers >= 1 such as (784,), got (0,)",
    ),
    "maxout layer": (
        lambda: Activation("maxout"),
        "maxout changes the width: use it inside Dense(units, 'maxout')",
    ),
    "softmax axis": (
        lambda: Softmax(axis=0),
        "axis must be -1 (the features of flat samples), got 0",
    ),
    "Input shape": (
        lambda: Input(shape=(3, 0)),
        "shape must be a tuple of integers >= 1 such as (784,), got (3, 0)",
    ),
    "InputLayer neither": (
        lambda: InputLayer(),
        "InputLayer takes shape= (or input_shape=), exactly one of them",
    ),
    "InputLayer both": (
        lambda: InputLayer(input_shape=(3,), shape=(3,)),
        "InputLayer takes shape= (or input_shape=), exactly one of them",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ARGUMENTS))
def test_bad_layer_arguments_name_the_argument_and_what_is_allowed(case):
    make, message = BAD_ARGUMENTS[case]
    with pytest.raises(ValueError) as caught:
        make()
    assert str(caught.value) == message


def test_the_ends_of_the_allowed_ranges_are_accepted():
    assert Dropout(0.0).rate == 0.0
    assert Dropout(0.5, seed=0).get_config()["seed"] == 0
    assert Dropout(0.5, seed=2**32 - 1).get_config()["seed"] == 2**32 - 1
    assert LeakyReLU(0).negative_slope == 0.0
    assert Softmax(axis=1).get_config()["axis"] == -1  # the last axis of flat samples
    assert Dense(2, input_dim=3).requested_input_shape == (3,)


def test_input_and_input_layer_keep_their_name_and_shape():
    assert Input(shape=(3,), name="pixels").name == "pixels"
    assert Input(shape=4).shape == (4,)
    layer = InputLayer(input_shape=(3,), name="pixels")
    assert layer.name == "pixels" and layer.shape == (3,)
    assert InputLayer(shape=(2, 3)).shape == (2, 3)


# --------------------------------------------------------------------------- what they compute
ACTIVATION_LAYERS = {
    "relu": (ReLU, lambda x: np.maximum(x, 0.0)),
    "leaky_relu 0.2": (
        lambda: LeakyReLU(negative_slope=0.2),
        lambda x: np.where(x > 0, x, 0.2 * x),
    ),
    "leaky_relu 0": (lambda: LeakyReLU(0), lambda x: np.maximum(x, 0.0)),
    "softmax": (Softmax, _softmax),
    "softmax axis 1": (lambda: Softmax(axis=1), _softmax),
}


@pytest.mark.parametrize("kind", list(ACTIVATION_LAYERS))
def test_keras_activation_layers_compute_their_function(backend, kind):
    make, f = ACTIVATION_LAYERS[kind]
    model = backprop.Sequential([make()], input_dim=4, backend=backend)
    np.testing.assert_allclose(model.predict(X), f(X.astype(np.float64)), rtol=1e-6, atol=1e-7)


# a last layer, the per-sample shape it is given, and what it computes of a batch (a model's
# output is flat: only Flatten takes samples of more axes as the last layer)
LAST_LAYERS = {
    "dropout at inference": (lambda: Dropout(0.5), (6,), lambda x: x),
    "flatten": (Flatten, (2, 3), lambda x: x.reshape(len(x), -1)),
    "linear activation": (lambda: Activation("linear"), (6,), lambda x: x),
    "tanh activation": (lambda: Activation("tanh"), (6,), np.tanh),
    "relu": (ReLU, (6,), lambda x: np.maximum(x, 0.0)),
}


@pytest.mark.parametrize("kind", list(LAST_LAYERS))
def test_a_last_layer_writes_its_output_into_the_given_out(backend, kind):
    """predict and evaluate give the last layer the rows of their output array as `out`."""
    make, shape, f = LAST_LAYERS[kind]
    x = np.random.default_rng(0).standard_normal((4, *shape)).astype(np.float32)
    layer = make()
    model = backprop.Sequential([Input(shape=shape), layer], backend=backend)
    out = backend.asarray(np.full((4, 6), np.nan, dtype=np.float32))
    assert layer.forward(backend.asarray(x), out=out) is out
    np.testing.assert_allclose(backend.to_numpy(out), f(x), rtol=1e-6)
    np.testing.assert_allclose(model.predict(x, batch_size=3), f(x), rtol=1e-6)


def test_dropout_in_training_writes_into_the_given_out(backend):
    """As the last layer of a training step, Dropout's output goes where the loss reads it."""
    x = backend.asarray(np.random.default_rng(1).standard_normal((6, 5)).astype(np.float32))
    into, plain = (_built(Dropout(0.5, seed=9), (5,), backend) for _ in range(2))
    want = backend.to_numpy(plain.forward(x, training=True))
    assert 0 < np.count_nonzero(want) < want.size  # it dropped some
    out = backend.asarray(np.full((6, 5), np.nan, dtype=np.float32))
    assert into.forward(x, out=out, training=True) is out
    np.testing.assert_array_equal(backend.to_numpy(out), want)


def test_dropout_at_inference_and_at_rate_zero_passes_its_input_through(backend):
    """No copy and no random numbers: the input itself comes out, the gradient goes back as
    it came, and the random-number counter (saved with the model) does not move."""
    x = backend.asarray(X)
    da = backend.asarray(X * 2.0)
    for rate, training in ((0.5, False), (0.0, True)):
        layer = _built(Dropout(rate, seed=4), (4,), backend)
        assert layer.forward(x, training=training) is x
        assert layer.backward(da) is da
        assert backend.to_numpy(layer.key).tolist() == [4, 0]


@pytest.mark.parametrize("kind", ["activation", "dropout"])
def test_forward_and_backward_reuse_their_arrays_per_batch_size(backend, kind):
    """A step allocates nothing batch-sized: each pass with a batch size seen before writes
    into the arrays the last one of that size returned (copy them to keep them)."""
    layer = Activation("tanh") if kind == "activation" else Dropout(0.5, seed=2)
    _built(layer, (4,), backend)
    rng = np.random.default_rng(2)
    x1, x2 = (_host(rng.standard_normal((2, 4))) for _ in range(2))
    da = backend.asarray(np.ones((2, 4), dtype=np.float32))
    a = layer.forward(backend.asarray(x1), training=True)
    delta = layer.backward(da)
    again = layer.forward(backend.asarray(x2), training=True)
    assert again is a and layer.backward(da) is delta
    got = backend.to_numpy(again)
    if kind == "activation":
        np.testing.assert_allclose(got, np.tanh(x2), rtol=1e-6)
        np.testing.assert_allclose(backend.to_numpy(delta), 1.0 - np.tanh(x2) ** 2, rtol=1e-5)
    else:  # each value dropped or kept and scaled by 1 / (1 - rate)
        assert np.all((got == 0.0) | np.isclose(got, 2.0 * x2))
    other = layer.forward(backend.asarray(np.ones((3, 4), dtype=np.float32)), training=True)
    assert tuple(other.shape) == (3, 4) and other is not a
    assert layer.forward(backend.asarray(x1), training=True) is a


def test_flatten_gives_a_view_of_its_input_on_numpy():
    be = get_backend("numpy")
    layer = _built(Flatten(), (2, 3), be)
    x = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    flat = layer.forward(x)
    assert flat.shape == (4, 6) and np.shares_memory(flat, x)


# --------------------------------------------------------------------------- backward
def test_backward_returns_the_input_gradient_unless_told_not_to(backend):
    """The protocol's backward and backward_delta return dC/d(input) by default, None with
    need_da_prev=False."""
    rng = np.random.default_rng(3)
    flatten = _built(Flatten(), (2, 3), backend)
    flatten.forward(backend.asarray(rng.standard_normal((4, 2, 3)).astype(np.float32)))
    da = _host(rng.standard_normal((4, 6)))
    np.testing.assert_array_equal(
        backend.to_numpy(flatten.backward(backend.asarray(da))), da.reshape(4, 2, 3)
    )
    assert flatten.backward(backend.asarray(da), need_da_prev=False) is None

    tanh = _built(Activation("tanh"), (4,), backend)
    tanh.forward(backend.asarray(X))
    delta = backend.asarray(X)
    assert tanh.backward_delta(delta) is delta  # the input is z: dC/d(input) = dC/dz
    assert tanh.backward_delta(delta, need_da_prev=False) is None
    assert tanh.backward(backend.asarray(X), need_da_prev=False) is None


def test_the_loss_gradient_through_a_last_layer_without_an_activation(backend64):
    """A last layer that is not an activation (here Flatten) takes dC/d(output) from the
    loss and passes it down: quadratic cost, dC/da = (a - y) / batch."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((5, 2, 3)), rng.standard_normal((5, 6))
    flatten = _built(Flatten(), (2, 3), backend64, dtype="float64")
    flatten.forward(backend64.asarray(x))
    quadratic, Y = get_loss("quadratic"), backend64.asarray(y)
    got = backend64.to_numpy(flatten.output_backward(quadratic, Y))
    np.testing.assert_allclose(got, ((x.reshape(5, 6) - y) / 5).reshape(5, 2, 3), rtol=1e-12)
    assert flatten.output_backward(quadratic, Y, need_da_prev=False) is None
    # and below it, gradients match finite differences, with Flatten last or in the middle
    for middle in ([], [Flatten(), Dense(2)]):
        model = backprop.Sequential(
            [Dense(3, "tanh"), *middle, Flatten()],
            input_dim=4,
            backend=backend64,
            dtype="float64",
            seed=0,
        )
        x, y = rng.standard_normal((5, 4)), rng.standard_normal((5, model.output_dim))
        assert max(check_gradients(model, x, y, loss="mse")) < 1e-6


# --------------------------------------------------------------------------- Dense's options
def test_dense_without_a_bias_has_a_kernel_only_and_no_bias_penalty(backend):
    """Keras: bias_regularizer does nothing without a bias."""
    layer = Dense(2, use_bias=False, bias_regularizer=regularizers.L2(0.5))
    model = backprop.Sequential([layer], input_dim=3, backend=backend, seed=0)
    assert layer.bias_regularizer is None and layer.get_config()["bias_regularizer"] is None
    W = np.array([[1.0, -1.0], [0.5, 1.0], [0.0, 1.0]], dtype=np.float32)
    with pytest.raises(ValueError) as caught:
        layer.set_weights([W, np.zeros(2, dtype=np.float32)])
    assert str(caught.value) == "layer 'dense' takes 1 arrays (kernel), got 2"
    model.set_weights([W])
    x, y = _host([[1.0, 2.0, 3.0]]), _host([[2.0, 3.0]])  # x W = [2, 4]: squared errors 0, 1
    model.compile(loss="mse", optimizer="sgd")
    assert model.evaluate(x, y, verbose=0) == pytest.approx(0.5, rel=1e-6)


def test_a_new_regularizer_strength_between_fits_reaches_the_recorded_step():
    """The CPU records a chunk of steps with the penalty's strength as a constant: set anew
    between fits, the recording is made again, so training equals the eager steps'."""
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 5)).astype(np.float32), rng.integers(0, 3, 40)
    models, replays = [], []
    for record in (True, False):
        be = NumpyBackend(record=record)
        hidden = Dense(6, "tanh", kernel_regularizer=regularizers.l2(1e-4))
        model = backprop.Sequential([hidden, Dense(3, "softmax")], input_dim=5, backend=be, seed=1)
        model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd")
        X = be.asarray(x)  # the same device array: the second fit reuses the recording
        # epochs 1 and 2 record, 3 compares the two recordings and adopts, 4 is a replay
        model.fit(X, y, epochs=4, batch_size=8, shuffle=False, verbose=0)
        replays.append([r.mode for r in model.trainer.train_function.replays.values()])
        hidden.kernel_regularizer.l2 = 0.5
        model.fit(X, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
        models.append(model.get_weights())
    assert replays == [["tape"], []]  # recorded, and replayed in the first fit's last epoch
    for recorded, eager in zip(*models, strict=True):
        np.testing.assert_array_equal(recorded, eager)


# --------------------------------------------------------------------------- Dropout's seed
def test_dropout_draws_its_seed_from_the_models_generator():
    """Without a seed of its own, Dropout's comes from the model's seed: the same model seed
    drops the same units, and different ones (40 here) drop differently."""

    def seed_of(model_seed):
        model = backprop.Sequential([Dropout(0.5)], input_dim=4, backend="numpy", seed=model_seed)
        return int(model.layers[0].key[0])

    seeds = [seed_of(s) for s in range(40)]
    assert len(set(seeds)) == len(seeds) and seed_of(7) == seeds[7]


# --------------------------------------------------------------------------- finding layers
def test_a_missing_name_in_backprop_layers():
    with pytest.raises(ImportError) as caught:
        from backprop.layers import Conv2D  # noqa: F401
    assert str(caught.value) == (
        "backprop.layers has no layer 'Conv2D': this library builds multilayer perceptrons, "
        "and its layers are Activation, BatchNormalization, Dense, Dropout, Flatten, Input, "
        "InputLayer, Layer, LeakyReLU, Normalization, ReLU, Softmax"
    )
    with pytest.raises(AttributeError) as missing:
        layers.not_a_layer  # noqa: B018
    assert str(missing.value) == "module 'backprop.layers' has no attribute 'not_a_layer'"


class Scale(Layer):
    """A user's layer: a * 2."""

    def forward(self, x, out=None, training=False):
        self.a = self.be.multiply(x, 2.0, out=out)
        return self.a

    def backward(self, da, need_da_prev=True):
        return self.be.multiply(da, 2.0) if need_da_prev else None


def test_layers_are_found_by_their_saved_class_name(monkeypatch):
    rebuilt = layer_from_config("Dropout", {"rate": 0.25, "name": "d"})
    assert isinstance(rebuilt, Dropout) and rebuilt.rate == 0.25 and rebuilt.name == "d"
    with pytest.raises(ValueError) as caught:
        layer_from_config("conv2d", {})
    assert str(caught.value).startswith(
        "unknown layer 'conv2d'; valid names are activation, batchnormalization, dense, "
    )
    monkeypatch.setattr(layers, "LAYERS", dict(layers.LAYERS))  # the registration is undone
    assert register_layer(Scale) is Scale
    mine = layer_from_config("Scale", {"name": "double"})
    assert isinstance(mine, Scale) and mine.name == "double"
