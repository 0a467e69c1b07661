"""pytest-benchmark suite settings: `python -m pytest bench/ [--bench-samples N]`."""

from __future__ import annotations

import pytest

from bench import workloads


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench-samples",
        type=int,
        default=workloads.SAMPLES,
        help=f"synthetic training samples per epoch (default {workloads.SAMPLES:,})",
    )


@pytest.fixture(scope="session")
def mnist_like(request: pytest.FixtureRequest):
    return workloads.synthetic_mnist(request.config.getoption("--bench-samples"))
