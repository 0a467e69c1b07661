"""The command line, run in-process (and once as `python -m backprop`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backprop.plotting
from backends import backend_unavailable_reason
from backprop import load_model
from backprop.cli import main
from backprop.datasets import load_mnist_sample

SMALL = ["--layers", "32", "--epochs", "2", "--seed", "1"]
ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_prints_figures_and_test_accuracy(capsys):
    code, out, err = run(capsys, "train", *SMALL)
    assert code == 0
    assert "Total params: 25,450" in out  # 784*32 + 32 + 32*10 + 10
    assert re.search(
        r"^Epoch 2/2 - loss: [\d.]+ - accuracy: [\d.]+ - val_loss: [\d.]+ - "
        r"val_accuracy: [\d.]+$",
        out,
        re.M,
    )
    accuracy = float(re.search(r"^test accuracy: (0\.\d{4})$", out, re.M).group(1))
    assert accuracy > 0.8
    assert re.search(r"wall time: [\d.]+ s", err)


def test_same_seed_same_output(capsys):
    _, first, _ = run(capsys, "train", *SMALL, "--quiet")
    _, second, _ = run(capsys, "train", *SMALL, "--quiet")
    _, other, _ = run(capsys, "train", *SMALL[:-1], "2", "--quiet")
    assert first == second and first.startswith("test loss: ")
    assert other != first


def test_seeds_keras_example_configuration(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "train",
        "--activation",
        "sigmoid",
        "--loss",
        "mse",
        "--layers",
        "16,16",
        "--epochs",
        "1",
        "--save",
        str(tmp_path / "m.npz"),
    )
    assert code == 0
    assert "dense (sigmoid)" in out and "dense_1 (sigmoid)" in out
    assert "dense_2 (softmax)" in out
    # the printed figures are those of the trained model on the test set
    _, (x_test, y_test) = load_mnist_sample()
    loss, accuracy = load_model(tmp_path / "m.npz").evaluate(x_test, np.eye(10)[y_test])
    assert f"test loss: {loss:.4f}\ntest accuracy: {accuracy:.4f}\n" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "expected an integer >= 1, got 0"),
        (["train", "--activation", "sigmoidd"], "invalid choice: 'sigmoidd'"),
        (["train", "--layers", "500,x"], "expected comma-separated hidden layer sizes"),
        (["train", "--bogus"], "unrecognized arguments: --bogus"),
        (["predict", "m.npz"], "one of the arguments --index --image is required"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_argument_errors_are_one_line_and_one_hint_not_the_usage(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("python -m backprop") and ": error: " in lines[0]
    assert message in lines[0]
    command = " train" if argv[:1] == ["train"] else " predict" if argv[:1] == ["predict"] else ""
    assert lines[1] == f"(see: python -m backprop{command} --help)"
    assert "usage:" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--learning-rate", "-1"], r"learning_rate must be a number in \(0, inf\]"),
        (["train", "--validation-split", "1.5"], r"expected a number in \[0, 1\), got '1\.5'"),
        (["train", "--validation-split", "nan"], r"expected a number in \[0, 1\), got 'nan'"),
        (["train", "--validation-split", "inf"], r"expected a number in \[0, 1\), got 'inf'"),
        (["train", "--backend", "tpu"], "unknown backend 'tpu'; valid names are"),
        (["evaluate", "missing.npz"], "no model file at missing.npz"),
        (
            ["train", "--dataset", "mnist", "--data-dir", "/nonexistent", "--no-download"],
            "not found in /nonexistent",
        ),
    ],
)
def test_user_mistakes_exit_2_without_traceback(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2 and re.search(message, err), err
    assert "Traceback" not in err


@pytest.mark.skipif(backend_unavailable_reason("cupy") is None, reason="a GPU is present")
def test_cupy_without_a_gpu_fails_fast(capsys):
    code, out, err = run(capsys, "train", "--backend", "cupy")
    assert code == 2 and out == ""
    assert "error: the 'cupy' backend" in err and (
        "no usable CUDA device" in err or "pip install" in err
    )


def test_plot_without_matplotlib_names_the_extra(capsys, monkeypatch):
    def missing():
        raise RuntimeError(
            "plotting needs matplotlib, which is not installed: " + backprop.plotting.PLOT_EXTRA
        )

    monkeypatch.setattr(backprop.plotting, "require_matplotlib", missing)
    code, out, err = run(capsys, "train", *SMALL, "--plot", "x.png")
    assert code == 2 and out == ""  # refused before training
    assert 'pip install -e ".[plot]" in a checkout of xpbackprop' in err


def test_save_evaluate_predict_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    model, plot = tmp_path / "model.npz", tmp_path / "curves.png"
    code, out, _ = run(capsys, "train", *SMALL, "--save", str(model), "--plot", str(plot))
    assert code == 0
    accuracy = re.search(r"^test accuracy: (0\.\d{4})$", out, re.M).group(1)
    grid = tmp_path / "curves-misclassified.png"
    assert f"wrote {plot} (learning curves) and {grid}" in out
    for png in (plot, grid):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    code, out, _ = run(capsys, "evaluate", str(model))
    assert code == 0 and f"test accuracy: {accuracy}" in out

    code, out, _ = run(capsys, "predict", str(model), "--index", "3")
    assert code == 0
    first = out.splitlines()[0]
    assert re.fullmatch(r"test image 3 of mnist-sample: digit \d \(true label \d\)", first)
    probabilities = [float(line.split(":")[1].split()[0]) for line in out.splitlines()[1:]]
    assert len(probabilities) == 10 and sum(probabilities) == pytest.approx(1.0, abs=1e-3)

    from backprop.datasets import load_mnist_sample

    _, (x_test, _y_test) = load_mnist_sample()
    image = x_test[3].reshape(28, 28)
    np.save(tmp_path / "digit.npy", (image * 255).astype(np.uint8))
    code, npy_out, _ = run(capsys, "predict", str(model), "--image", str(tmp_path / "digit.npy"))
    assert code == 0 and npy_out.splitlines()[0].endswith(first.split(": ")[1].split(" (")[0])

    import matplotlib.pyplot as plt

    plt.imsave(tmp_path / "digit.png", 1.0 - image, cmap="gray", vmin=0, vmax=1)  # dark on light
    code, png_out, _ = run(capsys, "predict", str(model), "--image", str(tmp_path / "digit.png"))
    assert (
        code == 0
        and png_out.splitlines()[0].split(": ")[1] == npy_out.splitlines()[0].split(": ")[1]
    )

    code, _, err = run(capsys, "predict", str(model), "--index", "5000")
    assert code == 2 and "--index must be in [0, 999], got 5000" in err


def test_python_dash_m_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "backprop", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and "--activation" in result.stdout


def test_device_belongs_to_the_cupy_backend(capsys):
    code, _, err = run(capsys, "train", *SMALL, "--device", "1")
    assert code == 2
    assert "--device selects a GPU of --backend cupy, not of numpy" in err


@pytest.mark.parametrize(
    ("local_rank", "device", "expected"), [(0, None, 0), (3, None, 1), (3, 0, 0)]
)
def test_data_parallel_ranks_take_the_gpu_of_their_local_rank(
    monkeypatch, local_rank, device, expected
):
    """Without --device, rank r of a machine with 2 GPUs takes GPU r % 2 (asked of the
    backend registry; the CLI imports no CuPy itself); --device overrides it."""
    import types

    import backends
    from backprop import cli

    chosen = {}
    monkeypatch.setattr(backends, "device_count", lambda name: 2)
    monkeypatch.setattr(
        backends,
        "get_backend",
        lambda name, dtype=None, device=None: chosen.setdefault("d", device),
    )
    cli._backend("cupy", "float32", device, types.SimpleNamespace(local_rank=local_rank))
    assert chosen["d"] == expected


# --------------------------------------------------------------------------- issue 20
QUICK = ["--layers", "8", "--epochs", "1", "--seed", "1", "--validation-split", "0", "--quiet"]


def _saved(tmp_path, layers=None, metrics=("accuracy",), loss="categorical_crossentropy"):
    """An untrained 784-in, 10-out model file (the CLI's shape), compiled as given."""
    from backprop import Dense, Sequential

    model = Sequential(layers or [Dense(10, "softmax")], input_dim=None if layers else 784, seed=0)
    model.compile(loss=loss, optimizer="sgd", metrics=list(metrics))
    path = tmp_path / "m.npz"
    model.save(path)
    return path


def test_evaluate_names_each_figure_as_compiled(capsys, tmp_path):
    """A model compiled with mae printed its MAE as "test accuracy"."""
    path = _saved(tmp_path, metrics=["mae"], loss="mse")
    code, out, _ = run(capsys, "evaluate", str(path))
    assert code == 0
    assert re.search(r"^test loss: [\d.]+\ntest mae: [\d.]+$", out, re.M), out
    assert "accuracy" not in out


def test_evaluate_of_a_model_compiled_without_metrics_prints_its_loss(capsys, tmp_path):
    code, out, err = run(capsys, "evaluate", str(_saved(tmp_path, metrics=())))
    assert code == 0 and err == ""
    assert out.splitlines()[1:] == [out.splitlines()[1]] and out.startswith("test images: 1000")
    assert re.fullmatch(r"test loss: [\d.]+", out.splitlines()[1])


def test_evaluate_and_predict_take_models_of_28x28_inputs(capsys, tmp_path):
    from backprop import Dense, Flatten, Input

    path = _saved(tmp_path, layers=[Input(shape=(28, 28)), Flatten(), Dense(10, "softmax")])
    code, out, err = run(capsys, "evaluate", str(path))
    assert code == 0 and "test accuracy: " in out, err
    code, out, err = run(capsys, "predict", str(path), "--index", "3")
    assert code == 0 and out.startswith("test image 3 of mnist-sample: digit "), err
    np.save(tmp_path / "digit.npy", np.zeros((28, 28), dtype=np.float32))
    code, out, err = run(capsys, "predict", str(path), "--image", str(tmp_path / "digit.npy"))
    assert code == 0 and "digit.npy: digit " in out, err


def test_corrupt_model_file_is_one_error_line(capsys, tmp_path):
    path = _saved(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"PK\x01\x02") + 6] = 99  # the zip version: once a NotImplementedError
    path.write_bytes(bytes(raw))
    code, out, err = run(capsys, "evaluate", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "is not a valid xpbackprop-model file: it is corrupted or truncated" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", r"empty\.npy is empty \(0 bytes\)"),
        (b"1 2 3\n4 5 6\n", r"text\.npy is not a NumPy \.npy file"),
        (b"\x93NUMPY\x01\x00garbage", r"damaged\.npy is a damaged or unreadable \.npy file"),
    ],
    ids=["empty", "text", "damaged"],
)
def test_predict_image_that_is_not_an_array_is_one_error_line(capsys, tmp_path, content, expected):
    path = _saved(tmp_path)
    name = {b"": "empty", b"1 2 3\n4 5 6\n": "text"}.get(content, "damaged")
    image = tmp_path / f"{name}.npy"
    image.write_bytes(content)
    code, out, err = run(capsys, "predict", str(path), "--image", str(image))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert re.search(expected, err), err
    assert "unsafe" not in err and "allow_pickle" not in err


