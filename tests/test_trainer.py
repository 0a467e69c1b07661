"""The training loop's shape: the Trainer's cache of recorded chunks, the callbacks' lifecycle
(begun callbacks always end, monitored figures checked at the start, a checkpoint's best kept
across fits), and the module structure the redesign promises (no import cycle, no model
internals reached from training.py, short functions)."""

from __future__ import annotations

import ast
import gc
import os
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest

from backends import emulated_cupy as ce
from backprop import (
    SGD,
    CSVLogger,
    Dense,
    EarlyStopping,
    LambdaCallback,
    ModelCheckpoint,
    Sequential,
    load_model,
)
from bench.launches import graph_nodes

PACKAGE = Path(__file__).resolve().parent.parent / "backprop"


def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 12)).astype(np.float32), rng.integers(0, 3, n)


def _model(be, lr=0.1, seed=3):
    model = Sequential([Dense(9, "tanh"), Dense(3, "softmax")], input_dim=12, backend=be, seed=seed)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(lr, momentum=0.9))
    return model


def _fit(model, X, y, capture, epochs=3):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return model.fit(X, y, epochs=epochs, batch_size=16, verbose=0, capture=capture)


def test_recompile_drops_the_recorded_graph_and_refit_records_anew():
    """A graph recorded before compile() is gone after it (nothing holds it), and fitting
    the same device x again records a new graph for the new optimizer's arrays, training
    exactly as an eager twin that went through the same compile and fits."""
    be = ce.emulated_cupy_backend()
    x, y = _data()
    X = be.asarray(x)
    captured, eager = _model(be), _model(be)
    _fit(captured, X, y, capture=True)
    _fit(eager, X, y, capture=False)
    (old,) = captured.trainer.train_function.replays.values()
    assert old.mode == "graph"
    old_graph = weakref.ref(old.graph)
    del old
    for model in (captured, eager):
        model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.05, momentum=0.5))
    assert captured.trainer.train_function is None
    gc.collect()
    assert old_graph() is None  # the old recording, and the arrays it wrote to, are let go
    _fit(captured, X, y, capture=True)
    _fit(eager, X, y, capture=False)
    (new,) = captured.trainer.train_function.replays.values()
    assert new.mode == "graph" and new.launches == 3  # warm-up, record, replay
    for got, want in zip(captured.get_weights(), eager.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


# Captured and eager GEMMs go through different cuBLAS handles and workspaces on a GPU, so
# there they agree to float32 rounding; everywhere else (the emulation has one cuBLAS) exactly.
GPU_CAPTURE_RTOL, GPU_CAPTURE_ATOL = 1e-4, 1e-6


def test_captured_and_eager_training_agree(backend_name):
    from conftest import make_backend

    be = make_backend(backend_name)
    x, y = _data()
    X = be.asarray(x)
    runs = []
    for capture in (True, False):
        model = _model(be)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no nvmath-python: eager after one warning
            model.fit(X, y, epochs=3, batch_size=16, verbose=0, capture=capture)
        runs.append(model.get_weights())
    for got, want in zip(*runs, strict=True):
        if backend_name == "cupy":
            np.testing.assert_allclose(got, want, rtol=GPU_CAPTURE_RTOL, atol=GPU_CAPTURE_ATOL)
        else:
            np.testing.assert_array_equal(got, want)


def test_a_rebuilt_network_is_not_replayed_with_the_old_graph():
    """add() rebuilds the flat parameter buffer: the next fit must not replay a graph that
    writes to the old one."""
    be = ce.emulated_cupy_backend()
    x, y = _data()
    X = be.asarray(x)
    model = _model(be)
    _fit(model, X, y, capture=True)
    function = model.trainer.train_function
    model.pop()
    model.add(Dense(3, "softmax", name="out"))
    _fit(model, X, y, capture=True, epochs=1)
    assert model.trainer.train_function is not function


def test_graph_size_does_not_grow_with_the_data():
    """One chunk's graph, whatever the number of samples (the emulation counts its nodes)."""
    small, large = graph_nodes(20_000, "784-16-16-10"), graph_nodes(200_000, "784-16-16-10")
    assert small == large <= 5_000


def test_model_checkpoint_keeps_its_best_across_fits(tmp_path):
    """A second fit that does worse does not overwrite the best file of the first (Keras
    keeps ModelCheckpoint's best across fit calls): the file holds the first fit's best."""
    x, y = _data(200)
    x_val, y_val = _data(60, seed=1)
    model = _model("numpy")
    start = model.get_weights()
    path = tmp_path / "best.npz"
    checkpoint = ModelCheckpoint(path, monitor="val_loss", save_best_only=True)
    seen = []
    remember = LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(model.get_weights()))
    history = model.fit(
        x, y, epochs=4, verbose=0, validation_data=(x_val, y_val), callbacks=[remember, checkpoint]
    )
    best = int(np.argmin(history.history["val_loss"]))
    model.set_weights(start)  # a worse model: the untrained one, trained very slowly
    model.optimizer.learning_rate = 1e-6
    again = model.fit(
        x, y, epochs=1, verbose=0, validation_data=(x_val, y_val), callbacks=[checkpoint]
    )
    assert again.history["val_loss"][0] > min(history.history["val_loss"])
    assert checkpoint.best == min(history.history["val_loss"])
    for got, want in zip(load_model(path).get_weights(), seen[best], strict=True):
        np.testing.assert_array_equal(got, want)


