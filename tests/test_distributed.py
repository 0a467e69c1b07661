"""Data-parallel training over MPI: 2 ranks under mpiexec must give the weights and History of
single-process training on the same global batches; failures stop every rank."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mpi_worker
import numpy as np
import pytest

from backprop import load_model
from backprop.datasets import load_mnist_sample
from backprop.distributed import (
    Communicator,
    get_communicator,
    launched_under_mpi,
    mpiexec_command,
    shard,
)

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 120


def mpi_unavailable() -> str | None:
    try:
        mpiexec_command(2)
    except RuntimeError as exc:  # no mpi4py, or no launcher of its MPI library
        return str(exc)
    return None


needs_mpi = pytest.mark.skipif(mpi_unavailable() is not None, reason=str(mpi_unavailable()))


def launch(scenario: str, outdir: Path, ranks: int = 2) -> subprocess.CompletedProcess:
    prefix, env = mpiexec_command(ranks)
    return subprocess.run(
        [
            *prefix,
            sys.executable,
            str(HERE / "mpi_worker.py"),
            scenario,
            str(outdir),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=HERE,
        env=env,
    )


def train_on_two_ranks(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m backprop train ARGS` on 2 ranks, with the launcher of mpi4py's MPI."""
    prefix, env = mpiexec_command(2)
    return subprocess.run(
        [*prefix, sys.executable, "-m", "backprop", "train", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=cwd,
        env=env,
    )


def ranks_results(outdir: Path, ranks: int = 2):
    results = []
    for r in range(ranks):
        with np.load(outdir / f"rank{r}.npz") as npz:
            weights = [npz[f"w{i}"] for i in range(len(npz.files) - 1)]
            results.append((weights, json.loads(str(npz["history"]))))
    return results


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: the deviation relative to the array's scale."""
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@needs_mpi
@pytest.mark.parametrize(
    "scenario, weight_tol, history_tol",
    [("float64", 1e-12, 1e-12), ("adam", 1e-12, 1e-12), ("float32", 1e-5, 1e-5)],
)
def test_two_ranks_equal_single_process(tmp_path, scenario, weight_tol, history_tol):
    result = launch(scenario, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (w0, h0), (w1, h1) = ranks_results(tmp_path)
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)  # the replicas are identical
    assert h0 == h1
    dtype = "float32" if scenario == "float32" else "float64"
    reference = mpi_worker.model(dtype, "adam" if scenario == "adam" else "sgd")
    expected = mpi_worker.train(reference, dtype, distributed=False)
    errors = [relative(a, b) for a, b in zip(w0, reference.get_weights(), strict=True)]
    assert max(errors) < weight_tol, errors
    assert h0.keys() == expected.keys()
    for key in expected:
        np.testing.assert_allclose(h0[key], expected[key], rtol=history_tol, err_msg=key)


@needs_mpi
def test_one_rank_failing_stops_both(tmp_path):
    result = launch("fail", tmp_path)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    # both ranks raise the same error, naming the rank and its message
    assert (
        out.count(
            "DistributedError: data-parallel training stopped on every rank because "
            "rank 1: ValueError: injected failure in the third batch"
        )
        == 2
    ), out[-3000:]


@needs_mpi
def test_dataset_smaller_than_the_ranks(tmp_path):
    result = launch("tiny", tmp_path)
    assert result.returncode != 0
    assert (result.stdout + result.stderr).count(
        "the training set has 1 samples but there are 2 ranks"
    ) == 2


@needs_mpi
def test_command_line_trains_data_parallel(tmp_path):
    result = train_on_two_ranks(
        tmp_path, "--layers", "32", "--epochs", "2", "--save", str(tmp_path / "m.npz")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("test accuracy: ") == 1  # rank 0 reports
    assert "data-parallel over 2 ranks (MPI on host buffers)" in out
    # the saved model is the trained one: it scores what rank 0 printed
    _, (x_test, y_test) = load_mnist_sample()
    _, accuracy = load_model(tmp_path / "m.npz").evaluate(x_test, np.eye(10)[y_test])
    assert f"test accuracy: {accuracy:.4f}\n" in out
    assert accuracy > 0.5  # two epochs on the sample: well above chance (0.1)


def test_shards_split_a_batch_evenly():
    assert [shard(0, 10, r, 3) for r in range(3)] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert [shard(100, 101, r, 2) for r in range(2)] == [slice(100, 101), slice(101, 101)]
    assert shard(5, 9, 0, 1) == slice(5, 9)


def test_single_process_communicator():
    comm = get_communicator(False)
    assert type(comm) is Communicator and comm.size == 1
    assert comm.all_agree(True) and not comm.all_agree(False)
    with pytest.raises(TypeError, match="distributed must be True, False or a Communicator"):
        get_communicator("yes")


def test_launcher_detection(monkeypatch):
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    assert not launched_under_mpi()
    monkeypatch.setenv("PMI_SIZE", "4")
    assert launched_under_mpi()


def test_distributed_without_mpi4py_names_the_extra(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mpi4py(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mpi4py)
    with pytest.raises(RuntimeError, match=r'pip install -e "\.\[mpi\]" in a checkout'):
        get_communicator(True)


@needs_mpi
def test_diverged_data_parallel_run_reports_once_and_exits_2(tmp_path):
    """Both ranks stop; rank 0 says why in one line, the other adds nothing."""
    result = train_on_two_ranks(tmp_path, "--epochs", "1", "--learning-rate", "10", "--quiet")
    assert result.returncode != 0
    assert result.stderr.count("error: the loss") == 1, result.stderr
    assert "Traceback" not in result.stderr
