"""The comparison report: `python -m bench [--quick] [--json PATH] [--plot PATH]`.

In one process, per network and batch size, every available method trains one epoch per
round, round-robin (one repetition of each method per round, after one untimed warm-up
round; each epoch after an untimed pause of SETTLE seconds), so machine noise hits all of
them alike. Reported: the median seconds per epoch, and ratios taken pair by pair within each
round, then their median (ours/floor, ours/torch, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import workloads

# Seconds between two methods' epochs, untimed: a library's worker threads spin on the cores
# for a while after its last operation (PyTorch's OpenMP threads, BLAS's), and would slow
# whichever method runs next. Measured on two cores with PyTorch in the cell: the GEMM floor
# ran at half speed right after torch's epoch (784-30-10: 0.024 s per epoch against 0.011 s
# without torch), which made ours/floor look like 1.10x instead of 2.1x.
SETTLE = 0.2
QUICK: dict[str, Any] = {
    "networks": ["784-30-10", "784-500-500-10"],
    "batch_sizes": [128],
    "samples": 10_000,
    "rounds": 3,
}


def time_cell(
    network: workloads.Network, batch_size: int, data: Any, methods: list, rounds: int, log: Any
) -> dict[str, Any]:
    """Round-robin timing of one (network, batch size) cell."""
    built = {name: cls(network, batch_size, *data, **kwargs) for name, cls, kwargs in methods}
    for method in built.values():
        method.warm_up()
    times: dict[str, list[float]] = {name: [] for name in built}
    for r in range(rounds + 1):  # round 0 warms up (BLAS threads, caches, kernels) untimed
        for name, method in built.items():
            time.sleep(SETTLE)  # (see SETTLE)
            start = time.perf_counter()
            method.epoch()
            elapsed = time.perf_counter() - start
            if r > 0:
                times[name].append(elapsed)
        if r > 0:
            log(f"  round {r}: " + ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
    devices = {name: m.device for name, m in built.items()}
    return {"times": times, "devices": devices}


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float | None:
    """The median over rounds of time_a / time_b, each ratio taken within one round."""
    if a not in times or b not in times:
        return None
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def summarize(network: str, batch_size: int, samples: int, cell: dict[str, Any]) -> dict[str, Any]:
    times = cell["times"]
    row: dict[str, Any] = {
        "network": network,
        "batch_size": batch_size,
        "samples": samples,
        "seconds_per_epoch": {k: statistics.median(v) for k, v in times.items()},
        "rounds": {k: v for k, v in times.items()},
        "devices": cell["devices"],
    }
    ratios = {
        "ours-numpy/gemm-floor-numpy": paired_ratio(times, "ours-numpy", "gemm-floor-numpy"),
        "ours-numpy/torch-cpu": paired_ratio(times, "ours-numpy", "torch-cpu"),
        "ours-numpy/sklearn": paired_ratio(times, "ours-numpy", "sklearn"),
        "torch-cpu/gemm-floor-numpy": paired_ratio(times, "torch-cpu", "gemm-floor-numpy"),
        "ours-cupy/gemm-floor-cupy": paired_ratio(times, "ours-cupy", "gemm-floor-cupy"),
        "ours-cupy/torch-cuda": paired_ratio(times, "ours-cupy", "torch-cuda"),
        "ours-cupy/torch-cuda-graph": paired_ratio(times, "ours-cupy", "torch-cuda-graph"),
        "ours-cupy-eager/torch-cuda": paired_ratio(times, "ours-cupy-eager", "torch-cuda"),
        "ours-cupy/ours-cupy-eager": paired_ratio(times, "ours-cupy", "ours-cupy-eager"),
        "ours-numpy/ours-cupy": paired_ratio(times, "ours-numpy", "ours-cupy"),
    }
    row["ratios"] = {k: v for k, v in ratios.items() if v is not None}
    row["samples_per_second"] = {k: samples / v for k, v in row["seconds_per_epoch"].items()}
    return row


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list[dict[str, Any]]) -> str:
    """One table row per (network, batch size)."""
    head = (
        "| network | batch | floor s/epoch | ours s/epoch | ours/floor | torch s/epoch | "
        "torch/floor | ours/torch | sklearn s/epoch | ours samples/s | numpy/cupy |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s, q = r["seconds_per_epoch"], r["ratios"]
        lines.append(
            f"| {r['network']} | {r['batch_size']} | {_fmt(s.get('gemm-floor-numpy'))} | "
            f"{_fmt(s.get('ours-numpy'))} | {_fmt(q.get('ours-numpy/gemm-floor-numpy'), '.2f')}x | "
            f"{_fmt(s.get('torch-cpu'))} | {_fmt(q.get('torch-cpu/gemm-floor-numpy'), '.2f')}x | "
            f"{_fmt(q.get('ours-numpy/torch-cpu'), '.2f')}x | {_fmt(s.get('sklearn'))} | "
            f"{_fmt(r['samples_per_second'].get('ours-numpy'), ',.0f')} | "
            f"{_fmt(q.get('ours-numpy/ours-cupy'), '.1f')} |"
        )
    return "\n".join(lines)


GPU_METHODS = ("gemm-floor-cupy", "ours-cupy", "ours-cupy-eager", "torch-cuda", "torch-cuda-graph")


def gpu_markdown(rows: list[dict[str, Any]]) -> str | None:
    """The GPU cells, one table row per (network, batch size): the CuPy GEMM floor, ours
    captured (the default fit) and eager, PyTorch eager and with its step in a CUDA graph.
    None where no GPU method ran."""
    if not any(m in r["seconds_per_epoch"] for r in rows for m in GPU_METHODS):
        return None
    head = (
        "| network | batch | cupy floor s/epoch | ours captured s | ours eager s | "
        "torch eager s | torch graph s | captured/floor | captured/torch graph | "
        "eager/torch eager |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s, q = r["seconds_per_epoch"], r["ratios"]
        cells = " | ".join(_fmt(s.get(m)) for m in GPU_METHODS)
        lines.append(
            f"| {r['network']} | {r['batch_size']} | {cells} | "
            f"{_fmt(q.get('ours-cupy/gemm-floor-cupy'), '.2f')}x | "
            f"{_fmt(q.get('ours-cupy/torch-cuda-graph'), '.2f')}x | "
            f"{_fmt(q.get('ours-cupy-eager/torch-cuda'), '.2f')}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """A bar chart of seconds per epoch as a multiple of the GEMM floor, per cell and method."""
    from backprop.plotting import require_matplotlib

    figure = require_matplotlib().figure
    methods = sorted({m for r in rows for m in r["seconds_per_epoch"]} - {"gemm-floor-numpy"})
    labels = [f"{r['network']}\nbatch {r['batch_size']}" for r in rows]
    fig = figure.Figure(figsize=(max(6, 1.6 * len(rows)), 4.5))
    ax = fig.subplots()
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        values = [
            r["seconds_per_epoch"].get(m, float("nan")) / r["seconds_per_epoch"]["gemm-floor-numpy"]
            for r in rows
        ]
        ax.bar([x + i * width for x in range(len(rows))], values, width, label=m)
    ax.axhline(1.0, color="black", lw=1, ls="--", label="GEMM floor (numpy)")
    ax.set_xticks(
        [x + width * (len(methods) - 1) / 2 for x in range(len(rows))], labels, fontsize=8
    )
    ax.set_ylabel("seconds per epoch / GEMM floor")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("One training epoch, as a multiple of the GEMM floor (lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 networks, batch 128, 10,000 samples, 3 rounds: under 2 minutes",
    )
    parser.add_argument("--networks", nargs="+", choices=list(workloads.NETWORKS))
    parser.add_argument("--batch-sizes", nargs="+", type=int)
    parser.add_argument("--samples", type=int, help=f"default {workloads.SAMPLES:,}")
    parser.add_argument("--rounds", type=int, help="timed rounds per cell (default 5)")
    parser.add_argument("--strict", action="store_true", help="also time the strict backend")
    parser.add_argument("--json", default="bench-report.json", help="where to write the JSON")
    parser.add_argument("--plot", metavar="PATH", help="also write a PNG bar chart")
    parser.add_argument(
        "--mpi",
        action="store_true",
        help="also measure data-parallel scaling (1 process x 2 threads vs "
        "2 MPI processes x 1 thread, 784-500-500-10)",
    )
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = (
        QUICK
        if args.quick
        else {
            "networks": list(workloads.NETWORKS),
            "batch_sizes": list(workloads.BATCH_SIZES),
            "samples": workloads.SAMPLES,
            "rounds": 5,
        }
    )
    networks = args.networks or defaults["networks"]
    batch_sizes = args.batch_sizes or defaults["batch_sizes"]
    samples = args.samples or defaults["samples"]
    rounds = args.rounds or defaults["rounds"]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    from backends import get_backend

    threads = get_backend("numpy").threads
    log(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"numpy backend threads {threads} (BACKPROP_NUM_THREADS)"
    )
    methods = workloads.available_methods(include_strict=args.strict)
    log(f"methods: {', '.join(m[0] for m in methods)}")
    for reason in (
        workloads.torch_unavailable_reason("cpu"),
        workloads.sklearn_unavailable_reason(),
    ):
        if reason:
            log(f"left out: {reason}")
    data = workloads.synthetic_mnist(samples)
    rows = []
    for net in networks:
        for batch_size in batch_sizes:
            log(f"{net}, batch {batch_size}:")
            cell = time_cell(workloads.NETWORKS[net], batch_size, data, methods, rounds, log)
            rows.append(summarize(net, batch_size, samples, cell))
    table = markdown(rows)
    print(table)
    gpu_table = gpu_markdown(rows)
    if gpu_table is not None:
        print()
        print(gpu_table)
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "numpy_threads": threads,
        },
        "samples": samples,
        "rounds": rounds,
        "rows": rows,
        "table": table,
        "gpu_table": gpu_table,
    }
    if args.mpi:
        from . import mpi_scaling

        reason = mpi_scaling.unavailable_reason()
        if reason:
            log(f"data-parallel scaling left out: {reason}")
        else:
            log("data-parallel scaling:")
            opts = mpi_scaling.parser().parse_args(
                ["--samples", str(min(samples, 30_000)), "--rounds", str(min(rounds, 3))]
            )
            scaling = mpi_scaling.measure(opts, log)
            report["mpi"] = scaling
            print()
            print(mpi_scaling.markdown(scaling))
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    log(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        log(f"wrote {args.plot}")
    return 0
