"""Optimizer objects: update rules recomputed by hand through a real model, schedules,
clipping, validation. (The backend kernels themselves: test_backend_optimizers.py.)"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ATOL, RTOL

from backprop import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    CosineDecay,
    Dense,
    ExponentialDecay,
    RMSprop,
    Sequential,
    StepDecay,
    get_optimizer,
)


def one_weight_model(backend, optimizer):
    """A 1-1 linear model with W = 2, b = 0.5, and quadratic cost C = (w x + b - y)^2 / 2."""
    model = Sequential([Dense(1)], input_dim=1, backend=backend)
    model.set_weights([np.array([[2.0]]), np.array([0.5])])
    model.compile(loss="quadratic", optimizer=optimizer, metrics=[])
    return model


def train_steps(model, steps, x=1.0, y=0.0):
    X, Y = np.array([[x]]), np.array([[y]])
    for _ in range(steps):
        model.fit(X, Y, epochs=1, batch_size=1, shuffle=False, verbose=0)
    return [float(w.ravel()[0]) for w in model.get_weights()]


def close(got, expected, be):
    np.testing.assert_allclose(
        got, expected, rtol=RTOL[be.dtype_name] * 10, atol=ATOL[be.dtype_name] * 10
    )


def test_sgd_hand_worked(backend):
    # x = 1, y = 0: a = 2 * 1 + 0.5 = 2.5, dC/da = a - y = 2.5; dW = x * 2.5 = 2.5, db = 2.5
    # lr = 0.1: W = 2 - 0.25 = 1.75, b = 0.5 - 0.25 = 0.25
    model = one_weight_model(backend, SGD(learning_rate=0.1))
    close(train_steps(model, 1), [1.75, 0.25], backend)


def test_sgd_momentum_hand_worked(backend):
    # step 1: g = 2.5 (both), v = -0.25, W = 1.75, b = 0.25
    # step 2: a = 1.75 + 0.25 = 2.0, g = 2.0; v = 0.9 * -0.25 - 0.1 * 2.0 = -0.425
    #         W = 1.75 - 0.425 = 1.325, b = 0.25 - 0.425 = -0.175
    model = one_weight_model(backend, SGD(learning_rate=0.1, momentum=0.9))
    close(train_steps(model, 2), [1.325, -0.175], backend)


def test_sgd_nesterov_hand_worked(backend):
    # step 1: g = 2.5, v = -0.25; W += 0.9 * -0.25 - 0.25 = -0.475 -> W = 1.525, b = 0.025
    # step 2: a = 1.525 + 0.025 = 1.55, g = 1.55; v = -0.225 - 0.155 = -0.38
    #         W += 0.9 * -0.38 - 0.155 = -0.497 -> W = 1.028, b = -0.472
    model = one_weight_model(backend, SGD(learning_rate=0.1, momentum=0.9, nesterov=True))
    close(train_steps(model, 2), [1.028, -0.472], backend)


def test_adagrad_hand_worked(backend):
    # accumulator starts at 0.1; g = 2.5: acc = 0.1 + 6.25 = 6.35
    # W = 2 - 0.1 * 2.5 / (sqrt(6.35) + 1e-7) = 2 - 0.25 / 2.5199206 = 2 - 0.0992095 = 1.9007905
    model = one_weight_model(backend, Adagrad(learning_rate=0.1))
    step = 0.25 / (math.sqrt(6.35) + 1e-7)
    close(train_steps(model, 1), [2 - step, 0.5 - step], backend)


def test_rmsprop_hand_worked(backend):
    # ms = 0.1 * 6.25 = 0.625; W = 2 - 0.01 * 2.5 / sqrt(0.625 + 1e-7) = 2 - 0.0316228
    model = one_weight_model(backend, RMSprop(learning_rate=0.01, rho=0.9))
    step = 0.025 / math.sqrt(0.625 + 1e-7)
    close(train_steps(model, 1), [2 - step, 0.5 - step], backend)


def test_adam_first_step_is_lr(backend):
    # t = 1: m_hat = g, v_hat = g^2, so the step is lr * g / |g| = lr = 0.01 (epsilon aside)
    model = one_weight_model(backend, Adam(learning_rate=0.01, epsilon=1e-12))
    close(train_steps(model, 1), [1.99, 0.49], backend)


def test_adamw_decay_hand_worked(backend):
    # decay first: W = 2 - 0.01 * 0.5 * 2 = 1.99, b = 0.5 - 0.01 * 0.5 * 0.5 = 0.4975;
    # then Adam's first step of size lr = 0.01 against g = 2.5 > 0: W = 1.98, b = 0.4875
    model = one_weight_model(backend, AdamW(learning_rate=0.01, weight_decay=0.5, epsilon=1e-12))
    close(train_steps(model, 1), [1.98, 0.4875], backend)


def test_adam_several_steps_against_the_formula(backend):
    model = one_weight_model(backend, Adam(learning_rate=0.05))
    w, b, m, v = 2.0, 0.5, np.zeros(2), np.zeros(2)
    for t in range(1, 5):
        g = np.array([w + b, w + b])  # dC/dW = x (a - y) with x = 1, y = 0; dC/db = a - y
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        step = 0.05 * math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * m / (np.sqrt(v) + 1e-7)
        w, b = w - step[0], b - step[1]
    close(train_steps(model, 4), [w, b], backend)


def test_schedules():
    s = StepDecay(0.1, drop=0.5, every=10)
    assert [s(0), s(9), s(10), s(25)] == [0.1, 0.1, 0.05, 0.025]
    e = ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5)
    assert e(0) == 0.1 and e(100) == pytest.approx(0.05) and e(50) == pytest.approx(0.1 / 2**0.5)
    c = CosineDecay(0.1, decay_steps=100, alpha=0.1)
    assert c(0) == pytest.approx(0.1) and c(50) == pytest.approx(0.1 * (0.45 + 0.1))
    assert c(100) == pytest.approx(0.01) and c(1000) == pytest.approx(0.01)


def test_schedule_drives_the_updates(backend):
    # lr(step) = 0.1 * 0.5**step: step 0 uses 0.1, step 1 uses 0.05
    # step 1: g = 2.5 -> W = 1.75, b = 0.25; step 2: g = 2.0 -> W = 1.75 - 0.1 = 1.65, b = 0.15
    model = one_weight_model(backend, SGD(learning_rate=StepDecay(0.1, drop=0.5, every=1)))
    close(train_steps(model, 2), [1.65, 0.15], backend)
    model = one_weight_model(backend, SGD(learning_rate=lambda step: 0.1 * 0.5**step))
    close(train_steps(model, 2), [1.65, 0.15], backend)


def test_global_norm_clipping(backend):
    # g = (2.5, 2.5), ||g|| = 2.5 sqrt(2) = 3.5355; clipped to norm 1: g = (0.70711, 0.70711)
    # lr = 0.1: W = 2 - 0.070711, b = 0.5 - 0.070711
    model = one_weight_model(backend, SGD(learning_rate=0.1, global_clipnorm=1.0))
    close(train_steps(model, 1), [2 - 0.1 / math.sqrt(2), 0.5 - 0.1 / math.sqrt(2)], backend)
    # a norm under the threshold leaves the gradient as it is
    model = one_weight_model(backend, SGD(learning_rate=0.1, global_clipnorm=10.0))
    close(train_steps(model, 1), [1.75, 0.25], backend)


def test_l2_regularization(backend):
    # cost + l2 * W^2 with l2 = 0.5: dW = 2.5 + 2 * 0.5 * 2 = 4.5; b is not regularized
    model = Sequential([Dense(1, l2=0.5)], input_dim=1, backend=backend)
    model.set_weights([np.array([[2.0]]), np.array([0.5])])
    model.compile(loss="quadratic", optimizer=SGD(learning_rate=0.1), metrics=[])
    close(train_steps(model, 1), [2 - 0.45, 0.25], backend)
    assert model.evaluate(np.array([[1.0]]), np.array([[0.0]])) == pytest.approx(
        0.5 * 1.8**2 + 0.5 * 1.55**2, rel=1e-5
    )  # (a - y)^2 / 2 + l2 * W^2, a = 1.55 + 0.25


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SGD(learning_rate=-1), r"learning_rate must be a number in \(0, inf\], got -1"),
        (lambda: SGD(momentum=1.0), r"momentum must be a number in \[0, 1\), got 1.0"),
        (lambda: SGD(nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda: Adam(beta_1=1.5), r"beta_1 must be a number in \[0, 1\), got 1.5"),
        (lambda: Adam(epsilon=0), r"epsilon must be a number in \(0, inf\], got 0"),
        (lambda: RMSprop(rho=-0.1), "rho must be a number"),
        (lambda: AdamW(weight_decay=-1), "weight_decay must be a number"),
        (lambda: Adagrad(initial_accumulator_value=-1), "initial_accumulator_value must be"),
        (lambda: SGD(global_clipnorm=0), "global_clipnorm must be a number"),
        (lambda: SGD(learning_rate=float("nan")), "learning_rate must be a number"),
        (lambda: StepDecay(0.1, every=0), "every must be an integer >= 1"),
        (lambda: get_optimizer("adamm"), "unknown optimizer 'adamm'; valid names are adagrad"),
    ],
)
def test_invalid_optimizer_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_optimizer_config_round_trip():
    opt = AdamW(learning_rate=CosineDecay(0.01, 50), weight_decay=0.1, global_clipnorm=2.0)
    expected = {
        "name": "adamw",
        "learning_rate": {
            "name": "CosineDecay",
            "initial_learning_rate": 0.01,
            "decay_steps": 50,
            "alpha": 0.0,
        },
        "global_clipnorm": 2.0,
        "weight_decay": 0.1,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
    }
    assert opt.config() == expected
    again = get_optimizer(opt.config())
    assert again.config() == expected
    assert isinstance(again, AdamW) and again.learning_rate(25) == opt.learning_rate(25)
    message = (
        "^learning_rate is a plain Python callable, which cannot be saved without pickle; use "
        r"a schedule from backprop.optimizers \(StepDecay, ExponentialDecay, CosineDecay\) to "
        "save this model$"
    )
    with pytest.raises(ValueError, match=message):
        SGD(learning_rate=lambda step: 0.1).config()


def test_schedule_defaults_are_kept_in_their_config():
    assert StepDecay(0.1).config() == {
        "name": "StepDecay",
        "initial_learning_rate": 0.1,
        "drop": 0.5,
        "every": 1000,
    }
    assert CosineDecay(0.1, 10).config() == {
        "name": "CosineDecay",
        "initial_learning_rate": 0.1,
        "decay_steps": 10,
        "alpha": 0.0,
    }


# Keras's defaults, and every constructor argument under its Keras name in config()
KERAS_DEFAULTS = {
    SGD: {"name": "sgd", "learning_rate": 0.01, "momentum": 0.0, "nesterov": False},
    Adagrad: {
        "name": "adagrad",
        "learning_rate": 0.001,
        "initial_accumulator_value": 0.1,
        "epsilon": 1e-7,
    },
    RMSprop: {"name": "rmsprop", "learning_rate": 0.001, "rho": 0.9, "epsilon": 1e-7},
    Adam: {"name": "adam", "learning_rate": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7},
    AdamW: {
        "name": "adamw",
        "learning_rate": 0.001,
        "weight_decay": 0.004,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
    },
}


@pytest.mark.parametrize("cls", list(KERAS_DEFAULTS), ids=lambda cls: cls.__name__)
def test_defaults_are_keras_and_config_names_every_argument(cls):
    assert cls().config() == {"global_clipnorm": None, **KERAS_DEFAULTS[cls]}
    clipped = cls(global_clipnorm=2.5)
    assert clipped.global_clipnorm == 2.5 and clipped.config()["global_clipnorm"] == 2.5
    again = get_optimizer({**KERAS_DEFAULTS[cls], "learning_rate": 0.5})
    assert type(again) is cls and again.config()["learning_rate"] == 0.5


def test_repr_shows_the_hyperparameters():
    assert repr(SGD(momentum=0.5)) == "SGD(momentum=0.5, nesterov=False)"
    assert repr(RMSprop()) == "RMSprop(rho=0.9, epsilon=1e-07)"
    assert repr(Adagrad()) == "Adagrad(initial_accumulator_value=0.1, epsilon=1e-07)"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: SGD(learning_rate=True),
            r"learning_rate must be a number in \(0, inf\], got True",
        ),
        (
            lambda: SGD(learning_rate=math.inf),
            r"learning_rate must be a number in \(0, inf\], got inf",
        ),
        (lambda: SGD(momentum=True), r"momentum must be a number in \[0, 1\), got True"),
        (lambda: SGD(nesterov=1, momentum=0.9), "nesterov must be True or False, got 1"),
        (lambda: SGD(nesterov=True), "nesterov=True needs momentum > 0, got momentum=0"),
        (lambda: RMSprop(rho=1.0), r"rho must be a number in \[0, 1\), got 1.0"),
        (lambda: RMSprop(epsilon=0), r"epsilon must be a number in \(0, inf\], got 0"),
        (lambda: Adagrad(epsilon=0), r"epsilon must be a number in \(0, inf\], got 0"),
        (lambda: Adam(beta_2=1.0), r"beta_2 must be a number in \[0, 1\), got 1.0"),
        (lambda: StepDecay(0), r"initial_learning_rate must be a number in \(0, inf\], got 0"),
        (lambda: StepDecay(0.1, drop=0), r"drop must be a number in \(0, 1\], got 0"),
        (lambda: StepDecay(0.1, drop=1.5), r"drop must be a number in \(0, 1\], got 1.5"),
        (lambda: StepDecay(0.1, every=2.0), r"every must be an integer >= 1, got 2.0"),
        (
            lambda: ExponentialDecay(0, 10, 0.5),
            r"initial_learning_rate must be a number in \(0, inf\], got 0",
        ),
        (lambda: ExponentialDecay(0.1, 0, 0.5), "decay_steps must be an integer >= 1, got 0"),
        (lambda: ExponentialDecay(0.1, 1.5, 0.5), "decay_steps must be an integer >= 1, got 1.5"),
        (lambda: ExponentialDecay(0.1, 10, 0), r"decay_rate must be a number in \(0, inf\], got 0"),
        (
            lambda: CosineDecay(0, 10),
            r"initial_learning_rate must be a number in \(0, inf\], got 0",
        ),
        (lambda: CosineDecay(0.1, 0), "decay_steps must be an integer >= 1, got 0"),
        (lambda: CosineDecay(0.1, 2.5), "decay_steps must be an integer >= 1, got 2.5"),
        (lambda: CosineDecay(0.1, 10, alpha=1.5), r"alpha must be a number in \[0, 1\], got 1.5"),
        (lambda: get_optimizer({"learning_rate": 0.1}), "unknown optimizer None; valid names"),
    ],
)
def test_each_argument_is_checked_at_its_bounds(make, message):
    """The whole message, anchored: the argument's name, its range, the value it got."""
    with pytest.raises(ValueError, match=f"^{message}"):
        make()


