"""backprop.trace (one pass, layer by layer, against model.gradients, the derivation and finite
differences) and the GradientNorms callback (device sums, the captured epoch)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import backprop
from backends import emulated_cupy as ce
from backprop import (
    SGD,
    Activation,
    CSVLogger,
    Dense,
    Dropout,
    Flatten,
    GradientNorms,
    Sequential,
)
from backprop.trace import FORMULAS, at_layer

README = Path(__file__).resolve().parents[1] / "README.md"
FD_EPS = 1e-6  # central differences in float64
FD_RTOL, FD_ATOL = 1e-6, 1e-9
EXACT_RTOL = 1e-12  # float64: the same arithmetic, written differently on the host
F32_RTOL = 1e-5  # float32 sums over an epoch against host float64 sums


def _host_f(name, z):
    """The activation and its derivative on the host, as a textbook writes them."""
    if name == "sigmoid":
        a = 1.0 / (1.0 + np.exp(-z))
        return a, a * (1.0 - a)
    if name == "relu":
        return np.maximum(z, 0.0), (z > 0).astype(z.dtype)
    if name == "tanh":
        a = np.tanh(z)
        return a, 1.0 - a * a
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True), None
    raise AssertionError(name)


def _net(be, output="softmax", loss="categorical_crossentropy", dtype="float64"):
    model = Sequential(
        [Dense(5, "sigmoid"), Dense(4, "tanh"), Dense(3, output)],
        input_dim=6,
        backend=be,
        dtype=dtype,
        seed=2,
    )
    model.compile(loss=loss, optimizer=SGD(0.1))
    return model


def _batch(n=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 6)), np.eye(3)[rng.integers(0, 3, n)]


@pytest.mark.parametrize(
    ("output", "loss"), [("softmax", "categorical_crossentropy"), ("sigmoid", "mse")]
)
def test_trace_is_the_derivation_and_equals_model_gradients(backend64, output, loss):
    """Every array of the trace follows its formula, recomputed on the host in float64, and
    dW, db equal model.gradients (a separate pass)."""
    model = _net(backend64, output, loss)
    x, y = _batch()
    t = backprop.trace(model, x, y)
    grads = model.gradients(x, y)
    assert [layer.l for layer in t] == [1, 2, 3] and t.loss == loss
    a_prev = x
    for k, layer in enumerate(t):
        W, b = model.layers[k].get_weights()
        np.testing.assert_allclose(layer.a_prev, a_prev, rtol=EXACT_RTOL)
        np.testing.assert_allclose(layer.z, a_prev @ W + b, rtol=EXACT_RTOL)
        np.testing.assert_allclose(layer.a, _host_f(layer.activation, layer.z)[0], rtol=1e-12)
        np.testing.assert_allclose(layer.dW, layer.a_prev.T @ layer.delta, rtol=EXACT_RTOL)
        np.testing.assert_allclose(layer.db, layer.delta.sum(axis=0), rtol=EXACT_RTOL)
        np.testing.assert_array_equal(layer.dW, grads[2 * k])
        np.testing.assert_array_equal(layer.db, grads[2 * k + 1])
        a_prev = layer.a
    out = t[2]
    if output == "softmax":  # the closed form of softmax + cross-entropy
        want = (out.a - y) / len(x)
    else:  # MSE's dC/da through sigmoid'
        want = 2.0 * (out.a - y) / y.size * _host_f("sigmoid", out.z)[1]
    np.testing.assert_allclose(out.delta, want, rtol=1e-10, atol=1e-15)
    for k in (1, 0):  # delta^l = f'(z^l) * (delta^{l+1} (W^{l+1})^T)
        W_next = model.layers[k + 1].get_weights()[0]
        f_prime = _host_f(t[k].activation, t[k].z)[1]
        np.testing.assert_allclose(
            t[k].delta, f_prime * (t[k + 1].delta @ W_next.T), rtol=1e-10, atol=1e-15
        )


def test_trace_gradients_against_finite_differences(backend64):
    """dC/dW^l and dC/db^l of the trace against central differences of the cost."""
    model = _net(backend64)
    x, y = _batch(5, seed=1)
    t = backprop.trace(model, x, y)
    weights = model.get_weights()
    traced = [g for layer in t for g in (layer.dW, layer.db)]
    for index, (w, g) in enumerate(zip(weights, traced, strict=True)):
        numeric = np.zeros_like(w)
        for k in np.ndindex(w.shape):
            original = w[k]
            costs = []
            for sign in (1, -1):
                w[k] = original + sign * FD_EPS
                model.set_weights(weights)
                costs.append(model.cost(x, y))
            w[k] = original
            numeric[k] = (costs[0] - costs[1]) / (2 * FD_EPS)
        np.testing.assert_allclose(g, numeric, rtol=FD_RTOL, atol=FD_ATOL, err_msg=f"array {index}")
    model.set_weights(weights)


def test_trace_changes_no_weight_and_says_its_formulas():
    model = _net("numpy")
    x, y = _batch()
    before = model.get_weights()
    t = backprop.trace(model, x, y)
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    assert t.cost == pytest.approx(model.cost(x, y), rel=1e-12)
    assert t[0].formulas == {
        "z": "z^1 = a^0 W^1 + b^1",
        "a": "a^1 = f(z^1), f = sigmoid",
        "delta": "delta^1 = f'(z^1) * (delta^2 (W^2)^T)",
        "dW": "dC/dW^1 = (a^0)^T delta^1",
        "db": "dC/db^1 = sum over the batch of delta^1",
    }
    assert t["dense_2"].formulas["delta"] == "delta^3 = dC/dz^3 = (a^3 - y) / batch"
    general = backprop.trace(model, x, y, loss="mse")
    assert (
        general[2].formulas["delta"]
        == "delta^3 = dC/dz^3 = a^3 * (g - sum(g * a^3, axis=-1)), g = dC/da^3"
    )
    assert general.loss == "mse" and general.cost == pytest.approx(model.cost(x, y, "mse"))
    assert t[0].shapes == {
        "a_prev": (7, 6),
        "z": (7, 5),
        "a": (7, 5),
        "delta": (7, 5),
        "dW": (6, 5),
        "db": (5,),
    }
    with pytest.raises(KeyError, match=r"no layer named 'out'; the layers are \['dense'"):
        t["out"]


def test_the_formulas_are_the_readmes():
    """The templates trace fills in are the lines of the README's mathematics section."""
    section = README.read_text().split("## The mathematics, as the code writes it")[1]
    section = section.split("\n## ")[0]
    for name, template in FORMULAS.items():
        assert template in section, f"{name}: {template!r} is not in the README"
    assert at_layer(FORMULAS["delta"], 4) == "delta^4 = f'(z^4) * (delta^5 (W^5)^T)"
    assert at_layer(FORMULAS["z"], 1) == "z^1 = a^0 W^1 + b^1"


