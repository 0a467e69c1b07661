"""The pictures: learning curves (integer epochs, titles, a log loss axis, 150 dpi), the
misclassified digits by confidence, the confusion matrix, the gradient norms of GradientNorms,
all drawn without pyplot; and the four files of the command line's --plot."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib.figure
import matplotlib.image

from backprop import SGD, Dense, GradientNorms, Sequential
from backprop.cli import main
from backprop.plotting import (
    DPI,
    compare_gradients,
    confusion_matrix,
    plot_confusion_matrix,
    plot_gradients,
    plot_history,
    plot_misclassified,
)

ROOT = Path(__file__).resolve().parents[1]
HISTORY = {
    "loss": [2.0, 1.0, 0.5, 0.3, 0.2, 0.15, 0.1],
    "accuracy": [0.3, 0.5, 0.7, 0.8, 0.85, 0.88, 0.9],
    "val_loss": [2.1, 1.2, 0.7, 0.5, 0.45, 0.44, 0.44],
    "val_accuracy": [0.3, 0.45, 0.65, 0.75, 0.8, 0.82, 0.83],
    "grad_norm/dense": [1e-3, 5e-4, 2e-4, 1e-4, 1e-4, 1e-4, 1e-4],
    "grad_norm/dense_1": [1e-1, 5e-2, 3e-2, 2e-2, 1e-2, 1e-2, 1e-2],
    "delta/dense": [1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5],
    "delta/dense_1": [1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3],
}


def _png_size(path_or_buffer) -> tuple[int, int]:
    height, width = matplotlib.image.imread(path_or_buffer).shape[:2]
    return width, height


def _draw(fig) -> None:
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out, ticks included


def test_history_has_integer_epochs_a_title_and_an_optional_log_loss_axis(tmp_path):
    path = tmp_path / "curves.png"
    fig = plot_history(HISTORY, path, title="784-30-10, SGD learning rate 0.1: 91.00%")
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.get_suptitle() == "784-30-10, SGD learning rate 0.1: 91.00%"
    loss_ax, accuracy_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["train loss", "validation loss"]
    np.testing.assert_array_equal(loss_ax.lines[0].get_xdata(), range(1, 8))
    np.testing.assert_array_equal(accuracy_ax.lines[1].get_ydata(), HISTORY["val_accuracy"])
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if 1 <= t <= 7]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert loss_ax.get_yscale() == "linear"
    assert _png_size(path) == (round(fig.get_figwidth() * DPI), round(fig.get_figheight() * DPI))
    assert DPI == 150
    logged = plot_history(HISTORY, log_loss=True)
    assert logged.axes[0].get_yscale() == "log" and logged.axes[1].get_yscale() == "linear"
    assert logged.axes[0].get_ylabel() == "loss (log scale)"


def test_two_epochs_get_two_ticks_not_fractions():
    fig = plot_history({"loss": [1.0, 0.5], "accuracy": [0.5, 0.8]})
    _draw(fig)
    for ax in fig.axes:
        visible = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert visible == [1.0, 2.0]


def test_history_without_accuracy_draws_the_loss_alone():
    fig = plot_history({"loss": [1.0, 0.5, 0.4]})
    assert len(fig.axes) == 1 and fig.axes[0].get_title() == "loss"


def test_misclassified_digits_come_most_confident_first_with_their_probability():
    true = np.array([2, 1, 5, 3, 4, 0])
    predicted = np.array([7, 1, 6, 8, 9, 0])
    p = np.full((6, 10), 0.01)
    for i, (d, conf) in enumerate(zip(predicted, [0.93, 0.9, 0.55, 0.99, 0.7, 0.8], strict=True)):
        p[i, d] = conf
    images = np.linspace(0, 1, 6 * 784).reshape(6, 784)
    fig = plot_misclassified(images, true, predicted, probabilities=p)
    assert fig.misclassified == 4 and fig.shown == [3, 0, 4, 2]
    captions = [ax.get_title() for ax in fig.axes if ax.images]
    assert captions == [
        "8 (p=0.99), true 3",
        "7 (p=0.93), true 2",
        "9 (p=0.70), true 4",
        "6 (p=0.55), true 5",
    ]
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), images[3].reshape(28, 28))
    assert fig.get_suptitle() == ("Misclassified test digits: 4 of 6 wrong, most confident first")
    limited = plot_misclassified(images, true, predicted, limit=2, probabilities=p)
    assert limited.shown == [3, 0]
    assert limited.get_suptitle().endswith("4 of 6 wrong, 2 shown, most confident first")
    plain = plot_misclassified(images, true, predicted)
    assert plain.shown == [0, 2, 3, 4] and plain.axes[0].get_title() == "7, true 2"


def test_misclassified_refuses_probabilities_of_the_wrong_shape():
    with pytest.raises(ValueError, match=r"probabilities must have shape \(3, classes\), got"):
        plot_misclassified(np.zeros((3, 784)), [1, 2, 3], [1, 0, 0], probabilities=np.zeros(3))


def test_confusion_matrix_counts_true_rows_against_predicted_columns(tmp_path):
    true = [0, 0, 1, 1, 1, 2, 2, 2, 2]
    predicted = [0, 1, 1, 1, 2, 2, 2, 0, 2]
    want = np.array([[1, 1, 0], [0, 2, 1], [1, 0, 3]])
    np.testing.assert_array_equal(confusion_matrix(true, predicted), want)
    assert confusion_matrix([1], [1], classes=10).shape == (10, 10)
    fig = plot_confusion_matrix(true, predicted, tmp_path / "c.png")
    np.testing.assert_array_equal(fig.matrix, want)
    ax = fig.axes[0]
    cells = {
        (round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts
    }
    assert cells == {(t, p): str(want[t, p]) for t, p in zip(*np.nonzero(want), strict=True)}
    assert ax.get_title() == "Confusion matrix: 66.67% correct"  # 6 of 9 on the diagonal
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="true and predicted must be 1-D label arrays"):
        confusion_matrix([0, 1], [0])


def test_gradients_per_layer_on_log_axes():
    fig = plot_gradients(HISTORY, title="sigmoid + MSE")
    norms, deltas = fig.axes
    assert norms.get_yscale() == "log" and deltas.get_yscale() == "log"
    assert [line.get_label() for line in norms.lines] == ["dense", "dense_1"]
    np.testing.assert_array_equal(norms.lines[0].get_ydata(), HISTORY["grad_norm/dense"])
    np.testing.assert_array_equal(deltas.lines[1].get_ydata(), HISTORY["delta/dense_1"])
    np.testing.assert_array_equal(norms.lines[0].get_xdata(), range(1, 8))
    assert norms.get_title() == "mean ||dC/dW^l||" and deltas.get_title() == "mean |delta^l|"
    assert fig.get_suptitle() == "sigmoid + MSE"


def test_compare_gradients_puts_runs_side_by_side_on_shared_axes():
    other = {k: [v * 100 for v in vs] for k, vs in HISTORY.items()}
    fig = compare_gradients({"sigmoid + MSE": HISTORY, "ReLU + cross-entropy": other})
    assert len(fig.axes) == 4
    top_left, top_right = fig.axes[0], fig.axes[1]
    assert top_left.get_title() == "sigmoid + MSE: mean ||dC/dW^l||"
    assert top_right.get_title() == "ReLU + cross-entropy: mean ||dC/dW^l||"
    _draw(fig)
    assert top_left.get_ylim() == top_right.get_ylim()  # shared: the gap is visible


def test_gradients_need_gradient_norms_in_the_history():
    with pytest.raises(ValueError, match=r"no grad_norm/<layer> figures: train with callbacks="):
        plot_gradients({"loss": [1.0]})
    with pytest.raises(TypeError, match=r"history must be a History or its \.history dict"):
        plot_gradients([1.0, 2.0])


def test_gradients_of_a_real_fit_from_its_history_object():
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6)), rng.integers(0, 3, 64)
    model = Sequential([Dense(5, "sigmoid"), Dense(3, "softmax")], input_dim=6, seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1))
    history = model.fit(x, y, epochs=3, verbose=0, callbacks=[GradientNorms()])
    fig = plot_gradients(history)
    np.testing.assert_array_equal(
        fig.axes[0].lines[1].get_ydata(), history.history["grad_norm/dense_1"]
    )


def test_every_picture_leaves_pyplot_unloaded_and_the_backend_alone(tmp_path):
    code = f"""
