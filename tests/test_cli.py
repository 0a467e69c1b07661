"""The command line, run in-process (and once as `python -m backprop`)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

import backprop.plotting
from backends import backend_unavailable_reason
from backprop import load_model
from backprop.cli import main
from backprop.datasets import load_mnist_sample

SMALL = ["--layers", "32", "--epochs", "2", "--seed", "1"]


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
def test_argument_errors_exit_2_with_usage(capsys, argv, message):
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage: python -m backprop" in err and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--learning-rate", "-1"], r"learning_rate must be a number in \(0, inf\]"),
        (["train", "--validation-split", "1.5"], r"validation_split must be a number in \[0, 1\)"),
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
    assert "pip install 'xpbackprop[plot]'" in err


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
