"""The fused in-place optimizer updates, several steps recomputed by hand, on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ATOL, RTOL


def as_backend(be, values):
    return be.asarray(np.asarray(values, dtype=be.dtype_name))


def check(be, got, expected):
    np.testing.assert_allclose(
        be.to_numpy(got), expected, rtol=RTOL[be.dtype_name] * 10, atol=ATOL[be.dtype_name] * 10
    )


GRADS = [[0.5, 0.1, -2.0], [0.25, -0.3, 1.0], [-1.0, 0.2, 0.0], [0.1, 0.1, 0.1]]
START = [1.0, -2.0, 0.5]


def test_sgd_hand_worked(typed_backend):
    # param = [1, -2, 0.5], grad = [0.5, 0.1, -2], lr = 0.1
    # param - lr grad = [1 - 0.05, -2 - 0.01, 0.5 + 0.2] = [0.95, -2.01, 0.7]
    be = typed_backend
    p = as_backend(be, START)
    be.sgd_update(p, as_backend(be, GRADS[0]), 0.1)
    check(be, p, [0.95, -2.01, 0.7])


def test_momentum_hand_worked(typed_backend):
    # step 1: v = 0.9 * 0 - 0.1 * [0.5, 0.1, -2] = [-0.05, -0.01, 0.2]
    #         p = [1, -2, 0.5] + v = [0.95, -2.01, 0.7]
    # step 2: g = [0.25, -0.3, 1]; v = 0.9 * [-0.05, -0.01, 0.2] - 0.1 * g
    #           = [-0.045 - 0.025, -0.009 + 0.03, 0.18 - 0.1] = [-0.07, 0.021, 0.08]
    #         p = [0.95 - 0.07, -2.01 + 0.021, 0.7 + 0.08] = [0.88, -1.989, 0.78]
    be = typed_backend
    p, v = as_backend(be, START), be.zeros((3,))
    be.momentum_update(p, as_backend(be, GRADS[0]), v, 0.1, 0.9)
    check(be, v, [-0.05, -0.01, 0.2])
    check(be, p, [0.95, -2.01, 0.7])
    be.momentum_update(p, as_backend(be, GRADS[1]), v, 0.1, 0.9)
    check(be, v, [-0.07, 0.021, 0.08])
    check(be, p, [0.88, -1.989, 0.78])


def test_nesterov_hand_worked(typed_backend):
    # step 1: v = [-0.05, -0.01, 0.2]; p += 0.9 v - 0.1 g = [-0.045 - 0.05, -0.009 - 0.01,
    #         0.18 + 0.2] = [-0.095, -0.019, 0.38]  ->  p = [0.905, -2.019, 0.88]
    be = typed_backend
    p, v = as_backend(be, START), be.zeros((3,))
    be.momentum_update(p, as_backend(be, GRADS[0]), v, 0.1, 0.9, nesterov=True)
    check(be, v, [-0.05, -0.01, 0.2])
    check(be, p, [0.905, -2.019, 0.88])


def reference(rule, steps, **hp):
    """The update rules written out in float64, one line per equation."""
    p = np.array(START)
    s1, s2 = np.zeros(3), np.zeros(3)
    for t, g in enumerate(map(np.array, GRADS[:steps]), start=1):
        lr = hp["lr"]
        if rule == "momentum":
            s1 = hp["momentum"] * s1 - lr * g
            p = p + (hp["momentum"] * s1 - lr * g if hp["nesterov"] else s1)
        elif rule == "adagrad":
            s1 = s1 + g * g
            p = p - lr * g / (np.sqrt(s1) + hp["epsilon"])
        elif rule == "rmsprop":
            s1 = hp["rho"] * s1 + (1 - hp["rho"]) * g * g
            p = p - lr * g / np.sqrt(s1 + hp["epsilon"])  # Keras's form: epsilon inside
        elif rule == "adam":
            b1, b2 = hp["beta_1"], hp["beta_2"]
            p = p - lr * hp["weight_decay"] * p
            s1 = b1 * s1 + (1 - b1) * g
            s2 = b2 * s2 + (1 - b2) * g * g
            m_hat, v_hat = s1 / (1 - b1**t), s2 / (1 - b2**t)
            # lr m_hat / (sqrt(v_hat) + eps_hat), with eps_hat = eps sqrt(1 - b2^t): the
            # form with the bias correction folded into the step size
            p = p - lr * m_hat / (np.sqrt(v_hat) + hp["epsilon"] / math.sqrt(1 - b2**t))
    return p, s1, s2


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_four_steps(typed_backend, nesterov):
    be = typed_backend
    p, v = as_backend(be, START), be.zeros((3,))
    for g in GRADS:
        be.momentum_update(p, as_backend(be, g), v, 0.05, 0.8, nesterov=nesterov)
    ref_p, ref_v, _ = reference("momentum", 4, lr=0.05, momentum=0.8, nesterov=nesterov)
    check(be, p, ref_p)
    check(be, v, ref_v)


def test_adagrad_four_steps(typed_backend):
    be = typed_backend
    p, acc = as_backend(be, START), be.zeros((3,))
    for g in GRADS:
        be.adagrad_update(p, as_backend(be, g), acc, 0.1, 1e-7)
    ref_p, ref_acc, _ = reference("adagrad", 4, lr=0.1, epsilon=1e-7)
    check(be, p, ref_p)
    check(be, acc, ref_acc)


def test_rmsprop_four_steps(typed_backend):
    be = typed_backend
    p, ms = as_backend(be, START), be.zeros((3,))
    for g in GRADS:
        be.rmsprop_update(p, as_backend(be, g), ms, 0.01, 0.9, 1e-7)
    ref_p, ref_ms, _ = reference("rmsprop", 4, lr=0.01, rho=0.9, epsilon=1e-7)
    check(be, p, ref_p)
    check(be, ms, ref_ms)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_four_steps(typed_backend, weight_decay):
    be = typed_backend
    p, m, v = as_backend(be, START), be.zeros((3,)), be.zeros((3,))
    for t, g in enumerate(GRADS, start=1):
        be.adam_update(p, as_backend(be, g), m, v, 0.01, 0.9, 0.999, 1e-7, t, weight_decay)
    ref_p, ref_m, ref_v = reference(
        "adam", 4, lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=weight_decay
    )
    check(be, p, ref_p)
    check(be, m, ref_m)
    check(be, v, ref_v)


def test_adam_first_step_hand_worked(backend):
    # t = 1, g = 0.5: m = 0.1 * 0.5 = 0.05, v = 0.001 * 0.25 = 0.00025
    # lr_t = 0.01 * sqrt(1 - 0.999) / (1 - 0.9) = 0.01 * 0.0316228 / 0.1 = 0.00316228
    # step = lr_t * 0.05 / sqrt(0.00025) = 0.00316228 * 0.05 / 0.0158114 = 0.01 (= lr: Adam's
    # first step has size lr in every coordinate, whatever the gradient's scale)
    be = backend
    p, m, v = as_backend(be, [1.0]), be.zeros((1,)), be.zeros((1,))
    be.adam_update(p, as_backend(be, [0.5]), m, v, 0.01, 0.9, 0.999, 0.0, 1)
    check(be, p, [0.99])


def test_adam_rejects_step_zero(backend):
    be = backend
    p = as_backend(be, [1.0])
    with pytest.raises(ValueError, match="step must be >= 1"):
        be.adam_update(p, p, be.zeros((1,)), be.zeros((1,)), 0.01, 0.9, 0.999, 1e-7, 0)


def test_updates_leave_grad_untouched(typed_backend):
    be = typed_backend
    g = as_backend(be, GRADS[0])
    p = as_backend(be, START)
    be.sgd_update(p, g, 0.1)
    be.momentum_update(p, g, be.zeros((3,)), 0.1, 0.9, nesterov=True)
    be.adagrad_update(p, g, be.zeros((3,)), 0.1, 1e-7)
    be.rmsprop_update(p, g, be.zeros((3,)), 0.1, 0.9, 1e-7)
    be.adam_update(p, g, be.zeros((3,)), be.zeros((3,)), 0.1, 0.9, 0.999, 1e-7, 3, 0.01)
    check(be, g, GRADS[0])


def test_updates_over_several_blocks_equal_one_block(monkeypatch):
    """The NumPy backend updates large arrays block by block; the result is the same."""
    import backends.numpy_backend as numpy_backend
    from backends import NumpyBackend

    rng = np.random.default_rng(0)
    n = 1000
    g = rng.standard_normal(n).astype(np.float32)
    results = []
    for block in (10**9, 64):  # one block, and 16 blocks (the last one short)
        monkeypatch.setattr(numpy_backend, "UPDATE_BLOCK", block)
        be = NumpyBackend()
        p = np.ones(n, np.float32)
        state = [np.zeros(n, np.float32) for _ in range(5)]
        be.sgd_update(p, g, 0.1)
        be.momentum_update(p, g, state[0], 0.1, 0.9, nesterov=True)
        be.adagrad_update(p, g, state[1], 0.1, 1e-7)
        be.rmsprop_update(p, g, state[2], 0.1, 0.9, 1e-7)
        be.adam_update(p, g, state[3], state[4], 0.1, 0.9, 0.999, 1e-7, 3, 0.01)
        results.append((p, *state))
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)
