"""Array backends: one interface, implemented for NumPy, CuPy and any Array-API namespace.

    >>> from backends import get_backend
    >>> be = get_backend("numpy")
    >>> be.to_numpy(be.sigmoid(be.asarray([0.0], dtype="float32")))
    array([0.5], dtype=float32)

This package knows nothing of neural networks; `backprop` is written against it.
"""

from __future__ import annotations

from typing import Any

from .array_api import ArrayAPIBackend, strict_backend
from .base import Array, Backend
from .numpy_backend import NumpyBackend

__all__ = [
    "Array",
    "ArrayAPIBackend",
    "Backend",
    "CupyBackend",
    "NumpyBackend",
    "available_backends",
    "backend_unavailable_reason",
    "device_count",
    "get_backend",
]

BACKEND_NAMES = ("numpy", "cupy", "strict")


def __getattr__(name: str) -> Any:
    # CupyBackend is importable by name without importing CuPy: the module imports it lazily.
    if name == "CupyBackend":
        from .cupy_backend import CupyBackend

        return CupyBackend
    raise AttributeError(f"module 'backends' has no attribute {name!r}")


def get_backend(
    name_or_backend: str | Backend = "numpy", dtype: Any = None, device: int | None = None
) -> Backend:
    """Resolve a backend name ("numpy", "cupy", "strict") or pass a Backend through.

    `dtype` ("float32" or "float64") sets the backend's default float dtype; None keeps the
    backend's own (float32 for a new one). `device` picks the GPU of the "cupy" backend by
    index (None: GPU 0); the other backends have one device and take None only.

    Raises ValueError for an unknown name or a device this backend or machine does not have,
    RuntimeError when the backend cannot run here (CuPy missing, no CUDA device,
    array-api-strict missing).
    """
    if device is not None and not (
        isinstance(name_or_backend, str) and name_or_backend.lower() == "cupy"
    ):
        raise ValueError(
            f"device={device!r} selects a GPU of the 'cupy' backend; backend "
            f"{name_or_backend!r} takes device=None"
        )
    if isinstance(name_or_backend, Backend):
        if dtype is None or name_or_backend._float_dtype(dtype) == name_or_backend.dtype:
            return name_or_backend
        return name_or_backend.with_dtype(dtype)
    if not isinstance(name_or_backend, str):
        raise TypeError(
            "backend must be a name (one of "
            + ", ".join(map(repr, BACKEND_NAMES))
            + f") or a backends.Backend, got {type(name_or_backend).__name__}"
        )
    name = name_or_backend.lower()
    dtype = "float32" if dtype is None else dtype
    if name == "numpy":
        return NumpyBackend(dtype=dtype)
    if name == "cupy":
        from .cupy_backend import CupyBackend

        return CupyBackend(dtype=dtype, device=0 if device is None else device)
    if name in ("strict", "array_api_strict"):
        return strict_backend(dtype=dtype)
    raise ValueError(
        f"unknown backend {name_or_backend!r}; valid names are "
        + ", ".join(map(repr, BACKEND_NAMES))
    )


def backend_unavailable_reason(name: str) -> str | None:
    """None when backend `name` can run here, else the reason it cannot."""
    try:
        get_backend(name)
    except RuntimeError as exc:
        return str(exc)
    return None


def available_backends() -> list[str]:
    """The names of the backends that can run on this machine, e.g. ["numpy", "strict"]."""
    return [name for name in BACKEND_NAMES if backend_unavailable_reason(name) is None]


def device_count(name: str) -> int:
    """How many devices backend `name` can place arrays on here: the CUDA devices for
    "cupy" (RuntimeError where CuPy or a GPU is missing), 1 for the others."""
    if isinstance(name, str) and name.lower() == "cupy":
        from .cupy_backend import import_cupy

        return int(import_cupy().cuda.runtime.getDeviceCount())
    get_backend(name)  # an unknown name raises here
    return 1
