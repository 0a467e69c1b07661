"""Kernel launches per training step: `python -m bench.launches`.

On a GPU our networks are bound by host-side launches (some 40-55 us each through CuPy),
not FLOPs. This counts them on the emulated CuPy backend (backends/emulated_cupy.py), which
counts what real CuPy would launch: every elementwise kernel, reduction, gather, copy, fill
and GEMM, and one per CUDA-graph launch.

Per network at batch 128 (SGD with momentum, softmax + cross-entropy, as in bench/):
- eager: the kernels one step launches, from the difference between an epoch of 6 steps
  and one of 2 (so the per-epoch work, loss and metrics, cancels out);
- captured: every host launch of a replayed epoch (per chunk of up to 64 steps, its staging
  and one graph launch; per epoch, the permutation, the step table, the snapshot, loss and
  metrics), for an epoch of 6 steps and for a full 60,000-sample epoch of 469 steps. The
  full epoch is measured on 784-16-16-10, whose steps launch what those of every
  two-hidden-layer network launch, at a fraction of the emulated arithmetic;
- graph nodes at 60,000 and 1,000,000 samples: the graph of one chunk of steps (at most 64,
  backprop.training.CHUNK_STEPS) recorded in training on that many samples: the largest an
  epoch records (its last chunk may be shorter). Training stops once it is recorded (on
  the second chunk), so a million samples take seconds on the emulation;
- memory nodes per graph: allocations recorded into the graphs above (cuBLAS allocating its
  own workspace inside a capture, where the handle's was reset by set_stream): the most in
  any one graph, which should be 0.
"""

from __future__ import annotations

import argparse
import math
import warnings

import numpy as np

from backends import emulated_cupy
from backprop import SGD, Callback, Dense, Sequential

from .workloads import LEARNING_RATE, MOMENTUM, NETWORKS, SAMPLES

DEFAULT_NETWORKS = ("784-16-16-10", "784-500-500-10", "784-1024-1024-10")


def _model(network, be):
    model = Sequential(
        [Dense(h, network.activation) for h in network.hidden] + [Dense(10, "softmax")],
        input_dim=784,
        backend=be,
        seed=0,
    )
    model.compile(loss="categorical_crossentropy", optimizer=SGD(LEARNING_RATE, momentum=MOMENTUM))
    return model


def _epoch_launches(model, x, y, batch_size: int, capture: bool) -> int:
    before = emulated_cupy.launches()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capture that falls back must not pass unseen
        model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0, capture=capture)
    return emulated_cupy.launches() - before


def count(network_name: str, batch_size: int = 128) -> dict[str, float]:
    """Launch counts of one network: eager kernels per step, captured host launches per
    epoch and per step."""
    network = NETWORKS[network_name]
    be = emulated_cupy.emulated_cupy_backend()
    rng = np.random.default_rng(0)
    counts = {}
    for steps in (2, 6):
        n = steps * batch_size
        x = be.asarray(rng.random((n, 784), dtype=np.float32))
        y = be.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)])
        counts[steps] = _epoch_launches(_model(network, be), x, y, batch_size, capture=False)
    eager = (counts[6] - counts[2]) / 4
    replayed = _replayed_epoch(_model(network, be), x, y, batch_size)
    full_steps = math.ceil(SAMPLES / batch_size)
    full = captured_epoch(SAMPLES, batch_size)
    return {
        "eager_kernels_per_step": eager,
        "captured_launches_per_epoch": full,
        "captured_launches_per_step": full / full_steps,
        "captured_launches_per_step_6": replayed / 6,
        "steps_per_epoch": full_steps,
    }


def _replayed_epoch(model, x, y, batch_size: int) -> int:
    """Host launches of an epoch that only replays: epoch 1 warms up, epoch 2 records and
    launches (the last chunk, if shorter, warms up there), epoch 3 only replays."""
    for _ in range(2):
        _epoch_launches(model, x, y, batch_size, capture=True)
    return _epoch_launches(model, x, y, batch_size, capture=True)


_CAPTURED_EPOCHS: dict[tuple[int, int], int] = {}


def captured_epoch(samples: int = SAMPLES, batch_size: int = 128) -> int:
    """Host launches of a replayed epoch of `samples` samples (784-16-16-10; see above),
    measured once per process."""
    key = (samples, batch_size)
    if key not in _CAPTURED_EPOCHS:
        be = emulated_cupy.emulated_cupy_backend()
        rng = np.random.default_rng(0)
        x = be.asarray(rng.random((samples, 784), dtype=np.float32))
        y = be.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, samples)])
        model = _model(NETWORKS["784-16-16-10"], be)
        _CAPTURED_EPOCHS[key] = _replayed_epoch(model, x, y, batch_size)
    return _CAPTURED_EPOCHS[key]


class _Recorded(Exception):
    """Raised by _StopWhenRecorded to end a fit once a chunk's graph exists."""


class _StopWhenRecorded(Callback):
    """Ends training after the second chunk: the first ran eagerly to warm up, the second
    was recorded as a graph and launched."""

    def on_epoch_progress(self, seen, loss):
        self.chunks = getattr(self, "chunks", 0) + 1
        if self.chunks == 2:
            raise _Recorded


def graph_nodes(samples: int, network_name: str = "784-500-500-10", batch_size: int = 128) -> int:
    """The node count of the chunk graph recorded when training on `samples` samples."""
    network = NETWORKS[network_name]
    be = emulated_cupy.emulated_cupy_backend()
    labels = np.random.default_rng(0).integers(0, 10, samples)
    x = be.zeros((samples, 784))  # made on the device: no 3 GB host copy for a million
    y = be.asarray(np.eye(10, dtype=np.float32)[labels])
    model = _model(network, be)
    before = len(emulated_cupy.graph_sizes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capture that falls back must not pass unseen
        try:
            model.fit(x, y, batch_size=batch_size, verbose=0, callbacks=[_StopWhenRecorded()])
        except _Recorded:
            pass
    (size,) = emulated_cupy.graph_sizes()[before:]
    return size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.launches", description=__doc__)
    parser.add_argument("--networks", nargs="+", default=list(DEFAULT_NETWORKS))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--samples", type=int, nargs="*", default=[60_000, 1_000_000])
    args = parser.parse_args(argv)
    graphs_before = len(emulated_cupy.graph_memory_nodes())
    print(
        "| network | batch | eager kernels per step | captured host launches per epoch "
        "| per step (60,000 samples) | per step (6-step epoch) |"
    )
    print("|---|---|---|---|---|---|")
    results = {}
    for name in args.networks:
        r = results[name] = count(name, args.batch_size)
        print(
            f"| {name} | {args.batch_size} | {r['eager_kernels_per_step']:g} "
            f"| {r['captured_launches_per_epoch']} | {r['captured_launches_per_step']:.3f} "
            f"| {r['captured_launches_per_step_6']:.2f} |"
        )
    for samples in args.samples:
        print(f"graph nodes at {samples} samples: {graph_nodes(samples)}")
    memory_nodes = emulated_cupy.graph_memory_nodes()[graphs_before:]
    print(f"memory nodes per graph: {max(memory_nodes, default=0)}")
    key = "784-500-500-10" if "784-500-500-10" in results else args.networks[0]
    r = results[key]
    print(
        f"{key} batch {args.batch_size}: eager {r['eager_kernels_per_step']:g} kernels per "
        f"step, captured {r['captured_launches_per_step']:.3f} host launches per step "
        f"({r['captured_launches_per_epoch']} per epoch of {r['steps_per_epoch']} steps)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
