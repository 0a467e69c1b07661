"""No lost work, no tracebacks: each test is named after what it protects (issues 13, 20).

Mistakes a user can fix are found before the work starts; a command-line error is one line
on stderr and exit code 2; whatever the user made (a trained model) is not lost."""

from __future__ import annotations

import csv
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
import backprop.utils
from backprop import (
    SGD,
    CSVLogger,
    Dense,
    Dropout,
    EarlyStopping,
    Input,
    ModelCheckpoint,
    ReduceLROnPlateau,
    Sequential,
    load_model,
)
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


# =========================================================================== issue 20
# ---------------------------------------------------------------- lost or damaged data
def test_inputs_with_no_features_are_refused_before_the_model_is_built():
    model = Sequential([Dense(3, "softmax")], seed=0)
    model.compile(loss="categorical_crossentropy", optimizer="sgd")
    with pytest.raises(ValueError, match=r"x has shape \(5, 0\): each sample needs at least one"):
        model.fit(np.zeros((5, 0)), np.eye(3)[[0, 1, 2, 0, 1]], verbose=0)
    assert not model.built and model.input_shape is None


@pytest.mark.parametrize("writer", ["save", "save_weights", "CSVLogger"])
def test_a_file_without_write_permission_is_kept_even_as_root(tmp_path, writer):
    """0444 says "keep me": os.access grants root everything, so the mode bits decide."""
    target = tmp_path / "keep.npz"
    target.write_bytes(b"precious")
    target.chmod(0o444)
    model = _classifier()
    with pytest.raises(PermissionError, match=r"keep\.npz: the file is read-only"):
        if writer == "CSVLogger":
            x, y = _digits(50)
            model.fit(x, y, verbose=0, callbacks=[CSVLogger(str(target), append=True)])
        else:
            getattr(model, writer)(target)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npz"]  # no probe left behind


# ---------------------------------------------------------------- silently wrong
def test_csv_logger_appends_each_fit_under_the_files_own_header(tmp_path):
    x, y = _digits(200)
    path = tmp_path / "log.csv"
    model = _classifier()
    first = model.fit(x, y, epochs=2, verbose=0, validation_split=0.25, callbacks=[CSVLogger(path)])
    second = model.fit(x, y, epochs=1, verbose=0, callbacks=[CSVLogger(path, append=True)])
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]
    assert list(rows[0]) == header
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert float(rows[1]["val_loss"]) == pytest.approx(first.history["val_loss"][1])
    assert float(rows[2]["loss"]) == pytest.approx(second.history["loss"][0])
    assert float(rows[2]["accuracy"]) == pytest.approx(second.history["accuracy"][0])
    assert rows[2]["val_loss"] == rows[2]["val_accuracy"] == ""  # not reported: empty


def test_csv_logger_refuses_to_append_figures_the_file_has_no_column_for(tmp_path):
    x, y = _digits(200)
    path = tmp_path / "log.csv"
    model = _classifier()
    model.fit(x, y, epochs=1, verbose=0, callbacks=[CSVLogger(path)])
    before = path.read_text()
    with pytest.raises(ValueError, match=r"has the columns epoch,loss,accuracy, but this"):
        model.fit(x, y, verbose=0, validation_split=0.25, callbacks=[CSVLogger(path, append=True)])
    assert path.read_text() == before and model.epochs_done == 1


# ---------------------------------------------------------------- corrupt files
def _saved_small_model(tmp_path, units=2, inputs=3):
    model = Sequential([Dense(units, "softmax")], input_dim=inputs, seed=0)
    model.compile(loss="categorical_crossentropy", optimizer="sgd", metrics=["accuracy"])
    path = tmp_path / "m.npz"
    model.save(path)
    return path


def _load_damaged(tmp_path, damaged):
    """load_model on these bytes: None if it loads, else the ModelFileError's message (any
    other exception fails the test)."""
    from backprop.saving import ModelFileError

    target = tmp_path / "damaged.npz"
    target.write_bytes(bytes(damaged))
    try:
        load_model(target)
    except ModelFileError as exc:
        assert str(exc).startswith(f"{target} is not a valid xpbackprop-model file: ")
        return str(exc)
    return None


