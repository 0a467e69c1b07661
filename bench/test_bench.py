"""The pytest-benchmark suite: backend x network x batch size; one training epoch, one
training step, and predict over the data. Not part of the default test run:

    python -m pytest bench/ [--bench-samples 60000] [-k "784-30-10 and numpy"]

Every timed call ends with backend.synchronize(); the device goes into extra_info. The CuPy
cases skip with the reason where there is no GPU.
"""

from __future__ import annotations

import pytest

from backends import backend_unavailable_reason
from bench import workloads


@pytest.fixture(params=["numpy", "cupy"])
def backend_name(request: pytest.FixtureRequest) -> str:
    reason = backend_unavailable_reason(request.param)
    if reason is not None:
        pytest.skip(f"{request.param} backend unavailable: {reason}")
    return str(request.param)


@pytest.mark.parametrize("batch_size", workloads.BATCH_SIZES)
@pytest.mark.parametrize("network", list(workloads.NETWORKS))
@pytest.mark.parametrize("what", ["epoch", "step", "predict"])
def test_ours(benchmark, mnist_like, backend_name, network, batch_size, what):
    x, labels, y = mnist_like
    method = workloads.Ours(
        workloads.NETWORKS[network], batch_size, x, labels, y, backend=backend_name
    )
    benchmark.group = f"{network} batch {batch_size} {what}"
    benchmark.extra_info.update(
        device=method.device,
        backend=backend_name,
        network=network,
        batch_size=batch_size,
        samples=len(mnist_like[0]),
    )
    run = getattr(method, what)
    if what == "epoch":
        method.warm_up()
    if what == "step":
        benchmark(run)
    else:
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("batch_size", workloads.BATCH_SIZES)
@pytest.mark.parametrize("network", list(workloads.NETWORKS))
def test_gemm_floor(benchmark, mnist_like, backend_name, network, batch_size):
    x, labels, y = mnist_like
    method = workloads.GemmFloor(
        workloads.NETWORKS[network], batch_size, x, labels, y, backend=backend_name
    )
    benchmark.group = f"{network} batch {batch_size} epoch"
    benchmark.extra_info.update(
        device=method.device,
        backend=backend_name,
        network=network,
        batch_size=batch_size,
        method="gemm-floor",
    )
    benchmark.pedantic(method.epoch, rounds=3, iterations=1, warmup_rounds=1)
