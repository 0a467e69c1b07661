"""No lost work, no tracebacks: each test is named after what it protects (issue 13).

Mistakes a user can fix are found before the work starts; a command-line error is one line
on stderr and exit code 2; whatever the user made (a trained model) is not lost."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
from test_cli import run

import backprop.cli
from backprop import SGD, Dense, ModelCheckpoint, Sequential, load_model
from backprop.training import TrainingDivergedError, exploded

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--layers", "16", "--epochs", "1", "--seed", "1", "--validation-split", "0"]


def _trained_would_start(monkeypatch):
    """Fail the test if training starts: for errors that must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("training started although the arguments were wrong")

    monkeypatch.setattr(backprop.model.Sequential, "fit", refuse)


# --------------------------------------------------------------------------- 1: outputs
@pytest.mark.parametrize("kind", ["directory", "read-only directory"])
def test_unwritable_save_path_is_refused_before_training(capsys, tmp_path, monkeypatch, kind):
    _trained_would_start(monkeypatch)
    if kind == "directory":
        target, expected = tmp_path, "it is a directory"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        real = os.access
        monkeypatch.setattr(
            os, "access", lambda p, m: False if str(p) == str(folder) else real(p, m)
        )
        target, expected = folder / "m.npz", "is read-only"
    code, out, err = run(capsys, "train", *SMALL, "--save", str(target))
    assert code == 2 and out == ""
    assert "--save: cannot write to" in err and expected in err
    assert "Traceback" not in err and ".tmp" not in err


def test_save_into_a_missing_directory_makes_it(capsys, tmp_path):
    target = tmp_path / "new" / "dir" / "m.npz"
    code, out, _ = run(capsys, "train", *SMALL, "--save", str(target))
    assert code == 0 and f"saved model to {target}" in out
    load_model(target)


def test_failed_final_save_keeps_the_model_in_a_fallback_file(capsys, tmp_path, monkeypatch):
    """The check passed, but the save itself fails after training (the disk filled up): the
    trained model goes to a file in the working directory and the error says where."""
    monkeypatch.chdir(tmp_path)
    real_save = Sequential.save

    def save(self, path):
        if "fallback" not in str(path) and "xpbackprop-model-" not in str(path):
            raise OSError(28, "No space left on device")
        real_save(self, path)

    monkeypatch.setattr(Sequential, "save", save)
    code, out, err = run(capsys, "train", *SMALL, "--save", str(tmp_path / "m.npz"))
    assert code == 2
    saved = list(tmp_path.glob("xpbackprop-model-*.npz"))
    assert len(saved) == 1
    assert f"the trained model was saved to {saved[0]} instead" in err
    assert "No space left on device" in err
    assert "test accuracy:" in out  # the work was reported, not lost
    load_model(saved[0])