@pytest.mark.parametrize(
    "make",
    [
        lambda: SGD(momentum=0.0),
        lambda: RMSprop(rho=0.0),
        lambda: Adam(beta_1=0.0, beta_2=0.0),
        lambda: Adagrad(initial_accumulator_value=0.0),
        lambda: AdamW(weight_decay=0.0),
        lambda: StepDecay(0.1, drop=1.0, every=1),
        lambda: ExponentialDecay(0.1, 1, 2.0),
        lambda: CosineDecay(0.1, 1, alpha=1.0),
        lambda: CosineDecay(0.1, 1, alpha=0.0),
    ],
)
def test_the_closed_ends_of_each_range_are_accepted(make):
    make()


def test_get_optimizer_refuses_other_kinds():
    with pytest.raises(TypeError, match=r"^optimizer must be a name or an Optimizer, got int$"):
        get_optimizer(3)


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf])
def test_a_schedule_returning_a_bad_rate_is_an_error(value):
    opt = SGD(learning_rate=lambda step: 0.1 if step < 2 else value)
    assert opt.learning_rate_at(1) == 0.1
    message = (
        f"^the learning-rate schedule returned {value!r} at step 2; a learning rate must be a "
        "finite number >= 0$"
    )
    with pytest.raises(ValueError, match=message):
        opt.learning_rate_at(2)
    assert SGD(learning_rate=lambda step: 0.0).learning_rate_at(0) == 0.0


