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
    again = get_optimizer(opt.config())
    assert again.config() == opt.config()
    assert isinstance(again, AdamW) and again.learning_rate(25) == opt.learning_rate(25)
    with pytest.raises(ValueError, match="plain Python callable, which cannot be saved"):
        SGD(learning_rate=lambda step: 0.1).config()