def _open_paths() -> set[str]:
    fds = Path("/proc/self/fd")
    paths = set()
    for fd in fds.iterdir():
        try:
            paths.add(os.readlink(fd))
        except OSError:
            pass
    return paths


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_csv_logger_closes_its_file_when_fit_raises(tmp_path):
    x, y = _data()
    path = tmp_path / "log.csv"

    def fail(epoch, logs):
        if epoch == 1:
            raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="a callback failed"):
        _model("numpy").fit(
            x,
            y,
            epochs=3,
            verbose=0,
            callbacks=[CSVLogger(path), LambdaCallback(on_epoch_end=fail)],
        )
    assert str(path) not in _open_paths()
    rows = path.read_text().splitlines()
    assert rows[0] == "epoch,loss" and len(rows) == 3  # epochs 0 and 1 (no LR callback: no LR)


def test_callbacks_that_began_end_when_a_later_one_refuses_to_start(tmp_path):
    """EarlyStopping refuses a figure this fit lacks when training starts, before any step;
    the CSVLogger that began before it is ended (its file closed), and nothing trained."""
    x, y = _data()
    model = _model("numpy")
    start = model.get_weights()
    path = tmp_path / "log.csv"
    with pytest.raises(ValueError, match=r"EarlyStopping monitors 'val_loss'.*available: loss \("):
        model.fit(x, y, epochs=3, verbose=0, callbacks=[CSVLogger(path), EarlyStopping()])
    assert str(path) not in _open_paths()
    assert model.epochs_done == 0 and model.optimizer.iterations == 0
    for got, want in zip(model.get_weights(), start, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_keras_callback_stops_training_through_the_model():
    """Keras's idiom: a callback sets self.model.stop_training = True."""
    x, y = _data()
    model = _model("numpy")

    class StopAfterTwo(LambdaCallback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.model.stop_training = True

    history = model.fit(x, y, epochs=5, verbose=0, callbacks=[StopAfterTwo()])
    assert history.epoch == [0, 1] and model.epochs_done == 2


def test_train_on_batch_and_test_on_batch_are_the_trainers_steps():
    """test_on_batch is the batch's cost without an update; train_on_batch the same cost,
    then one update."""
    x, y = _data(16)
    model = _model("numpy")
    before = model.cost(x, y)
    assert model.test_on_batch(x, y) == pytest.approx(before, rel=1e-6)
    assert model.test_on_batch(x, y) == pytest.approx(before, rel=1e-6)  # nothing changed
    assert model.train_on_batch(x, y) == pytest.approx(before, rel=1e-6)
    assert model.cost(x, y) < before


def _weighted_model():
    model = Sequential([Dense(3, "softmax", l2=0.01)], input_dim=4, backend="numpy", seed=5)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.5), metrics=["accuracy"])
    return model


