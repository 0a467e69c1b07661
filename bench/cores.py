"""Where a CPU training step's time goes, and what the update levers change: `python -m bench.cores`

Default: the table of issue 23 for one network and batch size, per step: the GEMM floor (the
step's matrix products alone), forward + backward, the full step (the update added; eager,
and as `fit` runs it, recorded where the backend records), and the update alone, looped
(cache-hot), each the minimum over rounds, and its ratio to the floor.

`--levers`: this library's `fit` epoch under each update lever of the NumPy backend
(backends/numpy_backend.py), one epoch each per round in turn after warm-up epochs (which
also record the steps), with the GEMM floor in every round: the median per step and the
median of the ratios to the floor and to the eager step, taken pair by pair within a round.

`--calls`: the recorded step (backends/tape.py) taken apart: each call of the replayed
program timed on its own, summed by function over a chunk and divided by its steps, the
minimum over rounds: which GEMMs, gathers, activations and updates the step's time goes to.

`--elementwise`: the backend's two big elementwise jobs with no GEMM running, a momentum
update over 4 million float32 parameters and a sigmoid over 2 million values, with one
thread and with the default threads: wall time, CPU time / wall time and the speed-up; and
the latency of handing an empty job to a worker thread and back, which every split job pays
(on the two-core machine this was written on, 72 us: more than a 128-row job's whole
sigmoid, which is why jobs are split only above a million elements there).

Timings mean something only on a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from backends.numpy_backend import NumpyBackend, default_threads
from backends.tape import UPDATES
from backprop.training import Trainer

from . import workloads

#: the levers compared by --levers: name -> NumpyBackend options
LEVERS: dict[str, dict[str, Any]] = {
    "eager": {"record": False},
    "recorded": {"record": True},
    "recorded, early update": {"record": True, "update_schedule": "early"},
    "recorded, overlapped update": {"record": True, "update_schedule": "overlap"},
    "recorded, BLAS yields": {"record": True, "blas_yield": True},
    "recorded, split update": {"record": True, "update_split_min": 0},
    "recorded, split update, BLAS yields": {
        "record": True,
        "update_split_min": 0,
        "blas_yield": True,
    },
    "eager, split update, BLAS yields": {
        "record": False,
        "update_split_min": 0,
        "blas_yield": True,
    },
}


def _network(name: str) -> workloads.Network:
    if name in workloads.NETWORKS:
        return workloads.NETWORKS[name]
    sizes = name.split("-")
    if (
        len(sizes) < 3
        or sizes[0] != "784"
        or sizes[-1] != "10"
        or not all(s.isdigit() for s in sizes)
    ):
        raise SystemExit(f"--network must look like 784-500-500-10 (784 in, 10 out), got {name!r}")
    return workloads.Network(name, tuple(int(s) for s in sizes[1:-1]), "sigmoid")


def _timed(job: Callable[[], None], repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        job()
    return (time.perf_counter() - start) / repeats


class Phases:
    """One model's step taken apart: each phase a function that runs it for every batch of
    the data (the update alone: as many times), in order, with no gather."""

    def __init__(self, network: workloads.Network, batch: int, data: Any, **options: Any):
        be = self.be = NumpyBackend(**options)
        x, labels, y = data
        self.ours = workloads.Ours(network, batch, x, labels, y, backend=be)
        self.floor = workloads.GemmFloor(network, batch, x, labels, y)
        trainer = self.ours.model.trainer
        assert trainer is not None  # compiled by Ours
        self.trainer: Trainer = trainer
        n = len(data[0])
        self.batches = [
            (self.ours.X[i : i + batch], self.ours.Y[i : i + batch]) for i in range(0, n, batch)
        ]
        self.steps = len(self.batches)
        self.trainer.ready()

    def forward_backward(self) -> None:
        network, loss = self.trainer.network, self.trainer.loss
        for Xb, Yb in self.batches:
            network.forward(Xb, training=True)
            network.backward(Yb, loss)

    def eager_step(self) -> None:
        for Xb, Yb in self.batches:
            self.trainer.step(Xb, Yb)

    def update(self) -> None:
        network, optimizer = self.trainer.network, self.trainer.optimizer
        for _ in range(self.steps):
            optimizer.apply([network.flat_params], [network.flat_grads])

    def phases(self) -> dict[str, Callable[[], None]]:
        return {
            "GEMM floor": self.floor.epoch,
            "forward + backward": self.forward_backward,
            "full step, eager": self.eager_step,
            "full step, fit": self.ours.epoch,
            "update alone, looped (cache-hot)": self.update,
        }


def measure_phases(
    network: workloads.Network, batch: int, samples: int, rounds: int, **options: Any
) -> dict[str, Any]:
    """The minimum over `rounds` of each phase's seconds per step (after one round that
    warms up, and before it the fit epochs that record the step where the backend records)."""
    model = Phases(network, batch, workloads.synthetic_mnist(samples), **options)
    model.ours.warm_up()
    jobs = model.phases()
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for r in range(rounds + 1):
        for name, job in jobs.items():
            elapsed = _timed(job) / model.steps
            if r > 0:
                times[name].append(elapsed)
    per_step = {name: min(t) for name, t in times.items()}
    return {
        "network": network.name,
        "batch_size": batch,
        "samples": samples,
        "steps": model.steps,
        "threads": model.be.threads,
        "per_step_ms": {k: 1e3 * v for k, v in per_step.items()},
        "vs_floor": {k: v / per_step["GEMM floor"] for k, v in per_step.items()},
    }


def phases_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['network']}, batch {result['batch_size']}, {result['samples']:,} samples "
        f"({result['steps']} steps), NumPy backend threads {result['threads']}; "
        "minimum over rounds",
        "",
        "| | per step | vs floor |",
        "|---|---|---|",
    ]
    for name, ms in result["per_step_ms"].items():
        lines.append(f"| {name} | {ms:.3f} ms | {result['vs_floor'][name]:.2f} |")
    return "\n".join(lines)


def measure_levers(
    network: workloads.Network,
    batch: int,
    samples: int,
    rounds: int,
    levers: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Each lever's fit epoch, in turn in every round, with the GEMM floor; per step."""
    data = workloads.synthetic_mnist(samples)
    floor = workloads.GemmFloor(network, batch, *data)
    models = {
        name: workloads.Ours(network, batch, *data, backend=NumpyBackend(**options))
        for name, options in levers.items()
    }
    steps = -(-samples // batch)
    for model in models.values():
        model.warm_up()  # a recording backend records the step meanwhile
        model.epoch()
    times: dict[str, list[float]] = {name: [] for name in ["GEMM floor", *models]}
    for _ in range(rounds):
        times["GEMM floor"].append(_timed(floor.epoch) / steps)
        for name, model in models.items():
            times[name].append(_timed(model.epoch) / steps)
    modes = {name: _modes(model) for name, model in models.items()}
    return {
        "network": network.name,
        "batch_size": batch,
        "samples": samples,
        "steps": steps,
        "levers": {name: levers.get(name, {}) for name in times},
        "modes": modes,
        "per_step_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "vs_floor": {k: _paired(v, times["GEMM floor"]) for k, v in times.items()},
        "vs_eager": {k: _paired(v, times["eager"]) for k, v in times.items() if "eager" in times},
    }


def _paired(a: list[float], b: list[float]) -> float:
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def _modes(model: workloads.Ours) -> str:
    """How the model's fit ran its steps: "tape" (recorded), "eager", or why not recorded."""
    trainer = model.model.trainer
    function = None if trainer is None else trainer.train_function
    replays = [] if function is None else list(function.replays.values())
    if not replays:
        return "eager"
    return ", ".join(
        sorted({r.mode if r.reason is None else f"eager ({r.reason})" for r in replays})
    )


def _call_name(call: Callable[[], Any]) -> str:
    """A replayed call's function: the backend method or NumPy function it runs."""
    func = getattr(call, "func", call)
    name = getattr(func, "__name__", type(func).__name__)
    if f"{name[1:]}_update" in UPDATES:  # one block of an update: the table's reference
        return f"{name[1:]}_update"
    return {"_each_call": "optimizer update (blocks)", "_gather": "gather (batch rows)"}.get(
        name, name
    )


def measure_calls(
    network: workloads.Network, batch: int, samples: int, rounds: int
) -> dict[str, Any]:
    """Each call of the recorded chunk with the most steps, timed alone in program order;
    per function: calls per step and microseconds per step (minimum over rounds)."""
    model = workloads.Ours(network, batch, *workloads.synthetic_mnist(samples))
    model.warm_up()
    model.epoch()
    trainer = model.model.trainer
    function = None if trainer is None else trainer.train_function
    replays = [] if function is None else list(function.replays.items())
    taped = [(shape, r) for shape, r in replays if getattr(r, "program", None)]
    if not taped:
        raise SystemExit(f"the step was not recorded ({_modes(model)}): nothing to take apart")
    (steps, _), replay = max(taped, key=lambda item: item[0][0])
    program: list[Callable[[], Any]] = replay.program  # type: ignore[attr-defined]
    best = [float("inf")] * len(program)
    for _ in range(rounds + 1):  # the first round warms up; the minimum is kept anyway
        for i, call in enumerate(program):
            start = time.perf_counter()
            call()
            best[i] = min(best[i], time.perf_counter() - start)
    by_name: dict[str, list[float]] = {}
    for call, seconds in zip(program, best, strict=True):
        by_name.setdefault(_call_name(call), []).append(seconds)
    rows = {
        name: {"calls_per_step": len(t) / steps, "us_per_step": 1e6 * sum(t) / steps}
        for name, t in sorted(by_name.items(), key=lambda item: -sum(item[1]))
    }
    floor = workloads.GemmFloor(network, batch, *workloads.synthetic_mnist(samples))
    floor_step = min(_timed(floor.epoch) for _ in range(rounds + 1)) / -(-samples // batch)
    return {
        "network": network.name,
        "batch_size": batch,
        "steps_per_chunk": steps,
        "calls": rows,
        "floor_us_per_step": 1e6 * floor_step,
    }


def calls_markdown(result: dict[str, Any]) -> str:
    total = sum(r["us_per_step"] for r in result["calls"].values())
    lines = [
        f"{result['network']}, batch {result['batch_size']}: the recorded step's calls, each "
        f"timed alone (a chunk of {result['steps_per_chunk']} steps; minimum over rounds)",
        "",
        "| call | per step | us per step | share |",
        "|---|---|---|---|",
    ]
    for name, r in result["calls"].items():
        lines.append(
            f"| {name} | {r['calls_per_step']:g} | {r['us_per_step']:.1f} | "
            f"{r['us_per_step'] / total:.0%} |"
        )
    lines.append(f"| all calls | | {total:.1f} | 100% |")
    lines.append(
        f"| GEMM floor (the step's products alone) | | {result['floor_us_per_step']:.1f} | |"
    )
    return "\n".join(lines)


def levers_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['network']}, batch {result['batch_size']}, {result['samples']:,} samples "
        f"({result['steps']} steps); median over rounds, ratios paired within a round",
        "",
        "| lever | per step | vs floor | vs eager | steps ran |",
        "|---|---|---|---|---|",
    ]
    for name, ms in result["per_step_ms"].items():
        eager = result["vs_eager"].get(name)
        lines.append(
            f"| {name} | {ms:.3f} ms | {result['vs_floor'][name]:.2f} | "
            f"{'-' if eager is None else format(eager, '.3f')} | {result['modes'].get(name, '-')} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- elementwise jobs
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
    pool = ThreadPoolExecutor(1)
    handoff = [_timed(lambda: pool.submit(_nothing).result(), repeats) for _ in range(rounds + 1)]
    pool.shutdown()
    rows.append({"job": "hand-off of an empty job", "threads": 2, "ms": 1e3 * min(handoff[1:])})
    return rows


def _nothing() -> None:
    return None


def elementwise_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| job | threads | ms per call | CPU time / wall time | speed-up |",
        "|---|---|---|---|---|",
    ]
    single = {r["job"]: r["ms"] for r in rows if r["threads"] == 1}
    for r in rows:
        if r["job"] not in single:  # the hand-off: a latency, not a job to speed up
            lines.append(
                f"| {r['job']} (to a worker thread and back) | - | {r['ms']:.3f} | - | - |"
            )
            continue
        lines.append(
            f"| {r['job']} | {r['threads']} | {r['ms']:.2f} | {r['cpu_per_wall']:.2f} "
            f"| {single[r['job']] / r['ms']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cores", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--network", default="784-500-500-10", help="784-...-10; named or sizes")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=12_800)
    parser.add_argument("--rounds", type=int, default=5)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--levers", action="store_true", help="compare the update levers")
    mode.add_argument("--elementwise", action="store_true", help="big jobs, 1 vs all threads")
    mode.add_argument("--calls", action="store_true", help="the recorded step, call by call")
    parser.add_argument(
        "--lever",
        action="append",
        choices=list(LEVERS),
        help="with --levers: only these (eager is always included); default all",
    )
    args = parser.parse_args(argv)
    if args.elementwise:
        print(elementwise_markdown(measure(args.rounds)))
        return 0
    network = _network(args.network)
    if args.calls:
        print(calls_markdown(measure_calls(network, args.batch_size, args.samples, args.rounds)))
        return 0
    if args.levers:
        chosen = {"eager": LEVERS["eager"]}
        chosen.update({name: LEVERS[name] for name in args.lever or LEVERS})
        result = measure_levers(network, args.batch_size, args.samples, args.rounds, chosen)
        print(levers_markdown(result))
        return 0
    print(phases_markdown(measure_phases(network, args.batch_size, args.samples, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