@pytest.mark.parametrize("command", ["train", "predict"])
def test_output_into_a_pipe_whose_reader_left_ends_quietly(tmp_path, command):
    """`python -m backprop train | head -1`: the reader leaves, the program stops without a
    traceback (BrokenPipeError), as Unix tools do."""
    argv = ["train", *QUICK[:-1]]  # not --quiet: the summary and epoch lines go first
    if command == "predict":
        argv = ["predict", str(_saved(tmp_path)), "--index", "0"]
    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "backprop", *argv],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        process.stdout.close()  # the reader is gone before the first line
        code = process.wait(timeout=300)
        stderr.seek(0)
        err = stderr.read()
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception" not in err
    assert code == 141, err  # 128 + SIGPIPE, as a shell reports a writer whose reader left


def test_validation_split_nan_without_quiet_is_an_argument_error(capsys, monkeypatch):
    code, out, err = run(capsys, "train", "--validation-split", "nan", "--epochs", "1")
    assert code == 2 and out == ""
    assert "argument --validation-split: expected a number in [0, 1), got 'nan'" in err


def test_a_network_too_big_for_memory_says_how_much_it_needs(capsys):
    code, out, err = run(capsys, "train", "--layers", "1000000000", "--epochs", "1")
    assert code == 2 and out == "" and err.count("\n") == 1
    # (784 + 1) * 1e9 + (1e9 + 1) * 10 parameters, 4 bytes each, 4 copies
    assert "the network has 795,000,000,010 parameters" in err
    assert "training it needs about 11,846.4 GiB" in err and "more than this machine's" in err