def test_batch_steps_report_the_weighted_cost_with_its_l2_term_and_the_metrics():
    """train_on_batch and test_on_batch with sample weights, an L2 term and a metric: the
    loss is Keras's (sum of weight x cross-entropy over the batch size, plus 0.01 sum W^2, of
    the weights before the update), computed by hand; train_on_batch's update is the weighted
    one (a one-step fit with the same weights ends with the same weights)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    w = np.array([1.0, 2.0, 0.5, 0.0, 1.5, 1.0])
    model = _weighted_model()
    W, b = (a.astype(np.float64) for a in model.get_weights())
    z = x @ W + b
    a = np.exp(z - z.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    loss = (w * -np.log(a[np.arange(6), y])).sum() / 6 + 0.01 * (W**2).sum()
    accuracy = np.mean(a.argmax(1) == y)
    assert accuracy not in (0.0, 1.0)
    for step in (model.test_on_batch, model.train_on_batch):
        got = step(x, y, sample_weight=w, return_dict=True)
        assert got == {"loss": pytest.approx(loss, rel=1e-6), "accuracy": pytest.approx(accuracy)}
    twin = _weighted_model()
    twin.fit(x, y, epochs=1, batch_size=6, shuffle=False, verbose=0, sample_weight=w)
    for got, want in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    unweighted = _weighted_model()
    unweighted.train_on_batch(x, y)
    assert not np.allclose(unweighted.get_weights()[0], model.get_weights()[0], atol=1e-3)


# ------------------------------------------------------------------ the module structure
def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text()) for p in sorted(PACKAGE.glob("*.py"))}


def _imports(tree: ast.Module) -> set[str]:
    """The backprop modules a module imports, at any level of its code."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycle_in_backprop():
    graph = {name: _imports(tree) & set(_modules()) for name, tree in _modules().items()}
    graph.pop("__init__")
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import cycle: " + " -> ".join([*path, name])
        if name in done:
            return
        for other in sorted(graph.get(name, ())):
            visit(other, [*path, name])
        done.add(name)

    for name in graph:
        visit(name, [])


def test_nothing_below_the_facade_imports_it():
    for name, tree in _modules().items():
        if name not in ("__init__", "models", "cli", "gradcheck", "model"):
            assert "model" not in _imports(tree), f"backprop/{name}.py imports model"


def test_imports_inside_functions_are_only_optional_dependencies():
    optional = {"matplotlib", "mpi4py", "tqdm", "threadpoolctl", "cupy"}
    for name, tree in _modules().items():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    module = ("." * node.level) + (node.module or "")
                elif isinstance(node, ast.Import):
                    module = node.names[0].name
                else:
                    continue
                top = module.lstrip(".").split(".")[0]
                assert (not module.startswith(".") and top in optional) or module == ".plotting", (
                    f"backprop/{name}.py:{node.lineno} imports {module} inside {fn.name}"
                )


def test_training_reaches_no_private_member_of_a_model():
    source = (PACKAGE / "training.py").read_text()
    assert "model._" not in source and "from .model" not in source


def test_no_function_longer_than_60_lines():
    long = [
        f"backprop/{name}.py:{fn.lineno} {fn.name} ({fn.end_lineno - fn.lineno + 1} lines)"
        for name, tree in _modules().items()
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        and fn.end_lineno - fn.lineno + 1 > 60
        and not (name == "cli" and fn.name == "build_parser")
    ]
    assert not long, long


def test_run_epoch_before_fit_says_what_it_needs():
    model = _model("numpy")
    with pytest.raises(RuntimeError, match=r"^run_epoch needs the data of a fit: call fit first$"):
        model.trainer.run_epoch()
