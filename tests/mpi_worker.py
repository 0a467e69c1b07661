"""Run by tests/test_distributed.py under `mpiexec -n 2`: trains data-parallel and saves each
rank's results to OUTDIR/rank{r}.npz (weights, History). Not a test module itself.

usage: python tests/mpi_worker.py SCENARIO OUTDIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from backprop import SGD, Adam, Dense, Sequential
from backprop.distributed import MPICommunicator, limit_blas_threads

# The same data and network as the single-process reference in test_distributed.py.
N, FEATURES, CLASSES = 101, 12, 4


def problem(dtype: str):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, FEATURES)).astype(dtype)
    y = rng.integers(0, CLASSES, N)
    x_val = rng.standard_normal((23, FEATURES)).astype(dtype)
    y_val = rng.integers(0, CLASSES, 23)
    return x, y, x_val, y_val


def model(dtype: str, optimizer: str = "sgd") -> Sequential:
    m = Sequential(
        [Dense(16, "tanh", l2=1e-3), Dense(CLASSES, "softmax")],
        input_dim=FEATURES,
        dtype=dtype,
        seed=5,
    )
    opt = SGD(0.1, momentum=0.9) if optimizer == "sgd" else Adam(0.01)
    m.compile(loss="sparse_categorical_crossentropy", optimizer=opt)
    return m


def train(m: Sequential, dtype: str, distributed) -> dict:
    x, y, x_val, y_val = problem(dtype)
    # batch 10: the last batch of each epoch has 1 sample, so one rank's shard is empty
    history = m.fit(
        x,
        y,
        epochs=3,
        batch_size=10,
        validation_data=(x_val, y_val),
        verbose=0,
        distributed=distributed,
    )
    return history.history


def fail_third_backward(m: Sequential) -> None:
    """Make the third backward pass of m's first layer raise."""
    layer, calls = m.layers[0], []
    original = layer.backward

    def failing(da, need_da_prev=True):
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("injected failure in the third batch")
        return original(da, need_da_prev)

    layer.backward = failing


def main() -> None:
    scenario, outdir = sys.argv[1], Path(sys.argv[2])
    limit_blas_threads(2)
    comm = MPICommunicator()
    if scenario in ("float64", "float32", "adam"):
        dtype = "float32" if scenario == "float32" else "float64"
        m = model(dtype, "adam" if scenario == "adam" else "sgd")
        history = train(m, dtype, comm)
        arrays = {f"w{i}": w for i, w in enumerate(m.get_weights())}
        arrays["history"] = np.array(json.dumps(history))
        np.savez(outdir / f"rank{comm.rank}.npz", **arrays)
    elif scenario == "fail":
        m = model("float64")
        if comm.rank == 1:
            fail_third_backward(m)
        train(m, "float64", comm)
    elif scenario == "tiny":
        m = model("float64")
        x, y, _, _ = problem("float64")
        m.fit(x[:1], y[:1], epochs=1, verbose=0, distributed=comm)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
