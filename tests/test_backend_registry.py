"""get_backend, available_backends, array-kind errors, and a test of the test matrix itself."""

from __future__ import annotations

import numpy as np
import pytest

import backends
from backends import ArrayAPIBackend, NumpyBackend, available_backends, get_backend


def test_get_backend_by_name_and_instance():
    be = get_backend("numpy")
    assert isinstance(be, NumpyBackend) and be.dtype_name == "float32"
    assert get_backend(be) is be
    assert get_backend(be, dtype="float64").dtype_name == "float64"
    assert be.dtype_name == "float32"  # the original is unchanged
    assert get_backend("NumPy", dtype="float64").dtype_name == "float64"


def test_unknown_backend_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown backend 'torch'.*'numpy', 'cupy', 'strict'"):
        get_backend("torch")


def test_backend_of_wrong_type():
    with pytest.raises(TypeError, match="backend must be a name"):
        get_backend(3)  # type: ignore[arg-type]


def test_bad_dtype():
    with pytest.raises(ValueError, match=r"dtype must be 'float32' or 'float64', got 'int8'"):
        get_backend("numpy", dtype="int8")


def test_available_backends():
    """In the registry's order, whichever can run here (a GPU machine lists cupy second)."""
    names = available_backends()
    assert names[0] == "numpy"
    for name in ("cupy", "strict"):
        assert (name in names) == (backends.backend_unavailable_reason(name) is None)
    assert names == [n for n in backends.BACKEND_NAMES if n in names]


@pytest.mark.parametrize("gpu", [False, True])
def test_available_backends_with_and_without_a_gpu(monkeypatch, gpu):
    def reason(name):
        return None if gpu or name != "cupy" else "no usable CUDA device"

    monkeypatch.setattr(backends, "backend_unavailable_reason", reason)
    expected = ["numpy", "cupy", "strict"] if gpu else ["numpy", "strict"]
    assert available_backends() == expected


def test_device_is_for_the_cupy_backend_only():
    with pytest.raises(ValueError, match=r"device=1 selects a GPU of the 'cupy' backend"):
        get_backend("numpy", device=1)
    assert backends.device_count("numpy") == 1


def test_cupy_device_out_of_range_names_the_devices(monkeypatch):
    from backends import cupy_backend, emulated_cupy

    monkeypatch.setattr(cupy_backend, "import_cupy", emulated_cupy.fake_cupy)
    assert cupy_backend.CupyBackend(device=0).device.id == 0
    assert cupy_backend.CupyBackend(device=1).device.id == 1  # the emulation has two GPUs
    with pytest.raises(
        ValueError,
        match=r"device must be a GPU index from 0 to 1 \(this machine has 2 CUDA devices\), got 3",
    ):
        cupy_backend.CupyBackend(device=3)
    monkeypatch.setattr(emulated_cupy, "DEVICE_COUNT", 1)
    with pytest.raises(ValueError, match=r"from 0 to 0 \(this machine has 1 CUDA device\), got 1"):
        cupy_backend.CupyBackend(device=1)


def test_check_array_says_how_to_fix():
    be = get_backend("strict")
    with pytest.raises(TypeError, match=r"numpy\.ndarray; call backend\.asarray\(x\)"):
        be.check_array(np.ones(3))
    x = be.asarray(np.ones(3))
    assert be.check_array(x) is x


def test_strict_arrays_live_off_the_default_device():
    be = get_backend("strict")
    x = be.asarray(np.ones((2, 2), dtype=np.float32))
    assert "device1" in str(x.device)


class LeakyBackend(ArrayAPIBackend):
    """A backend with the bug the strict backend exists to catch: NumPy math on device arrays."""

    def sigmoid(self, z, out=None):
        return self._into(1.0 / (1.0 + np.exp(-z)), out)


def test_planted_numpy_call_fails_on_strict():
    """The test matrix catches NumPy leaking onto backend arrays: the leak works on NumPy
    arrays (so a NumPy-only suite would pass) and raises on the strict device."""
    import array_api_strict

    z_host = np.array([0.0, 1.0], dtype=np.float32)
    on_numpy = LeakyBackend(np, device="cpu")
    np.testing.assert_allclose(on_numpy.sigmoid(z_host), [0.5, 1 / (1 + np.exp(-1.0))])
    strict = LeakyBackend(array_api_strict, array_api_strict.Device("device1"))
    with pytest.raises(RuntimeError, match=r"Can't convert array on the .*device1"):
        strict.sigmoid(strict.asarray(z_host))
