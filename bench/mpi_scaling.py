"""Data-parallel scaling on this machine: 1 process x 2 BLAS threads against 2 MPI processes
x 1 BLAS thread, training 784-500-500-10 (sigmoid, softmax, SGD with momentum), plus the time
of one all-reduce of the flat gradient buffer, and a model of N machines.

    python -m bench.mpi_scaling [--samples N] [--batch-size B] [--rounds R]

(`python -m bench --mpi` runs it as part of the report.) The two configurations alternate,
round by round, in fresh processes; each reports the median of its timed epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NETWORK = "784-500-500-10"
BANDWIDTHS_GBIT = (10, 100)  # network links modelled for N machines
MACHINES = (2, 4, 8, 16)


def unavailable_reason() -> str | None:
    try:
        import threadpoolctl  # noqa: F401

        from backprop.distributed import mpiexec_command

        mpiexec_command(2)
    except ImportError as exc:
        return f'{exc.name} is not installed (pip install -e ".[mpi]" in a checkout of xpbackprop)'
    except RuntimeError as exc:  # no mpi4py, or no launcher of its MPI library
        return str(exc)
    return None


def worker(args: argparse.Namespace) -> None:
    """One configuration: train `epochs` timed epochs after a warm-up one; rank 0 prints JSON."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=args.threads, user_api="blas")
    from backprop import SGD, Dense, Sequential
    from backprop.distributed import Communicator, MPICommunicator

    from .workloads import LEARNING_RATE, MOMENTUM, synthetic_mnist

    comm: Communicator = MPICommunicator() if args.distributed else Communicator()
    x, labels, _ = synthetic_mnist(args.samples)
    model = Sequential(
        [Dense(500, "sigmoid"), Dense(500, "sigmoid"), Dense(10, "softmax")], input_dim=784, seed=0
    )
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=SGD(LEARNING_RATE, momentum=MOMENTUM),
        metrics=[],
    )
    fit = dict(
        epochs=1,
        batch_size=args.batch_size,
        verbose=0,
        distributed=comm if args.distributed else False,
    )
    model.fit(x, labels, **fit)  # warm-up
    seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.fit(x, labels, **fit)
        seconds.append(time.perf_counter() - start)
    allreduce = None
    if args.distributed:
        be, grads = model.backend, model.flat_grads
        times = []
        for _ in range(50):
            comm.all_agree(True)  # line the ranks up first
            start = time.perf_counter()
            comm.allreduce_sum(be, grads)
            times.append(time.perf_counter() - start)
        allreduce = statistics.median(times)
    if comm.rank == 0:
        epoch = statistics.median(seconds)
        print(
            json.dumps(
                {
                    "processes": comm.size,
                    "threads": args.threads,
                    "seconds_per_epoch": epoch,
                    "samples_per_second": args.samples / epoch,
                    "steps": -(-args.samples // args.batch_size),
                    "allreduce_seconds": allreduce,
                    "parameters": int(model.flat_params.shape[0]),
                }
            ),
            flush=True,
        )


def run_config(processes: int, threads: int, opts: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "bench.mpi_scaling",
        "worker",
        "--threads",
        str(threads),
        "--samples",
        str(opts.samples),
        "--batch-size",
        str(opts.batch_size),
        "--epochs",
        str(opts.epochs),
    ]
    env = dict(os.environ)
    if processes > 1:
        from backprop.distributed import mpiexec_command

        prefix, env = mpiexec_command(processes)
        command = [*prefix, *command, "--distributed"]
    env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=1800, env=env, cwd=root
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def model_machines(
    single: dict[str, Any], allreduce_bytes: int, batch: int
) -> list[dict[str, Any]]:
    """Efficiency of N machines with a ring all-reduce (each machine sends and receives
    2 (N - 1) / N of the gradient bytes) over a link of the given bandwidth, not overlapped
    with computation: t_compute / (t_compute + t_comm). Two ways to use N machines: the same
    global batch split N ways (compute per step / N), or N times the global batch (each
    machine keeps the batch, compute per step unchanged)."""
    step = single["seconds_per_epoch"] / single["steps"]
    rows = []
    for gbit in BANDWIDTHS_GBIT:
        for n in MACHINES:
            comm = 2 * (n - 1) / n * allreduce_bytes / (gbit * 1e9 / 8)
            for global_batch, compute in ((batch, step / n), (batch * n, step)):
                rows.append(
                    {
                        "machines": n,
                        "gbit_per_s": gbit,
                        "global_batch": global_batch,
                        "compute_s": compute,
                        "allreduce_s": comm,
                        "efficiency": compute / (compute + comm),
                    }
                )
    return rows


def measure(opts: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"1x2": [], "2x1": []}
    for r in range(opts.rounds):
        for key, (p, t) in (("1x2", (1, 2)), ("2x1", (2, 1))):
            runs[key].append(run_config(p, t, opts))
        log(
            f"  round {r + 1}: 1 process x 2 threads {runs['1x2'][-1]['samples_per_second']:,.0f}"
            f" samples/s, 2 processes x 1 thread {runs['2x1'][-1]['samples_per_second']:,.0f}"
        )
    sps = {k: statistics.median(run["samples_per_second"] for run in v) for k, v in runs.items()}
    allreduce = statistics.median(run["allreduce_seconds"] for run in runs["2x1"])
    steps = runs["2x1"][0]["steps"]
    step = runs["2x1"][0]["seconds_per_epoch"] / steps
    parameters = runs["2x1"][0]["parameters"]
    single = {"seconds_per_epoch": opts.samples / sps["1x2"], "steps": steps}
    return {
        "network": NETWORK,
        "samples": opts.samples,
        "batch_size": opts.batch_size,
        "samples_per_second": sps,
        "efficiency": sps["2x1"] / sps["1x2"],
        "allreduce_seconds_per_step": allreduce,
        "allreduce_share_of_step": allreduce / step,
        "allreduce_bytes": 4 * parameters,
        "model": model_machines(single, 4 * parameters, opts.batch_size),
    }


def markdown(result: dict[str, Any]) -> str:
    sps = result["samples_per_second"]
    lines = [
        f"Data-parallel, {result['network']}, batch {result['batch_size']}, "
        f"{result['samples']:,} samples:",
        "",
        "| configuration | samples/s |",
        "|---|---|",
        f"| 1 process x 2 BLAS threads | {sps['1x2']:,.0f} |",
        f"| 2 MPI processes x 1 BLAS thread | {sps['2x1']:,.0f} |",
        "",
        f"Scaling efficiency here (2x1 / 1x2): {result['efficiency']:.2f}. All-reduce of "
        f"{result['allreduce_bytes'] / 1e6:.1f} MB per step: "
        f"{result['allreduce_seconds_per_step'] * 1e3:.2f} ms "
        f"({100 * result['allreduce_share_of_step']:.1f}% of a step).",
        "",
        "Model for N machines (ring all-reduce of the gradient, not overlapped with compute;"
        " per-step compute from the 1 x 2 run):",
        "",
        "| machines | link | global batch | compute/step | all-reduce/step | efficiency |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["model"]:
        lines.append(
            f"| {row['machines']} | {row['gbit_per_s']} Gbit/s | "
            f"{row['global_batch']} | {row['compute_s'] * 1e3:.2f} ms | "
            f"{row['allreduce_s'] * 1e3:.2f} ms | {row['efficiency']:.2f} |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.mpi_scaling", description=__doc__)
    p.add_argument("mode", nargs="?", default="report", choices=["report", "worker"])
    p.add_argument("--samples", type=int, default=30_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="worker: BLAS threads")
    p.add_argument("--distributed", action="store_true", help="worker: under mpiexec")
    return p


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    if opts.mode == "worker":
        worker(opts)
        return 0
    reason = unavailable_reason()
    if reason:
        print(f"left out: {reason}", file=sys.stderr)
        return 0
    print(markdown(measure(opts, log=lambda m: print(m, file=sys.stderr))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