def test_print_is_a_table_of_the_layers():
    model = _net("numpy")
    x, y = _batch()
    t = backprop.trace(model, x, y)
    lines = str(t).splitlines()
    assert lines[0] == f"backprop trace: categorical_crossentropy, cost {t.cost:.6g}; a^0 = x: 7x6"
    assert lines[1].split() == [
        "l",
        "layer",
        "f",
        "z,",
        "a,",
        "delta",
        "W",
        "mean",
        "|delta|",
        "||dC/dW||",
    ]
    for line, layer in zip(lines[3:], t, strict=True):
        delta = float(np.mean(np.abs(layer.delta)))
        norm = float(np.sqrt((layer.dW**2).sum()))
        assert line.split() == [
            str(layer.l),
            layer.name,
            layer.activation,
            f"7x{layer.a.shape[1]}",
            "x".join(map(str, layer.dW.shape)),
            f"{delta:.3e}",
            f"{norm:.3e}",
        ]
    assert "delta^3 = dC/dz^3 = (a^3 - y) / batch" in t.formulas().splitlines()[3]


def test_trace_through_layers_without_weights(backend64):
    """Flatten, a linear Dense with an Activation layer after it, and Dropout (which keeps
    everything in the trace's inference-mode pass): the Dense layers' gradients are still
    model.gradients, and the layers without W say what they do."""
    model = Sequential(
        [
            Flatten(input_shape=(2, 3)),
            Dense(4),
            Activation("relu"),
            Dropout(0.5),
            Dense(3, "softmax"),
        ],
        backend=backend64,
        dtype="float64",
        seed=0,
    )
    model.compile(loss="categorical_crossentropy")
    x, y = _batch(4)
    t = backprop.trace(model, x.reshape(4, 2, 3), y)
    grads = model.gradients(x.reshape(4, 2, 3), y)
    np.testing.assert_array_equal(t[1].dW, grads[0])
    np.testing.assert_array_equal(t[4].dW, grads[2])
    assert t[0].formulas == {"a": "a^1 = flatten(a^0)"} and t[0].delta is None
    assert t[3].formulas == {"a": "a^4 = dropout(a^3)"}
    assert t[1].formulas["delta"] == "delta^2 = f'(z^2) * dC/da^2"  # through the Activation
    assert t[2].formulas["z"] == "z^3 = a^2" and t[2].dW is None
    np.testing.assert_allclose(t[1].delta, t[2].delta, rtol=EXACT_RTOL)  # linear: f' = 1
    assert "-" in str(t).splitlines()[3].split()  # Flatten's row: no W, no delta