def test_bit_flipped_model_files_load_or_are_one_model_file_error(tmp_path):
    """One bit flipped in every 11th byte of a saved model (zip headers, array headers,
    data, the central directory): each file loads or is refused as one ModelFileError."""
    raw = _saved_small_model(tmp_path).read_bytes()
    refused = 0
    for i in range(0, len(raw), 11):
        damaged = bytearray(raw)
        damaged[i] ^= 1 << (i % 8)
        refused += _load_damaged(tmp_path, damaged) is not None
    assert refused > len(raw) // 20


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("encrypted flag", "RuntimeError: File 'format.npy' is encrypted"),
        ("zip version", "NotImplementedError: zip file version 9.9"),
        ("array header", "Cannot parse header"),
    ],
)
def test_damage_past_the_zip_checks_is_a_model_file_error(tmp_path, where, why):
    """The damage that once got past the checks as RuntimeError, NotImplementedError or a
    header parser's error (a model with arrays bigger than one read)."""
    raw = _saved_small_model(tmp_path, units=100, inputs=784).read_bytes()
    damaged = bytearray(raw)
    directory = raw.index(b"PK\x01\x02")  # the first member's central directory entry
    if where == "encrypted flag":
        damaged[directory + 8] |= 1
    elif where == "zip version":
        damaged[directory + 6] = 99
    else:
        header = raw.index(b"{'descr'", raw.index(b"weight_0"))
        damaged[header + 1] = ord('"')
    message = _load_damaged(tmp_path, damaged)
    assert message is not None and "it is corrupted or truncated" in message and why in message


def test_a_bad_gzip_block_in_an_idx_file_is_a_data_error(tmp_path):
    import gzip

    from backprop.datasets import read_idx

    packed = bytearray(gzip.compress(bytes(_idx_bytes(np.zeros((5, 28, 28), np.uint8)))))
    packed[12] ^= 0xFF  # inside the deflate stream
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(bytes(packed))
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte\.gz is corrupted or truncated"):
        read_idx(path)


def _idx_bytes(array):
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return b"\x00\x00\x08" + bytes([array.ndim]) + dims + array.astype(np.uint8).tobytes()


# ---------------------------------------------------------------- errors before the work
def test_checkpoint_of_a_model_that_cannot_be_saved_fails_when_training_starts(tmp_path):
    x, y = _digits(100)
    model = Sequential([Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="categorical_crossentropy", optimizer=SGD(lambda step: 0.1))
    before = model.get_weights()
    with pytest.raises(ValueError, match="ModelCheckpoint cannot save this model: learning_rate"):
        model.fit(x, y, epochs=2, verbose=0, callbacks=[ModelCheckpoint(str(tmp_path / "m.npz"))])
    assert model.epochs_done == 0 and not list(tmp_path.iterdir())
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)
    # the weights alone can be saved: that checkpoint trains
    weights_only = ModelCheckpoint(str(tmp_path / "w.npz"), save_weights_only=True)
    model.fit(x, y, epochs=1, verbose=0, callbacks=[weights_only])
    assert (tmp_path / "w.npz").exists()


@pytest.mark.parametrize("where", ["save", "checkpoint"])
def test_a_path_ending_in_a_slash_is_refused_before_training(tmp_path, where):
    x, y = _digits(100)
    model = _classifier()
    target = str(tmp_path / "newdir") + os.sep
    with pytest.raises(IsADirectoryError, match=r"newdir/: it is a directory; give a file name"):
        if where == "save":
            model.save(target)
        else:
            model.fit(x, y, epochs=2, verbose=0, callbacks=[ModelCheckpoint(target)])
    assert model.epochs_done == 0


def test_the_write_check_creates_a_real_file_so_proc_is_refused(tmp_path):
    from backprop.saving import check_writable

    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    with pytest.raises(PermissionError, match=r"cannot write to /proc/x\.npz: cannot create a"):
        check_writable("/proc/x.npz")
    with pytest.raises(PermissionError) as caught:
        _classifier().save("/proc/x.npz")
    assert ".tmp" not in str(caught.value)
    assert check_writable(tmp_path / "ok.npz") == str(tmp_path)
    assert not list(tmp_path.iterdir())  # the probe is gone