@pytest.mark.parametrize("how", ["trailing slash", "/proc", "read-only file"])
def test_save_paths_that_cannot_take_the_model_are_refused_before_training(
    capsys, tmp_path, monkeypatch, how
):
    import backprop.model

    def refuse(*args, **kwargs):
        raise AssertionError("training started although --save cannot be written")

    monkeypatch.setattr(backprop.model.Sequential, "fit", refuse)
    if how == "trailing slash":
        target, expected = f"{tmp_path / 'newdir'}/", "newdir/: it is a directory"
    elif how == "/proc":
        if not os.path.isdir("/proc/self"):
            pytest.skip("no /proc here")
        target, expected = "/proc/x.npz", "cannot create a file in the directory /proc"
    else:
        keep = tmp_path / "keep.npz"
        keep.write_bytes(b"keep me")
        keep.chmod(0o444)
        target, expected = str(keep), "keep.npz: the file is read-only"
    code, out, err = run(capsys, "train", *QUICK, "--save", target)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"--save: cannot write to {target}" in err and expected in err
    assert ".tmp" not in err


def _idx(array):
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return b"\x00\x00\x08" + bytes([array.ndim]) + dims + array.astype(np.uint8).tobytes()


def _mnist_files(folder, size=28, n=20):
    folder.mkdir(exist_ok=True)
    labels = np.arange(n) % 10
    for part, count in (("train", n), ("t10k", n // 2)):
        (folder / f"{part}-images-idx3-ubyte").write_bytes(
            _idx(np.zeros((count, size, size), np.uint8))
        )
        (folder / f"{part}-labels-idx1-ubyte").write_bytes(_idx(labels[:count]))


@pytest.mark.parametrize(
    ("size", "count", "expected"),
    [
        (10, 20, "MNIST train images are 10x10, not 28x28"),
        (28, 0, r"MNIST train files hold no images \(dimensions \(0, 28, 28\)\)"),
    ],
)
def test_mnist_files_that_are_not_mnist_are_refused(capsys, tmp_path, size, count, expected):
    _mnist_files(tmp_path / "data", size, count)
    code, out, err = run(
        capsys, "train", *QUICK, "--dataset", "mnist", "--data-dir", str(tmp_path / "data")
    )
    assert code == 2 and out == "" and re.search(expected, err), err
    assert "reshape" not in err and "Total params" not in out


def test_data_dir_that_is_a_file_says_so(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    code, _, err = run(capsys, "evaluate", "m.npz", "--dataset", "mnist", "--data-dir", str(afile))
    assert code == 2
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", str(afile))
    assert code == 2 and f"{afile} is a file, not a directory" in err


def test_mnist_hints_name_the_flags_not_python_calls(capsys, tmp_path, monkeypatch):
    import urllib.error

    from backprop import datasets

    code, _, err = run(
        capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--no-download"
    )
    assert code == 2 and "or drop --no-download" in err
    assert "load_mnist" not in err and "download=True" not in err

    def offline(url):
        raise urllib.error.URLError("offline in the tests")

    monkeypatch.setattr(datasets, "_fetch", offline)
    code, _, err = run(capsys, "train", "--dataset", "mnist", "--data-dir", str(tmp_path))
    assert code == 2 and "or pass --data-dir DIR, or set BACKPROP_DATA" in err
    assert "load_mnist" not in err


def test_version_prints_the_package_version(capsys):
    import backprop

    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"xpbackprop {backprop.__version__}\n"


def test_backend_comes_from_backprop_backend_as_in_python(capsys, tmp_path, monkeypatch):
    import backends

    path = _saved(tmp_path)
    asked = []
    real = backends.get_backend

    def spy(name, dtype=None, device=None):
        asked.append(name)
        return real(name, dtype=dtype, device=device)

    monkeypatch.setattr(backends, "get_backend", spy)
    monkeypatch.setenv("BACKPROP_BACKEND", "strict")
    code, _, err = run(capsys, "predict", str(path), "--index", "0")
    assert code == 0 and asked[0] == "strict", err
    code, _, _ = run(capsys, "predict", str(path), "--index", "0", "--backend", "numpy")
    assert code == 0 and asked[-1] == "numpy"  # the flag wins
    monkeypatch.setenv("BACKPROP_BACKEND", "nope")
    code, _, err = run(capsys, "predict", str(path), "--index", "0")
    assert code == 2 and "$BACKPROP_BACKEND is 'nope'" in err and "unknown backend" in err