def _built(opt, shapes, be):
    params = [be.asarray(np.zeros(shape)) for shape in shapes]
    opt.build(params, be)
    return params


def test_step_counter_and_build(backend):
    """The counter starts at 0 (a schedule's first rate is its step-0 rate, before and after
    build), counts updates, and build resets it; a plain SGD keeps no state arrays; apply
    refuses parameters it was not built for; Adagrad's accumulator starts at its value."""
    opt = SGD(learning_rate=StepDecay(0.1, drop=0.5, every=1))
    assert opt.iterations == 0 and opt.current_learning_rate() == 0.1
    params = _built(opt, [(2, 3), (3,)], backend)
    assert opt.state == [{}, {}]
    grads = [backend.asarray(np.ones((2, 3))), backend.asarray(np.ones(3))]
    for _ in range(3):
        opt.apply(params, grads)
    assert opt.iterations == 3 and opt.current_learning_rate() == 0.0125
    # 0.1 + 0.05 + 0.025 of a unit gradient
    np.testing.assert_allclose(backend.to_numpy(params[1]), np.full(3, -0.175), rtol=1e-6)
    with pytest.raises(RuntimeError, match=r"^the optimizer is not built for these parameters"):
        opt.apply(params[:1], grads[:1])
    with pytest.raises(RuntimeError, match=r"not built for these parameters: call build\(\)$"):
        SGD().apply(params, grads)
    opt.build(params, backend)
    assert opt.iterations == 0
    adagrad = Adagrad(initial_accumulator_value=0.25)
    _built(adagrad, [(2,)], backend)
    np.testing.assert_array_equal(backend.to_numpy(adagrad.state[0]["accumulator"]), [0.25, 0.25])


def test_global_norm_clipping_spans_every_gradient(backend):
    """Three gradients (3, 4), (12,), (0, 0): the norm over all of them is 13; clipped to
    norm 6.5 each is halved."""
    opt = SGD(learning_rate=1.0, global_clipnorm=6.5)
    params = _built(opt, [(2,), (1,), (2,)], backend)
    grads = [backend.asarray(np.array(g, dtype=float)) for g in ([3, 4], [12], [0, 0])]
    with backend.device_context():  # the clipping's arithmetic runs on the current device
        opt.apply(params, grads)
    for got, want in zip(params, ([-1.5, -2.0], [-6.0], [0.0, 0.0]), strict=True):
        np.testing.assert_allclose(backend.to_numpy(got), want, rtol=1e-6)
