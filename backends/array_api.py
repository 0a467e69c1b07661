"""A backend over any Array-API namespace, e.g. `array_api_strict` standing in for a GPU."""

from __future__ import annotations

from typing import Any

from .base import Backend


class ArrayAPIBackend(Backend):
    """The base class's generic implementation over `namespace`, on `device`.

    With `array_api_strict` on `array_api_strict.Device("device1")`, any NumPy call on a
    backend array raises, so library code that only ever talks to its backend passes, and code
    that would break on a GPU fails on the CPU already.
    """

    name = "array_api"

    def __init__(self, namespace: Any, device: Any = None, dtype: Any = "float32") -> None:
        super().__init__(namespace, device=device, dtype=dtype)


def strict_backend(dtype: Any = "float32") -> ArrayAPIBackend:
    """`array_api_strict` on its non-default "device1": the test matrix's stand-in for a GPU."""
    try:
        import array_api_strict
    except ImportError as exc:
        raise RuntimeError(
            "the 'strict' backend needs array-api-strict: "
            'pip install -e ".[test]" in a checkout of xpbackprop'
        ) from exc
    backend = ArrayAPIBackend(array_api_strict, array_api_strict.Device("device1"), dtype)
    backend.name = "strict"
    return backend