def test_plot_format_matplotlib_lacks_is_refused_before_training(capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    _trained_would_start(monkeypatch)
    code, _, err = run(capsys, "train", *SMALL, "--plot", "curves.docx")
    assert code == 2
    assert "--plot: matplotlib cannot write .docx files; use one of" in err and ".png" in err


def test_plot_without_extension_says_the_files_it_wrote(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    target = tmp_path / "sub" / "curves"
    code, out, _ = run(capsys, "train", *SMALL, "--plot", str(target))
    assert code == 0
    curves, grid = tmp_path / "sub" / "curves.png", tmp_path / "sub" / "curves-misclassified.png"
    assert f"wrote {curves} (learning curves) and {grid}" in out
    assert curves.exists() and grid.exists() and not target.exists()


# --------------------------------------------------------------------------- 2-3: divergence
def test_diverged_training_is_a_one_line_error_not_a_traceback():
    # the 784-500-500-10 default network, as the report ran it, in its own process so that
    # stderr is what a user sees (NumPy's overflow warnings included, were there any)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "backprop",
            "train",
            "--epochs",
            "1",
            "--learning-rate",
            "10",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    code, err = done.returncode, done.stderr
    assert code == 2, err
    assert err.count("\n") == 1 and "error: the loss" in err
    assert "Try a smaller learning rate" in err and "Traceback" not in err


def test_loss_that_explodes_but_stays_finite_is_caught(capsys):
    """--learning-rate 1e6 once ended with exit 0 and 10% accuracy: the loss blew up to some
    14 but stayed finite. The explosion rule stops it."""
    code, out, err = run(capsys, "train", *SMALL, "--learning-rate", "1e6")
    assert code == 2 and "test accuracy" not in out
    assert "error: the loss exploded to" in err or "error: the loss became NaN" in err


def test_exploded_loss_keeps_the_weights_from_before_the_bad_batch():
    x, y = _digits()
    model = Sequential([Dense(16, "relu"), Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="categorical_crossentropy", optimizer=SGD(1e4), metrics=[])
    before = model.get_weights()
    with np.errstate(all="ignore"), pytest.raises(TrainingDivergedError) as info:
        model.fit(x, y, epochs=1, batch_size=100, shuffle=False, verbose=0)
    message = str(info.value)
    assert "at epoch 1, batch" in message and "weights from before that batch" in message
    bad = int(message.split("batch ")[1].split(" of")[0])
    reference = Sequential([Dense(16, "relu"), Dense(10, "softmax")], input_dim=784, seed=0)
    reference.compile(loss="categorical_crossentropy", optimizer=SGD(1e4), metrics=[])
    if bad > 1:
        with np.errstate(all="ignore"):
            reference.fit(
                x[: 100 * (bad - 1)], y[: 100 * (bad - 1)], batch_size=100, shuffle=False, verbose=0
            )
    for got, want, start in zip(model.get_weights(), reference.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.shape == start.shape


@pytest.mark.parametrize(
    ("loss", "start", "chance", "expected"),
    [
        (14.5, 2.3, 2.303, True),  # the 1e6 learning rate: far above a uniform guess
        (2.0, 2.3, 2.303, False),  # learning
        (9.0, 2.3, 2.303, False),  # bad, but under 4x a uniform guess
        (10.0, 6.0, 2.303, False),  # started even worse: not twice the start
        (0.3, 0.05, 2.303, False),  # a fine-tuned model with a spike: no false alarm
    ],
)
def test_explosion_rule(loss, start, chance, expected):
    assert exploded(loss, start, chance) is expected


def test_healthy_training_is_not_stopped():
    x, y = _digits()
    model = Sequential([Dense(32, "relu"), Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="categorical_crossentropy", optimizer=SGD(0.1), metrics=[])
    history = model.fit(x, y, epochs=3, batch_size=50, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


# --------------------------------------------------------------------------- 4: predict
@pytest.mark.parametrize("index", ["-1", "-1000", "1000"])
def test_predict_index_out_of_range_is_an_error_not_a_traceback(capsys, tmp_path, index):
    model = tmp_path / "m.npz"
    assert run(capsys, "train", *SMALL, "--save", str(model))[0] == 0
    code, _, err = run(capsys, "predict", str(model), "--index", index)
    assert code == 2 and f"--index must be in [0, 999], got {index}" in err


def test_predict_image_with_nan_is_an_error_not_a_traceback(capsys, tmp_path):
    model = tmp_path / "m.npz"
    assert run(capsys, "train", *SMALL, "--save", str(model))[0] == 0
    image = tmp_path / "nan.npy"
    np.save(image, np.full((28, 28), np.nan, dtype=np.float32))
    code, _, err = run(capsys, "predict", str(model), "--image", str(image))
    assert code == 2 and "holds NaN or infinite values" in err


# --------------------------------------------------------------------------- 5: bad files
def test_evaluate_of_an_npy_file_is_an_error_not_a_traceback(capsys, tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.ones(3))
    code, _, err = run(capsys, "evaluate", str(path))
    assert code == 2 and "holds one NumPy array (a .npy file), not a saved model" in err


# --------------------------------------------------------------------------- 6: checkpoints
def test_checkpoint_pattern_with_an_unknown_field_fails_when_training_starts(tmp_path):
    x, y = _digits(200)
    model = _classifier()
    with pytest.raises(ValueError, match=r"names \{foo\}, which this training does not report"):
        model.fit(
            x, y, epochs=2, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "ck-{foo}.npz"))]
        )
    assert model.epochs_done == 0  # refused before the first epoch


def test_checkpoint_monitoring_a_missing_figure_fails_when_training_starts(tmp_path):
    x, y = _digits(200)
    model = _classifier()
    checkpoint = ModelCheckpoint(str(tmp_path / "m.npz"), save_best_only=True)  # val_loss
    with pytest.raises(ValueError, match="monitors 'val_loss', which this training does not"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[checkpoint])
    assert model.epochs_done == 0


def test_checkpoint_into_a_missing_directory_creates_it(tmp_path):
    x, y = _digits(200)
    model = _classifier()
    pattern = str(tmp_path / "runs" / "a" / "ck-{epoch:02d}-{val_loss:.2f}.npz")
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.2, callbacks=[ModelCheckpoint(pattern)])
    names = sorted(p.name for p in (tmp_path / "runs" / "a").iterdir())
    assert len(names) == 2 and names[0].startswith("ck-01-") and names[1].startswith("ck-02-")


# --------------------------------------------------------------------------- 8: memory
@pytest.mark.parametrize("call", ["predict", "evaluate", "fit"])
def test_converted_input_copy_is_freed_after_the_call(call):
    """float64 x is converted to a float32 copy; after the call nothing of the model keeps
    it alive (it was layer 0's forward cache)."""
    x, y = _digits(300)
    model = _classifier()
    x64 = x.astype(np.float64)
    seen = []
    real = backprop.data.check_x

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(weakref.ref(out))
        return out

    import backprop.model as model_module

    original = model_module.data.check_x
    model_module.data.check_x = spy
    try:
        if call == "predict":
            model.predict(x64, batch_size=64)
        elif call == "evaluate":
            model.evaluate(x64, y, batch_size=64)
        else:
            model.fit(x64, y, epochs=1, batch_size=64, shuffle=False, verbose=0)
    finally:
        model_module.data.check_x = original
    assert seen and all(ref() is None for ref in seen)


# --------------------------------------------------------------------------- 10: inputs
def test_integer_pixels_get_a_scaling_hint():
    x, y = _digits(200)
    pixels = (x * 255).astype(np.uint8)
    model = _classifier()
    with pytest.warns(UserWarning, match=r"integers up to 255 .*x / 255"):
        model.fit(pixels, y, epochs=1, verbose=0)


def test_scaled_inputs_get_no_hint():
    x, y = _digits(200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _classifier().fit(x, y, epochs=1, verbose=0)


def test_complex_inputs_are_refused_not_silently_truncated():
    x, y = _digits(50)
    with pytest.raises(TypeError, match=r"x holds complex numbers \(dtype complex64\)"):
        _classifier().fit(x + 1j, y, epochs=1, verbose=0)


def test_huge_label_is_reported_as_given():
    x, _ = _digits(4)
    model = Sequential([Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd", metrics=[])
    with pytest.raises(ValueError, match=r"labels outside \[0, 9\].*found 1e\+20"):
        model.fit(x, np.array([0, 1, 2, 1e20]), verbose=0)


def test_negative_scheduled_learning_rate_is_caught_before_any_step():
    x, y = _digits(100)
    model = Sequential([Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(
        loss="categorical_crossentropy", optimizer=SGD(lambda step: 0.1 if step < 3 else -0.5)
    )
    before = model.get_weights()
    with pytest.raises(ValueError, match=r"schedule returned -0\.5 at step 3; a learning rate"):
        model.fit(x, y, epochs=1, batch_size=10, verbose=0)
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)  # the epoch never started


# --------------------------------------------------------------------------- 11: plotting
def test_plotting_leaves_the_users_matplotlib_backend_alone(tmp_path):
    pytest.importorskip("matplotlib")
    code = (
        "import matplotlib; matplotlib.use('svg'); import backprop.plotting as p; "
        "fig = p.plot_history({'loss': [1.0, 0.5], 'accuracy': [0.5, 0.8]}, "
        f"{str(tmp_path / 'c.png')!r}); "
        "import matplotlib.figure; assert isinstance(fig, matplotlib.figure.Figure); "
        "print(matplotlib.get_backend())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert done.stdout.strip() == "svg"
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_functions_return_figures_without_saving():
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    from backprop.plotting import plot_misclassified

    images = np.zeros((3, 784))
    fig = plot_misclassified(images, [1, 2, 3], [1, 0, 0])
    assert isinstance(fig, matplotlib.figure.Figure) and fig.misclassified == 2


# --------------------------------------------------------------------------- helpers
def _digits(n=1000):
    from backprop.datasets import load_mnist_sample, one_hot

    (x, labels), _ = load_mnist_sample()
    order = np.random.default_rng(0).permutation(len(x))[:n]
    return x[order], one_hot(labels[order])


def _classifier():
    model = Sequential([Dense(16, "relu"), Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="categorical_crossentropy", optimizer=SGD(0.1), metrics=["accuracy"])
    return model
