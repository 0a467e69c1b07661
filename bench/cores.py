"""Does the NumPy backend keep more than one core busy? `python -m bench.cores`

Times the backend's two big elementwise jobs of issue 14, with no GEMM running: a momentum
update over 4 million float32 parameters and a sigmoid over 2 million values, with one
thread and with the backend's default threads, in alternating rounds, and reports wall time,
process CPU time / wall time (above 1 means several cores worked at once) and the speed-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from backends.numpy_backend import NumpyBackend, default_threads


def _jobs(be: NumpyBackend) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(4_000_000).astype(np.float32)
    g = rng.standard_normal(4_000_000).astype(np.float32)
    v = np.zeros_like(p)
    z = rng.standard_normal((2000, 1000)).astype(np.float32)
    out = np.empty_like(z)
    return {
        "momentum update, 4M parameters": lambda: be.momentum_update(p, g, v, 0.01, 0.9),
        "sigmoid, 2M values": lambda: be.sigmoid(z, out=out),
    }


def measure(rounds: int = 7, repeats: int = 20) -> list[dict[str, Any]]:
    threads = default_threads()
    backends = {1: NumpyBackend(threads=1), threads: NumpyBackend(threads=threads)}
    jobs = {t: _jobs(be) for t, be in backends.items()}
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for _ in range(rounds + 1):  # the first round warms up
        for t in backends:
            for name, job in jobs[t].items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(repeats):
                    job()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                results.setdefault((name, t), []).append((wall / repeats, cpu / wall))
    rows = []
    for name in jobs[1]:
        for t in backends:
            timed = results[(name, t)][1:]
            rows.append(
                {
                    "job": name,
                    "threads": t,
                    "ms": 1e3 * statistics.median(w for w, _ in timed),
                    "cpu_per_wall": statistics.median(c for _, c in timed),
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cores", description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    rows = measure(args.rounds)
    print("| job | threads | ms per call | CPU time / wall time | speed-up |")
    print("|---|---|---|---|---|")
    single = {r["job"]: r["ms"] for r in rows if r["threads"] == 1}
    for r in rows:
        print(
            f"| {r['job']} | {r['threads']} | {r['ms']:.2f} | {r['cpu_per_wall']:.2f} "
            f"| {single[r['job']] / r['ms']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
