"""The test matrix: every test that takes `backend` runs on numpy, strict and cupy, and on
cupy-emulated: CupyBackend's own code over a NumPy stand-in for CuPy (backends/emulated_cupy.py),
so its glue and kernels run on every machine.

The cupy cases are always collected. Without a usable GPU they are SKIPPED with the reason
(see `pytest -ra`); with BACKPROP_REQUIRE_GPU=1 they fail instead, for GPU machines in CI.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from backends import Backend, backend_unavailable_reason, get_backend

BACKENDS = ("numpy", "strict", "cupy", "cupy-emulated")
REQUIRE_GPU = os.environ.get("BACKPROP_REQUIRE_GPU", "") not in ("", "0")

# Tolerances for comparing a backend against a float64 NumPy reference, per dtype.
RTOL = {"float32": 2e-5, "float64": 1e-12}
ATOL = {"float32": 1e-6, "float64": 1e-14}

_REASONS: dict[str, str | None] = {}


def unavailable(name: str) -> str | None:
    if name not in _REASONS:
        _REASONS[name] = backend_unavailable_reason(name)
    return _REASONS[name]


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    for name in BACKENDS[:3]:
        reason = unavailable(name)
        lines.append(f"backend {name}: " + ("runs" if reason is None else f"SKIPPED ({reason})"))
    lines.append("backend cupy-emulated: runs (CupyBackend over a NumPy stand-in for CuPy)")
    if REQUIRE_GPU:
        lines.append("BACKPROP_REQUIRE_GPU=1: an unavailable cupy backend fails the run")
    return lines


EMULATED_GPU = 1  # not the default device: work that forgets to enter it fails (on GPU 0)


def emulated_cupy_backend(dtype: str = "float32") -> Backend:
    """CupyBackend constructed over the NumPy stand-in for CuPy, on its second GPU."""
    from backends.emulated_cupy import emulated_cupy_backend

    return emulated_cupy_backend(dtype, device=EMULATED_GPU)


def make_backend(name: str, dtype: str = "float32") -> Backend:
    if name == "cupy-emulated":
        return emulated_cupy_backend(dtype)
    reason = unavailable(name)
    if reason is not None:
        if name == "cupy" and REQUIRE_GPU:
            pytest.fail(f"BACKPROP_REQUIRE_GPU=1 but the cupy backend cannot run: {reason}")
        pytest.skip(f"{name} backend unavailable: {reason}")
    return get_backend(name, dtype=dtype)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(backend_name: str) -> Backend:
    """A float32 backend of each kind."""
    return make_backend(backend_name, "float32")


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def typed_backend(backend_name: str, dtype: str) -> Backend:
    """Each backend in float32 and in float64."""
    return make_backend(backend_name, dtype)


@pytest.fixture
def backend64(backend_name: str) -> Backend:
    """Each backend in float64, for gradient checks."""
    return make_backend(backend_name, "float64")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