import sys, matplotlib
matplotlib.use("svg")
import numpy as np
import backprop.plotting as p
h = {HISTORY!r}
out = {str(tmp_path)!r}
figs = [
    p.plot_history(h, out + "/a.png", log_loss=True),
    p.plot_gradients(h, out + "/b.png"),
    p.compare_gradients({{"x": h, "y": h}}, out + "/c.png"),
    p.plot_confusion_matrix([0, 1, 1], [0, 1, 0], out + "/d.png"),
    p.plot_misclassified(np.zeros((2, 784)), [0, 1], [1, 1], out + "/e.png",
                         probabilities=np.eye(2)[[1, 1]]),
]
import matplotlib.figure
assert all(isinstance(f, matplotlib.figure.Figure) for f in figs)
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.split() == ["svg", "False"]
    for name in "abcde":
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_plot_writes_four_pictures(capsys, tmp_path):
    plot = tmp_path / "curves.png"
    argv = ["train", "--layers", "16", "--epochs", "2", "--seed", "1", "--quiet"]
    assert main([*argv, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    files = [
        tmp_path / f"curves{s}.png" for s in ("", "-misclassified", "-gradients", "-confusion")
    ]
    assert f"wrote {files[0]} (learning curves) and {files[1]} (" in out
    assert f"wrote {files[2]} (gradient norms per layer) and {files[3]} (confusion matrix)" in out
    for path in files:
        width, height = _png_size(path)
        assert width > 600 and height > 400 and path.stat().st_size < 300_000


def test_cli_gradient_norms_prints_the_last_epoch_per_layer(capsys):
    argv = ["train", "--layers", "16", "--epochs", "1", "--seed", "1", "--quiet"]
    assert main([*argv, "--gradient-norms"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("gradient norms, last epoch (mean over its steps):")
    for line, layer in zip(lines[at + 1 : at + 3], ("dense", "dense_1"), strict=True):
        assert line.startswith(f"  {layer}: ||dC/dW|| ") and ", |delta| " in line
