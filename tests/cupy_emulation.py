"""A stand-in for CuPy on machines without a GPU, to run CupyBackend's Python glue.

It is NumPy underneath, with CuPy's differences that matter to the backend: arrays are a
distinct type (host NumPy arrays are not device arrays), creation functions take no device=
keyword and copy host data, and ElementwiseKernel runs the kernel's own CUDA-C operation,
translated for the small subset the kernels use (declarations, =, +=, -=, the ternary
operator, T(...) casts and math functions). The CUDA compiler itself is checked separately,
with NVRTC, in test_cuda_kernels.py; this checks that the backend passes the right arguments
in the right order and that the kernels compute what their NumPy twins compute.
"""

from __future__ import annotations

import re
import types
from typing import Any

import numpy as np


class DeviceArray(np.ndarray):
    """An array "on the device": NumPy operations keep the type."""


def _device(x: Any, dtype: Any = None) -> DeviceArray:
    return np.array(x, dtype=dtype, copy=True).view(DeviceArray)


def _no_device_keyword(fn: Any) -> Any:
    def create(*args: Any, **kwargs: Any) -> DeviceArray:
        if "device" in kwargs:
            raise TypeError(f"{fn.__name__}() got an unexpected keyword argument 'device'")
        return fn(*args, **kwargs).view(DeviceArray)

    return create


class _Device:
    id = 0

    def __init__(self, index: int = 0) -> None:
        self.id = index

    def __enter__(self) -> _Device:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def synchronize(self) -> None:
        pass


def _split_top(expr: str, sep: str) -> int:
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch == "("
        depth -= ch == ")"
        if ch == sep and depth == 0:
            return i
    return -1


def translate(expr: str) -> str:
    """A CUDA-C expression of the kernels' subset as a NumPy expression."""
    out, i = [], 0
    while i < len(expr):
        if expr[i] == "(":
            depth, j = 1, i + 1
            while depth:
                depth += expr[j] == "("
                depth -= expr[j] == ")"
                j += 1
            out.append("(" + translate(expr[i + 1 : j - 1]) + ")")
            i = j
        else:
            out.append(expr[i])
            i += 1
    flat = "".join(out)
    q = _split_top(flat, "?")
    if q < 0:
        return flat
    rest = flat[q + 1 :]
    c = _split_top(rest, ":")
    return f"where({flat[:q]}, {rest[:c]}, {rest[c + 1 :]})"


class ElementwiseKernel:
    """Runs `operation` with NumPy, binding parameters like CuPy's ElementwiseKernel."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str) -> None:
        self.ins = [p.split()[-1] for p in in_params.split(",")]
        self.outs = [p.split()[-1] for p in out_params.split(",")]
        self.statements = [s.strip() for s in operation.split(";") if s.strip()]
        self.name = name

    def __call__(self, *args: Any) -> Any:
        if len(args) not in (len(self.ins), len(self.ins) + len(self.outs)):
            raise TypeError(f"{self.name}: wrong number of arguments ({len(args)})")
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        if not all(isinstance(a, DeviceArray) for a in arrays):
            raise TypeError(f"{self.name}: Unsupported type {np.ndarray}")
        dtype = arrays[0].dtype
        T = dtype.type
        env: dict[str, Any] = {
            "T": T,
            "where": np.where,
            "exp": np.exp,
            "fabs": np.abs,
            "log1p": np.log1p,
            "expm1": np.expm1,
            "sqrt": np.sqrt,
        }
        for name, value in zip(self.ins, args, strict=False):
            env[name] = np.asarray(value) if isinstance(value, np.ndarray) else T(value)
        given = args[len(self.ins) :]
        for name, value in zip(self.outs, given, strict=False):
            env[name] = np.asarray(value).copy()
        for statement in self.statements:
            match = re.fullmatch(r"(?:T\s+)?(\w+)\s*([+-]?=)\s*(.+)", statement)
            assert match, statement
            target, op, expr = match.groups()
            value = eval(translate(expr), env)  # the kernels' own text, nothing else
            if op == "=":
                env[target] = value
            elif op == "+=":
                env[target] = env[target] + value
            else:
                env[target] = env[target] - value
        results = []
        for i, name in enumerate(self.outs):
            value = np.broadcast_to(np.asarray(env[name], dtype=dtype), arrays[0].shape)
            if i < len(given):
                given[i][...] = value
                results.append(given[i])
            else:
                results.append(_device(value, dtype))
        return results[0] if len(results) == 1 else tuple(results)


def fake_cupy() -> types.SimpleNamespace:
    """A module-like namespace with the parts of CuPy that CupyBackend uses."""
    ns: dict[str, Any] = {name: getattr(np, name) for name in dir(np) if not name.startswith("_")}
    for name in ("zeros", "empty", "full", "arange", "ones"):
        ns[name] = _no_device_keyword(getattr(np, name))

    def asarray(x: Any, dtype: Any = None, order: Any = None, *, copy: Any = None) -> Any:
        if isinstance(x, DeviceArray) and (dtype is None or x.dtype == dtype) and not copy:
            return x
        return _device(x, dtype)

    ns.update(
        ndarray=DeviceArray,
        asarray=asarray,
        asnumpy=lambda x: np.array(x, copy=True).view(np.ndarray),
        ElementwiseKernel=ElementwiseKernel,
        cuda=types.SimpleNamespace(
            Device=_Device,
            runtime=types.SimpleNamespace(
                getDeviceCount=lambda: 1,
                getDeviceProperties=lambda i: {"name": b"Emulated GPU (NumPy)"},
            ),
        ),
    )
    return types.SimpleNamespace(**ns)