# ---------------------------------------------------------------- misleading messages
@pytest.mark.parametrize(
    ("backend", "env", "expected"),
    [
        ("nope", {}, "unknown backend 'nope'"),
        (None, {"BACKPROP_NUM_THREADS": "0"}, "BACKPROP_NUM_THREADS must be an integer >= 1"),
        (None, {"BACKPROP_BACKEND": "nope"}, r"\$BACKPROP_BACKEND is 'nope', which is not a"),
    ],
)
def test_load_model_blames_the_backend_not_the_file(tmp_path, monkeypatch, backend, env, expected):
    from backprop.saving import ModelFileError

    path = tmp_path / "ok.npz"
    _classifier().save(path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=expected) as caught:
        load_model(path, backend=backend)
    assert not isinstance(caught.value, ModelFileError) and "ok.npz" not in str(caught.value)


def test_load_model_on_a_weights_file_points_to_load_weights(tmp_path):
    path = tmp_path / "w.npz"
    _classifier().save_weights(path)
    with pytest.raises(ValueError, match=r"weights only \(written by save_weights\).*load_weights"):
        load_model(path)


def test_float64_inputs_beyond_float32_are_called_out_of_range_not_infinite():
    x, y = _digits(20)
    x = x.astype(np.float64)
    x[3, 5] = 1e39
    with pytest.raises(
        ValueError, match=r"x holds 1e\+39 \(at row 3, column 5\), beyond the range"
    ):
        _classifier().fit(x, y, verbose=0)
    x[3, 5] = np.inf
    with pytest.raises(ValueError, match=r"x contains NaN or infinite values \(first at row 3"):
        _classifier().fit(x, y, verbose=0)


def test_divergence_on_unscaled_inputs_names_the_inputs_as_the_cause():
    x, y = _digits(200)
    model = _classifier()
    with np.errstate(all="ignore"), pytest.raises(TrainingDivergedError) as caught:
        model.fit(x * 1e30, y, epochs=1, verbose=0)
    message = str(caught.value)
    assert "x holds values up to 1e+30 in magnitude" in message
    assert "the likelier cause is unscaled input; scale x to about [0, 1]" in message
    # scaled inputs that diverge keep the learning-rate advice alone
    model = Sequential([Dense(16, "relu"), Dense(10, "softmax")], input_dim=784, seed=0)
    model.compile(loss="categorical_crossentropy", optimizer=SGD(1e4))
    with np.errstate(all="ignore"), pytest.raises(TrainingDivergedError) as caught:
        model.fit(x, y, epochs=1, verbose=0)
    assert "smaller learning rate" in str(caught.value) and "unscaled" not in str(caught.value)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Dropout(np.float32(0.5)),
        lambda: Dense(4, l2=np.float32(0.01)),
        lambda: EarlyStopping(patience=np.int64(2), min_delta=np.float64(0.1)),
        lambda: ReduceLROnPlateau(
            factor=np.float32(0.5), patience=np.int32(1), min_lr=np.float32(0)
        ),
        lambda: ReduceLROnPlateau(cooldown=np.int64(2)),
        lambda: SGD(np.float32(0.1), momentum=np.float64(0.9)),
    ],
)
def test_numpy_scalars_are_numbers(make):
    made = make()
    for value in vars(made).values():  # stored as Python numbers: configs stay JSON
        assert not isinstance(value, np.generic)


def test_numpy_scalars_are_numbers_in_fit_and_its_callbacks(tmp_path):
    x, y = _digits(100)
    model = Sequential(
        [Dense(np.int64(8), "relu"), Dropout(np.float64(0.25)), Dense(10, "softmax")],
        input_dim=np.int64(784),
        seed=np.int64(3),
    )
    model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    history = model.fit(
        x,
        y,
        epochs=np.int64(2),
        batch_size=np.int32(25),
        validation_split=np.float32(0.25),
        callbacks=[EarlyStopping(patience=np.int64(2))],
        verbose=0,
    )
    assert len(history.history["val_loss"]) == 2
    model.save(tmp_path / "m.npz")  # the seed went into the file's JSON as a number
    assert load_model(tmp_path / "m.npz").seed == 3