def test_trace_reports_bad_input_clearly():
    model = _net("numpy")
    x, y = _batch()
    with pytest.raises(ValueError, match="x"):
        backprop.trace(model, x[:, :5], y)
    bare = Sequential([Dense(3, "softmax")], input_dim=6)
    with pytest.raises(RuntimeError, match=r"no loss: pass loss=\.\.\. or call compile"):
        backprop.trace(bare, x, y)


# ------------------------------------------------------------------ GradientNorms
def _classifier(be, dtype="float32"):
    model = Sequential(
        [Dense(8, "sigmoid"), Dense(5, "tanh"), Dense(3, "softmax")],
        input_dim=6,
        backend=be,
        dtype=dtype,
        seed=4,
    )
    model.compile(loss="categorical_crossentropy", optimizer=SGD(0.05, momentum=0.5))
    return model


def test_gradient_norms_are_the_epoch_means_of_the_traced_values(backend):
    """Over an unshuffled epoch, each figure is the mean over the steps of ||dW^l|| and of
    mean |delta^l|, as trace shows them for the same batches on a twin stepped by hand."""
    x, y = _batch(40, seed=3)
    model, twin = _classifier(backend), _classifier(backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # on the GPU without nvmath: eager after a warning
        history = model.fit(
            x, y, epochs=2, batch_size=16, shuffle=False, verbose=0, callbacks=[GradientNorms()]
        )
    names = ["dense", "dense_1", "dense_2"]
    for epoch in range(2):
        norms, deltas = [], []
        for start in range(0, 40, 16):
            t = backprop.trace(twin, x[start : start + 16], y[start : start + 16])
            norms.append([np.linalg.norm(layer.dW.astype(np.float64)) for layer in t])
            deltas.append([np.abs(layer.delta.astype(np.float64)).mean() for layer in t])
            twin.train_on_batch(x[start : start + 16], y[start : start + 16])
        for k, name in enumerate(names):
            got = history.history[f"grad_norm/{name}"][epoch]
            assert got == pytest.approx(np.mean([n[k] for n in norms]), rel=F32_RTOL)
            got = history.history[f"delta/{name}"][epoch]
            assert got == pytest.approx(np.mean([d[k] for d in deltas]), rel=F32_RTOL)
    for got, want in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_gradient_norms_in_the_captured_epoch_equal_step_by_step():
    """On the emulated GPU the epoch is recorded as graphs with the callback's device work
    inside (no host read: a read would break the capture and warn); its figures equal those of
    the same fit run step by step."""
    be = ce.emulated_cupy_backend()
    x, y = _batch(300, seed=5)
    X = be.asarray(x.astype(np.float32))
    runs = []
    for capture in (True, False):
        model = _classifier(be)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            history = model.fit(
                X,
                y,
                epochs=4,
                batch_size=4,
                verbose=0,
                capture=capture,
                callbacks=[GradientNorms()],
            )
        replays = model.trainer.train_function.replays if capture else {}
        runs.append((history.history, model.get_weights(), replays))
    (captured, w_captured, replays), (eager, w_eager, _) = runs
    # 75 steps: chunks of 64 and 11 steps, each warmed up, recorded, then replayed twice
    assert sorted(replays) == [(11, 44), (64, 256)]
    assert all(r.mode == "graph" and r.launches == 4 for r in replays.values())
    keys = [k for k in captured if "/" in k]
    assert len(keys) == 6 and keys == [k for k in eager if "/" in k]
    for key in keys:
        np.testing.assert_array_equal(captured[key], eager[key])
        assert all(v > 0 for v in captured[key])
    for got, want in zip(w_captured, w_eager, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_recorded_epoch_is_replayed_only_with_the_same_step_work():
    """A fit without the callback does not replay the recording made with it (nor the other
    way round); a second fit with the same callback replays it."""
    be = ce.emulated_cupy_backend()
    x, y = _batch(100, seed=6)
    X = be.asarray(x.astype(np.float32))
    model = _classifier(be)
    norms = GradientNorms()
    model.fit(X, y, epochs=1, verbose=0, callbacks=[norms])
    first = model.trainer.train_function
    again = model.fit(X, y, epochs=1, verbose=0, callbacks=[norms])
    assert model.trainer.train_function is first and "grad_norm/dense" in again.history
    before = be.to_numpy(norms._sums).copy()
    plain = model.fit(X, y, epochs=1, verbose=0)
    assert model.trainer.train_function is not first
    assert not [k for k in plain.history if "/" in k]
    np.testing.assert_array_equal(be.to_numpy(norms._sums), before)  # not replayed into
    assert model.trainer.step_hooks == ()


def test_gradient_norms_are_logged_columns_and_stay_out_of_the_progress_line(tmp_path, capsys):
    x, y = _batch(60)
    model = _classifier("numpy")
    path = tmp_path / "log.csv"
    model.fit(x, y, epochs=2, verbose=2, callbacks=[GradientNorms(), CSVLogger(path)])
    header = path.read_text().splitlines()[0].split(",")
    assert header[:2] == ["epoch", "loss"]  # learning_rate: only with a learning-rate callback
    assert header[2:] == [
        f"{kind}/{name}"
        for kind in ("grad_norm", "delta")
        for name in ("dense", "dense_1", "dense_2")
    ]
    out = capsys.readouterr().out
    assert re.search(r"^Epoch 2/2 - loss: [\d.]+$", out, re.M)


def test_gradient_norms_needs_a_layer_with_weights():
    model = Sequential([Flatten(input_shape=(2, 3))], seed=0)
    model.compile(loss="mse")
    x = np.zeros((4, 2, 3))
    message = r"^GradientNorms: the model has no layer with weights to watch$"
    with pytest.raises(ValueError, match=message):
        model.fit(x, np.zeros((4, 6)), verbose=0, callbacks=[GradientNorms()])


def test_no_step_work_is_left_behind_when_a_callback_refuses_to_start():
    """EarlyStopping refuses a figure this fit lacks when training starts: the fit ends, and
    a later train_on_batch runs no GradientNorms work (its sums stay zero)."""
    x, y = _batch(32)
    model = _classifier("numpy")
    norms = GradientNorms()
    with pytest.raises(ValueError, match="EarlyStopping monitors 'val_loss'"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[norms, backprop.EarlyStopping()])
    assert model.trainer.step_hooks == ()
    model.train_on_batch(x, y)
    np.testing.assert_array_equal(norms._sums, np.zeros(6))
