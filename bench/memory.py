"""Peak memory of training on 60,000 MNIST-shaped samples: `python -m bench.memory`.

Each network trains one epoch in a fresh process; reported: the process's peak resident set
size, the size of the training data the caller holds, and what fit added on top of the data
and the interpreter (measured against the same process before fit).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from . import workloads


def worker(network: str, batch_size: int, samples: int) -> None:
    import resource

    from backprop import SGD, Dense, Sequential

    net = workloads.NETWORKS[network]
    x, _, y = workloads.synthetic_mnist(samples)
    model = Sequential(
        [Dense(h, net.activation) for h in net.hidden] + [Dense(10, "softmax")],
        input_dim=784,
        seed=0,
    )
    model.compile(loss="categorical_crossentropy", optimizer=SGD(0.01, momentum=0.9))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    model.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "network": network,
                "batch_size": batch_size,
                "samples": samples,
                "data_bytes": x.nbytes + y.nbytes,
                "rss_before_fit": before,
                "peak_rss": peak,
                "fit_added": peak - before,
                "parameters": int(model.flat_params.shape[0]),
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "worker":
        worker(argv[1], int(argv[2]), int(argv[3]))
        return 0
    samples = workloads.SAMPLES
    root = Path(__file__).resolve().parents[1]
    print("| network | batch | training data | peak RSS | added by fit | parameters x 4 B |")
    print("|---|---|---|---|---|---|")
    for network in workloads.NETWORKS:
        batch = 1024
        result = subprocess.run(
            [sys.executable, "-m", "bench.memory", "worker", network, str(batch), str(samples)],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
        r = json.loads(result.stdout.strip().splitlines()[-1])
        mb = 1 / 2**20
        print(
            f"| {network} | {batch} | {r['data_bytes'] * mb:.0f} MiB | "
            f"{r['peak_rss'] * mb:.0f} MiB | {r['fit_added'] * mb:.0f} MiB | "
            f"{4 * r['parameters'] * mb:.1f} MiB |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