def test_nested_lists_build_an_unbuilt_model_from_their_shape():
    model = Sequential([Dense(2, "softmax")], seed=0)
    model.compile(loss="categorical_crossentropy", optimizer="sgd")
    model.fit([[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]], [[1, 0], [0, 1]], verbose=0)
    assert model.input_shape == (None, 3)
    with pytest.raises(ValueError, match=r"got shape \(3,\) \(a single sample needs shape"):
        Sequential([Dense(2)]).predict([1.0, 2.0, 3.0])


def test_summary_of_a_model_without_layers_says_add_layers():
    with pytest.raises(RuntimeError, match=r"the model has no layers yet: add some"):
        Sequential([Input((4,))]).summary()


@pytest.mark.parametrize("value", ["nope", "tpu"])
def test_backprop_backend_variable_is_named_in_its_error(monkeypatch, value):
    monkeypatch.setenv("BACKPROP_BACKEND", value)
    with pytest.raises(
        ValueError, match=rf"\$BACKPROP_BACKEND is '{value}', which is not a backend"
    ):
        Sequential([Dense(2)], input_dim=3)


def test_fit_with_a_float_epochs_and_initial_epoch_changes_nothing():
    x, y = _digits(50)
    model = _classifier()
    with pytest.raises(ValueError, match=r"epochs must be an integer .* got 5\.0"):
        model.fit(x, y, epochs=5.0, initial_epoch=2, verbose=0)
    assert model.epochs_done == 0
    history = model.fit(x, y, epochs=np.int64(3), initial_epoch=np.int64(2), verbose=0)
    assert history.epoch == [2] and model.epochs_done == 3


# ---------------------------------------------------------------- install hints
def test_install_hints_say_pip_install_dash_e_from_a_checkout():
    """The package is not on the package index: every hint names the checkout's extra."""
    from backprop.distributed import MPI_EXTRA
    from backprop.plotting import PLOT_EXTRA

    assert PLOT_EXTRA == 'pip install -e ".[plot]" in a checkout of xpbackprop'
    assert MPI_EXTRA == 'pip install -e ".[mpi]" in a checkout of xpbackprop'
    stale = [
        f"{path.relative_to(ROOT)}:{n}"
        for folder in ("backends", "backprop", "bench")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "pip install 'xpbackprop[" in line or 'pip install "xpbackprop[' in line
    ]
    assert stale == []


# ---------------------------------------------------------------- reproducible examples
def test_set_random_seed_makes_unseeded_models_reproducible(monkeypatch):
    """examples/keras_mlp.py is seeded as a Keras program is: set_random_seed, then models
    without seed= (weights, Dropout masks, shuffling) repeat run for run."""
    from backprop.utils import set_random_seed

    monkeypatch.setattr(backprop.utils, "_model_seeds", None)  # put back after the test
    x, y = _digits(200)

    def run_once(seed):
        set_random_seed(seed)
        first = Sequential([Dense(16, "relu"), Dropout(0.5), Dense(10, "softmax")], input_dim=784)
        second = Sequential([Dense(16, "relu"), Dropout(0.5), Dense(10, "softmax")], input_dim=784)
        first.compile(loss="categorical_crossentropy", optimizer="adam")
        history = first.fit(x, y, epochs=2, batch_size=50, verbose=0)
        return first.get_weights(), second.get_weights(), history.history["loss"]

    weights, others, losses = run_once(7)
    again, others_again, losses_again = run_once(7)
    assert losses == losses_again
    for a, b in zip(weights + others, again + others_again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(weights[0], others[0])  # each model its own seed of the stream
    assert not np.array_equal(weights[0], run_once(8)[0][0])
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\), got -1"):
        set_random_seed(-1)
