"""The CuPy backend: the base class's math on an NVIDIA GPU, with fused elementwise kernels.

CuPy is imported when a `CupyBackend` is constructed, never when this module is imported, so
`import backends` works on machines without CuPy. Its elementwise kernels are the CUDA text of
the table in backends/kernels.py, where each sits beside the NumPy reference it must equal
(the conformance tests check that equality, on a GPU and on the emulated CuPy), compiled as
they are and with the bias add or the bias gradient fused in; `tests/test_cuda_kernels.py`
compiles every kernel with NVRTC where no GPU exists.
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Array, Backend, Replay, on_backend_device
from .kernels import COLUMN_KERNELS, KERNELS, KernelSpec


def with_bias(spec: KernelSpec) -> KernelSpec:
    """The activation kernel `spec` with its bias add fused in: z += b (z is written back, so
    it keeps the pre-activations the backward pass needs), then a = f(z). One kernel where
    NumPy's `z += b; a = f(z)` takes two."""
    ins = ", ".join("T b" if p.strip() == "T z" else p.strip() for p in spec.in_params.split(","))
    return KernelSpec(
        ins, "T z, " + spec.out_params, "z += b; " + spec.operation, spec.name + "_bias"
    )


def _bias_grad_parts(spec: KernelSpec, arrays: tuple[str, ...]) -> tuple[str, list[str], str]:
    """(the output's name, the inputs with the (rows, n) arrays made raw as `name_`, the loads
    `T name = name_[bg_e];`) for a bias-gradient variant of the backward kernel `spec`."""
    (out,) = (p.split()[-1] for p in spec.out_params.split(","))
    ins = [
        f"raw T {p.split()[-1]}_" if p.split()[-1] in arrays else p.strip()
        for p in spec.in_params.split(",")
    ]
    loads = " ".join(f"T {name} = {name}_[bg_e];" for name in arrays)
    return out, ins, loads


# The warp's 32 sums added with shuffles, in a fixed order; lane 0 then holds the total.
_WARP_SUM = " ".join(f"bg_s += __shfl_down_sync(0xffffffff, bg_s, {w});" for w in (16, 8, 4, 2, 1))


def with_bias_grad(spec: KernelSpec, arrays: tuple[str, ...]) -> KernelSpec:
    """The backward kernel `spec` with the bias gradient fused in: it writes its (rows, n)
    result as `spec` does and the column sums of that result into db, in one pass where NumPy
    takes two (`out = f(...); db = out.sum(axis=0)`). `arrays` names the parameters of `spec`
    that are (rows, n) arrays; the others are scalars, passed as they are.

    It runs 32 threads per column (size=32 * n, so each warp holds one column): lane l takes
    rows l, l + 32, ..., computes each element as `spec` does and sums them; the warp adds its
    32 sums with shuffles (a fixed order, so the result is reproducible) and lane 0 writes db.
    A lane past the last row reads that row (in bounds) but neither writes nor sums it.
    For tall, narrow arrays see `with_tiled_bias_grad` (and `bias_grad_tiles`, which picks)."""
    out, ins, loads = _bias_grad_parts(spec, arrays)
    operation = (
        "ptrdiff_t bg_c = i >> 5; ptrdiff_t bg_lane = i & 31; T bg_s = T(0);"
        " for (ptrdiff_t bg_k = 0; bg_k < (rows + 31) >> 5; ++bg_k) {"
        " ptrdiff_t bg_r = (bg_k << 5) + bg_lane;"
        " ptrdiff_t bg_e = (bg_r < rows ? bg_r : rows - 1) * n + bg_c;"
        f" {loads} T {out} = T(0); {spec.operation}"
        f" if (bg_r < rows) {out}_[bg_e] = {out};"
        f" bg_s += bg_r < rows ? {out} : T(0); }}"
        f" {_WARP_SUM} if (bg_lane == 0) db[bg_c] = bg_s;"
    )
    return KernelSpec(
        ", ".join([*ins, "int64 rows", "int64 n"]),
        f"raw T {out}_, raw T db",
        operation,
        spec.name + "_bias_grad",
    )


def with_tiled_bias_grad(spec: KernelSpec, arrays: tuple[str, ...]) -> KernelSpec:
    """The first of two passes computing what `with_bias_grad`'s kernel computes, for tall,
    narrow (rows, n) arrays, where one warp per column leaves the GPU nearly idle (60,000 x 10:
    320 threads, 1,875 serial steps each) and its lanes read 32 rows apart.

    It runs `threads` = n * tiles threads over the rows * n elements (`total`) in a grid-stride
    loop: thread i computes elements i, i + threads, i + 2 threads, ... (`steps` of them, the
    last past `total` clamped: read in bounds, neither written nor summed), writing each as
    `spec` does, so consecutive threads read and write consecutive elements. As `threads` is a
    multiple of n, all of thread i's elements lie in column i % n (rows i / n, i / n + tiles,
    ...); it sums them in that order into part[i], the partial sum of tile i / n of column
    i % n. `column_sums_of_tiles` then adds each column's `tiles` partials in a fixed order:
    the result is reproducible (though rounded differently from the warp kernel's)."""
    out, ins, loads = _bias_grad_parts(spec, arrays)
    operation = (
        "T bg_s = T(0);"
        " for (ptrdiff_t bg_k = 0; bg_k < steps; ++bg_k) {"
        " ptrdiff_t bg_f = i + bg_k * threads;"
        " ptrdiff_t bg_e = bg_f < total ? bg_f : total - 1;"
        f" {loads} T {out} = T(0); {spec.operation}"
        f" if (bg_f < total) {out}_[bg_e] = {out};"
        f" bg_s += bg_f < total ? {out} : T(0); }}"
        " part[i] = bg_s;"
    )
    return KernelSpec(
        ", ".join([*ins, "int64 total", "int64 threads", "int64 steps"]),
        f"raw T {out}_, raw T part",
        operation,
        spec.name + "_tiled_bias_grad",
    )


# The second pass of the tiled bias gradient: db[c] = the sum of part[t * n + c] over the
# `tiles` tiles (a multiple of 32), one warp per column (size=32 * n): lane l adds tiles l,
# l + 32, ... in order, then the warp adds its 32 sums with shuffles, as `with_bias_grad` does.
COLUMN_SUMS_OF_TILES = KernelSpec(
    "raw T part, int64 tiles, int64 n",
    "raw T db",
    "ptrdiff_t bg_c = i >> 5; ptrdiff_t bg_lane = i & 31; T bg_s = T(0);"
    " for (ptrdiff_t bg_k = 0; bg_k < tiles >> 5; ++bg_k) {"
    " bg_s += part[((bg_k << 5) + bg_lane) * n + bg_c]; }"
    f" {_WARP_SUM} if (bg_lane == 0) db[bg_c] = bg_s;",
    "bp_column_sums_of_tiles",
)

# Where the tiled bias gradient replaces the warp kernel: at least TILED_MIN_ROWS rows (the
# warp kernel's lanes then loop 64 times or more) and at least TILED_MIN_ROWS_PER_COLUMN rows
# per column (so it runs at most rows / 2 threads, too few to fill a GPU).
TILED_MIN_ROWS = 2048
TILED_MIN_ROWS_PER_COLUMN = 64


def bias_grad_tiles(rows: int, n: int) -> int:
    """How the bias gradient of a (rows, n) backward job is summed on a GPU, decided here
    only: 0 for `with_bias_grad`'s one warp per column (batch-sized arrays such as 128 x 10,
    and wide ones such as 1024 x 1024); otherwise the number of row tiles of the two-pass
    `with_tiled_bias_grad` (tall, narrow arrays such as 60,000 x 10 or 8,192 x 16). The tile
    count is a multiple of 32 near sqrt(32 rows), which balances the two passes' serial
    loops: rows / tiles steps in the first, tiles / 32 in the second (60,000 rows: 1,408
    tiles, 43 and 44 steps, where the warp kernel takes 1,875)."""
    if rows < TILED_MIN_ROWS or rows < TILED_MIN_ROWS_PER_COLUMN * n:
        return 0
    return 32 * math.ceil(math.sqrt(rows / 32))


# Softmax of each row of z (rows of n), one thread per row: the row maximum, then exp(z - max)
# and its sum, then the division. a = np.exp(z - z.max(-1, keepdims=True)); a /= a.sum(-1, ...)
_SOFTMAX_ROW = (
    "ptrdiff_t row = i * n;"
    " T zmax = z[row];"
    " for (ptrdiff_t j = 1; j < n; ++j) { zmax = z[row + j] > zmax ? z[row + j] : zmax; }"
    " T total = T(0);"
    " for (ptrdiff_t j = 0; j < n; ++j) { T e = exp(z[row + j] - zmax); a[row + j] = e;"
    " total += e; }"
    " for (ptrdiff_t j = 0; j < n; ++j) { a[row + j] = a[row + j] / total; }"
)


# The kernels CuPy compiles: each entry of the table in backends/kernels.py, each forward
# once more with its bias add fused in and each backward with its bias gradient (one warp per
# column, or two passes over row tiles for tall arrays: see bias_grad_tiles), and the
# softmax, which is not elementwise (one thread per row).
SPECS: dict[str, KernelSpec] = {key: kernel.cuda for key, kernel in KERNELS.items()}
SPECS.update({key + "_bias": with_bias(k.cuda) for key, k in KERNELS.items() if k.fuse == "bias"})
SPECS.update(
    {
        key + "_bias_grad": with_bias_grad(k.cuda, k.arrays)
        for key, k in KERNELS.items()
        if k.fuse == "bias_grad"
    }
)
SPECS.update(
    {
        key + "_tiled_bias_grad": with_tiled_bias_grad(k.cuda, k.arrays)
        for key, k in KERNELS.items()
        if k.fuse == "bias_grad"
    }
)
SPECS["column_sums_of_tiles"] = COLUMN_SUMS_OF_TILES
# batch normalization's two jobs, one thread per column (see backends/kernels.py)
SPECS.update({key: kernel.cuda for key, kernel in COLUMN_KERNELS.items()})
SPECS.update(
    {
        # softmax along rows of n (see _SOFTMAX_ROW)
        "softmax": KernelSpec("raw T z, int64 n", "raw T a", _SOFTMAX_ROW, "bp_softmax"),
        # the same with the bias row added first, z[row + j] += b[j], written back into z
        "softmax_bias": KernelSpec(
            "raw T b, int64 n",
            "raw T z, raw T a",
            "for (ptrdiff_t j = 0; j < n; ++j) { z[i * n + j] += b[j]; } " + _SOFTMAX_ROW,
            "bp_softmax_bias",
        ),
    }
)


def import_cupy() -> Any:
    """Import CuPy and check that a CUDA device is usable, or raise a clear RuntimeError."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(
            "the 'cupy' backend needs CuPy, which is not installed: "
            'pip install -e ".[cuda12]" (CUDA 12) or -e ".[cuda13]" (CUDA 13) in a checkout of '
            "xpbackprop (it is not on the package index yet)"
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError: no driver, driver too old, ...
        raise RuntimeError(
            f"the 'cupy' backend found no usable CUDA device: {type(exc).__name__}: {exc}"
        ) from exc
    if count < 1:
        raise RuntimeError("the 'cupy' backend found no usable CUDA device: 0 devices present")
    return cupy


def import_capturable_blas(missing: bool = False) -> Any:
    """NVIDIA's low-level cuBLAS bindings (nvmath-python), whose GEMMs can be captured into a
    CUDA graph: CuPy refuses any cuBLAS call while a stream is capturing. (`missing=True`
    raises as if nvmath-python were not installed, for tests.)"""
    try:
        if missing:
            raise ImportError("No module named 'nvmath'")
        from nvmath.bindings import cublas
    except ImportError as exc:
        raise RuntimeError(
            "capturing a step needs nvmath-python's cuBLAS bindings, which are not installed "
            "(CuPy's own cuBLAS calls cannot be captured): "
            'pip install -e ".[cuda12]" or -e ".[cuda13]" in a checkout of xpbackprop'
        ) from exc
    return cublas


@on_backend_device()
class CupyBackend(Backend):
    """Computes on an NVIDIA GPU with CuPy: cuBLAS for matmul, fused kernels elsewhere. Every
    public method runs with the backend's GPU current (see `base.on_backend_device`): CuPy
    places new arrays, and runs kernels, cuBLAS and copies, on the *current* device, not on
    their operands' device, so a backend on GPU k > 0 would otherwise work on GPU 0."""

    name = "cupy"
    memory = "cuda"
    gather_chunks = True  # one gather launch per chunk of steps, not per step

    def __init__(self, dtype: Any = "float32", device: int = 0) -> None:
        cupy = import_cupy()
        count = cupy.cuda.runtime.getDeviceCount()
        if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < count:
            raise ValueError(
                f"device must be a GPU index from 0 to {count - 1} (this machine has {count} "
                f"CUDA device{'s' if count != 1 else ''}), got {device!r}"
            )
        super().__init__(cupy, device=cupy.cuda.Device(device), dtype=dtype)
        self._ndarray = cupy.ndarray
        self._kernels = {key: cupy.ElementwiseKernel(*spec) for key, spec in SPECS.items()}
        self._blas: Any = None  # nvmath's cuBLAS module, imported at the first capture
        self._import_blas: Callable[[], Any] = import_capturable_blas
        self._gemm_state: Any = None  # (handle, workspace, alpha/beta host scalars)
        self._capture: _GraphReplay | None = None  # the replay being recorded, if any
        self._scratch: dict[tuple[int, str], Array] = {}  # see _partials

    @property
    def device_name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.device.id)
        name = props["name"]
        return f"GPU {self.device.id}: {name.decode() if isinstance(name, bytes) else name}"

    def _check(self, *arrays: Any) -> None:
        for x in arrays:
            if not isinstance(x, self._ndarray):
                self.check_array(x, "array")

    def _run(self, key: str, *args: Any, out: Array | None = None, size: int = -1) -> Any:
        if out is not None:
            args = (*args, out)
        return self._kernels[key](*args, size=size)

    def _backward(
        self,
        key: str,
        arrays: tuple[Array, ...],
        *scalars: Any,
        out: Array | None,
        bias_grad: Array | None,
    ) -> Any:
        """Backward job `key` of (rows, n) arrays, with the column sums of its result written
        into `bias_grad` in the same kernel when given."""
        self._check(*arrays)
        if bias_grad is None:
            return self._run(key, *arrays, *scalars, out=out)
        self._check(bias_grad)
        shape = tuple(arrays[0].shape)
        if len(shape) != 2 or any(tuple(x.shape) != shape for x in arrays):
            return self._bias_grad(self._run(key, *arrays, *scalars, out=out), bias_grad)
        if out is None:
            out = self.xp.empty_like(arrays[0])
        rows, n = shape
        tiles = bias_grad_tiles(rows, n)
        if not tiles:
            self._run(key + "_bias_grad", *arrays, *scalars, rows, n, out, bias_grad, size=32 * n)
            return out
        threads, part = n * tiles, self._partials(n * tiles, out.dtype)
        steps = -(-rows * n // threads)
        self._run(
            key + "_tiled_bias_grad",
            *arrays,
            *scalars,
            rows * n,
            threads,
            steps,
            out,
            part,
            size=threads,
        )
        self._run("column_sums_of_tiles", part, tiles, n, bias_grad, size=32 * n)
        return out

    def _partials(self, size: int, dtype: Any) -> Array:
        """The scratch buffer of `size` partial sums of the tiled bias gradient, allocated at
        the first call for its size and kept: a captured graph writes to it on every replay,
        so it must outlive the graph, and nothing may be allocated while a stream captures
        (the eager warm-up before a capture makes it)."""
        key = (size, np.dtype(dtype).char)
        if key not in self._scratch:
            with self.device:
                self._scratch[key] = self.xp.empty(size, dtype=dtype)
        return self._scratch[key]

    def _act(self, key: str, z: Array, *args: Any, out: Array | None, bias: Array | None) -> Any:
        """Activation `key` of z, with its bias add fused in when a bias is given."""
        if bias is None:
            self._check(z)
            return self._run(key, z, *args, out=out)
        self._check(z, bias)
        if out is None:
            out = self.xp.empty_like(z)
        self._run(key + "_bias", bias, *args, z, out)
        return out

    # ------------------------------------------------------------------ transfer
    # CuPy's creation functions take no device= keyword (CuPy 14): arrays go to the current
    # device, which every public method has made this backend's (see `on_backend_device`).
    def _on_device(self, create: Any, *args: Any, **kwargs: Any) -> Array:
        return create(*args, **kwargs)

    def is_array(self, x: Any) -> bool:
        # cupy.ndarray has no __array_namespace__ (CuPy 14), so the base class's test fails
        return isinstance(x, self._ndarray)

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        return self.xp.asarray(x, dtype=None if dtype is None else self._resolve_dtype(dtype))

    def to_numpy(self, x: Array) -> np.ndarray:
        return self.xp.asnumpy(x)

    def take(self, x: Array, indices: Array, out: Array | None = None) -> Array:
        self._check(x, indices)
        return self.xp.take(x, indices, axis=0, out=out)

    # ------------------------------------------------------------------ linear algebra
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        self._check(a, b)
        if self._capture is not None:
            return self._gemm(a, b, out)
        return self.xp.matmul(a, b, out=out)

    # ------------------------------------------------------------------ elementwise
    # One kernel each, writing into `out` (the base class would allocate, then copy).
    def add(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self.xp.add(a, b, out=out)

    def subtract(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self.xp.subtract(a, b, out=out)

    def multiply(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self.xp.multiply(a, b, out=out)

    def divide(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self.xp.divide(a, b, out=out)

    # a Python scalar goes to the kernel as an argument (the base class would copy it to the
    # device first: a host -> device transfer, which a captured step must not make)
    def maximum(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self.xp.maximum(a, b, out=out)

    def minimum(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self.xp.minimum(a, b, out=out)

    def _biased(self, z: Array, bias: Array | None) -> Array:
        return z if bias is None else self.xp.add(z, bias, out=z)

    def scaled_difference(
        self,
        a: Array,
        b: Array,
        scale: float,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        return self._backward("scaled_difference", (a, b), scale, out=out, bias_grad=bias_grad)

    def tanh(self, x: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        return self._act("tanh", x, out=out, bias=bias)

    # ------------------------------------------------------------------ activations
    def sigmoid(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        return self._act("sigmoid", z, out=out, bias=bias)

    def sigmoid_backward(
        self, a: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        return self._backward("sigmoid_backward", (a, da), out=out, bias_grad=bias_grad)

    def tanh_backward(
        self, a: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        return self._backward("tanh_backward", (a, da), out=out, bias_grad=bias_grad)

    def relu(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        return self._act("relu", z, out=out, bias=bias)

    def relu_backward(
        self, a: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        return self._backward("relu_backward", (a, da), out=out, bias_grad=bias_grad)

    def leaky_relu(
        self, z: Array, alpha: float, out: Array | None = None, bias: Array | None = None
    ) -> Array:
        return self._act("leaky_relu", z, alpha, out=out, bias=bias)

    def leaky_relu_backward(
        self,
        z: Array,
        da: Array,
        alpha: float,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        return self._backward("leaky_relu_backward", (z, da), alpha, out=out, bias_grad=bias_grad)

    def elu(
        self, z: Array, alpha: float, out: Array | None = None, bias: Array | None = None
    ) -> Array:
        return self._act("elu", z, alpha, out=out, bias=bias)

    def elu_backward(
        self,
        z: Array,
        a: Array,
        da: Array,
        alpha: float,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        return self._backward("elu_backward", (z, a, da), alpha, out=out, bias_grad=bias_grad)

    def softplus(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        return self._act("softplus", z, out=out, bias=bias)

    def softplus_backward(
        self, z: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        return self._backward("softplus_backward", (z, da), out=out, bias_grad=bias_grad)

    def selu(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        return self._act("selu", z, out=out, bias=bias)

    def selu_backward(
        self,
        z: Array,
        a: Array,
        da: Array,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        return self._backward("selu_backward", (z, a, da), out=out, bias_grad=bias_grad)

    def batch_norm(
        self,
        x: Array,
        gamma: Array,
        beta: Array,
        moving_mean: Array,
        moving_var: Array,
        momentum: float,
        epsilon: float,
        out: Array | None = None,
        x_hat: Array | None = None,
        inv_std: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        # one kernel: statistics, normalization and the moving averages, a thread per column
        self._check(x, gamma, beta, moving_mean, moving_var)
        xp = self.xp
        out = xp.empty_like(x) if out is None else out
        x_hat = xp.empty_like(x) if x_hat is None else x_hat
        inv_std = xp.empty_like(gamma) if inv_std is None else inv_std
        rows, n = (int(d) for d in x.shape)
        self._run(
            "batch_norm",
            *(x, gamma, beta, momentum, epsilon, rows, n),
            *(out, x_hat, inv_std, moving_mean, moving_var),
            size=n,
        )
        return out, x_hat, inv_std

    def batch_norm_backward(
        self,
        da: Array,
        x_hat: Array,
        gamma: Array,
        inv_std: Array,
        out: Array | None = None,
        dgamma: Array | None = None,
        dbeta: Array | None = None,
    ) -> tuple[Array, Array, Array]:
        self._check(da, x_hat, gamma, inv_std)
        xp = self.xp
        out = xp.empty_like(da) if out is None else out
        dgamma = xp.empty_like(gamma) if dgamma is None else dgamma
        dbeta = xp.empty_like(gamma) if dbeta is None else dbeta
        rows, n = (int(d) for d in da.shape)
        self._run(
            "batch_norm_backward",
            *(da, x_hat, gamma, inv_std, rows, n, out, dgamma, dbeta),
            size=n,
        )
        return out, dgamma, dbeta

    def softmax(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        self._check(z)
        if out is None:
            out = self.xp.empty_like(z)
        n = int(z.shape[-1])
        rows = int(z.size) // n if n else 0
        if bias is None:
            self._run("softmax", z, n, out, size=rows)
        else:
            self._check(bias)
            self._run("softmax_bias", bias, n, z, out, size=rows)
        return out

    def dropout(
        self, x: Array, key: Array, rate: float, out: Array | None = None, mask: Array | None = None
    ) -> tuple[Array, Array]:
        self._check(x, key)
        if out is None:
            out = self.xp.empty_like(x)
        if mask is None:
            mask = self.xp.empty_like(x)
        dtype = np.dtype(self.dtype_name).type
        scale = dtype(1) / (dtype(1) - dtype(rate))  # in T, as the base class computes it
        self._run("dropout", x, key, rate, scale, out, mask)
        return out, mask

    # ------------------------------------------------------------------ reductions
    def sum(
        self,
        x: Array,
        axis: int | tuple[int, ...] | None = None,
        keepdims: bool = False,
        out: Array | None = None,
    ) -> Array:
        return self.xp.sum(x, axis=axis, keepdims=keepdims, out=out)

    # ------------------------------------------------------------------ optimizer updates
    def sgd_update(self, param: Array, grad: Array, lr: float) -> None:
        self._check(param, grad)
        self._run("sgd_update", grad, lr, param)

    def momentum_update(
        self,
        param: Array,
        grad: Array,
        velocity: Array,
        lr: float,
        momentum: float,
        nesterov: bool = False,
    ) -> None:
        self._check(param, grad, velocity)
        key = "nesterov_update" if nesterov else "momentum_update"
        self._run(key, grad, lr, momentum, param, velocity)

    def adagrad_update(
        self, param: Array, grad: Array, accumulator: Array, lr: float, epsilon: float
    ) -> None:
        self._check(param, grad, accumulator)
        self._run("adagrad_update", grad, lr, epsilon, param, accumulator)

    def rmsprop_update(
        self,
        param: Array,
        grad: Array,
        mean_square: Array,
        lr: float,
        rho: float,
        epsilon: float,
    ) -> None:
        self._check(param, grad, mean_square)
        self._run("rmsprop_update", grad, lr, rho, epsilon, param, mean_square)

    def adam_step(
        self,
        param: Array,
        grad: Array,
        m: Array,
        v: Array,
        step_size: float | Array,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        decay: float | Array = 0.0,
    ) -> None:
        self._check(param, grad, m, v)
        self._run("adam_step", grad, step_size, beta_1, beta_2, epsilon, decay, param, m, v)

    # ------------------------------------------------------------------ capture
    @property
    def capture_records(self) -> str | None:
        return "device"

    def capture(self, fn: Callable[[], None]) -> Replay:
        """fn as a CUDA graph: its first call runs eagerly (compiling kernels and filling a
        private memory pool), the second records fn on a capture stream and launches the
        graph, and every later call launches it again: one host launch for all of fn's
        kernels. Falls back to calling fn, with one warning saying why, where capture is
        unavailable (no nvmath-python) or fails."""
        return _GraphReplay(self, fn)

    def _gemm(self, a: Array, b: Array, out: Array | None) -> Array:
        """out = a @ b through nvmath's cuBLAS bindings, which can be captured.

        cuBLAS is column-major: a row-major matrix is, to it, its transpose. So the row-major
        product C = A B is issued as the column-major C^T = B^T A^T: B first. A transposed
        view (W.T: column-major memory) is passed as the matrix it views with op T."""
        blas, (handle, _, scalars) = self._blas, self._gemm_state
        m, k = (int(d) for d in a.shape)
        n = int(b.shape[1])
        if out is None:
            out = self.xp.empty((m, n), dtype=a.dtype)
        if not _row_major(out):
            raise ValueError("matmul during capture needs a row-major (C-ordered) out array")
        a, op_a, ld_a = self._operand(a)
        b, op_b, ld_b = self._operand(b)
        capture = self._capture
        assert capture is not None
        capture.keep.extend((a, b, out))  # the graph reads and writes these addresses
        one, zero = scalars[out.dtype.char]
        gemm = blas.sgemm if out.dtype.char == "f" else blas.dgemm
        gemm(
            handle, op_b, op_a, n, m, k,
            one.ctypes.data, b.data.ptr, ld_b, a.data.ptr, ld_a,
            zero.ctypes.data, out.data.ptr, int(out.strides[0]) // out.itemsize or n,
        )  # fmt: skip
        return out

    def _operand(self, x: Array) -> tuple[Array, int, int]:
        """(x, cuBLAS op, leading dimension) for a 2-D operand of the column-major call: a
        row-major x is op N (its rows are cuBLAS's columns), a column-major x op T; anything
        else is copied into row-major order first."""
        item = x.itemsize
        rows, cols = (int(d) for d in x.shape)
        if _row_major(x):
            return x, 0, max(int(x.strides[0]) // item, cols, 1)
        if x.strides[0] == item and x.strides[1] % item == 0:
            return x, 1, max(int(x.strides[1]) // item, rows, 1)
        return self.xp.ascontiguousarray(x), 0, max(cols, 1)

    def _prepare_capture(self) -> None:
        """The cuBLAS handle and workspace for captured GEMMs, made before any capture. The
        handle is destroyed when this backend is let go."""
        if self._gemm_state is not None:
            return
        if self._blas is None:
            self._blas = self._import_blas()
        with self.device:
            handle = self._blas.create()
            destroy = weakref.finalize(self, self._blas.destroy, handle)
            try:
                # a preallocated workspace: cuBLAS must not allocate while a stream is captured
                workspace = self.xp.empty(WORKSPACE_BYTES, dtype=self.xp.uint8)
            except BaseException:
                destroy()
                raise
        scalars = {
            c: (np.ones(1, dtype=c), np.zeros(1, dtype=c)) for c in ("f", "d")
        }  # alpha = 1 and beta = 0, read by cuBLAS from host memory when the GEMM is issued
        self._gemm_state = (handle, workspace, scalars)

    def _bind_blas(self, stream: Any) -> None:
        """Points the cuBLAS handle at `stream` with our workspace. cublasSetStream resets
        the handle's workspace to cuBLAS's own pool (which would allocate inside the capture),
        so the workspace is set after the stream, before every capture."""
        handle, workspace, _ = self._gemm_state
        self._blas.set_stream(handle, stream.ptr)
        self._blas.set_workspace(handle, workspace.data.ptr, WORKSPACE_BYTES)

    # ------------------------------------------------------------------ device
    def device_context(self) -> Any:
        return self.device  # cupy.cuda.Device: `with` makes it current, then restores

    def collective_stream(self) -> Any:
        return self.xp.cuda.get_current_stream()  # this device's (every method runs on it)

    def synchronize(self) -> None:
        self.device.synchronize()


WORKSPACE_BYTES = 32 << 20  # cuBLAS's recommended workspace on Hopper


def _row_major(x: Any) -> bool:
    return len(x.shape) == 2 and (x.strides[1] == x.itemsize or x.shape[1] == 1)


class _GraphReplay(Replay):
    """A function replayed as one CUDA graph (see CupyBackend.capture)."""

    records = True

    def __init__(self, be: CupyBackend, fn: Callable[[], None]) -> None:
        super().__init__(fn)
        self.be = be
        self.graph: Any = None
        self.calls = 0
        self.keep: list[Any] = []  # arrays the captured GEMMs use, alive as long as the graph
        cupy = be.xp
        # (made by be.capture, so on be's device) The graph writes where it was recorded
        # writing, so every temporary it uses comes from this pool, which nothing else
        # allocates from while the graph lives.
        self.pool = cupy.cuda.MemoryPool()
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _fall_back(self, reason: str) -> None:
        self.reason, self.mode, self.graph = reason, "eager", None
        warnings.warn(
            f"the training step runs eagerly, without a CUDA graph: {reason}",
            RuntimeWarning,
            stacklevel=3,
        )

    def __call__(self) -> None:
        self.launches += 1
        be, cupy = self.be, self.be.xp
        with be.device:  # the step's work, eager or recorded, on be's GPU
            if self.reason is not None:
                self.fn()
                return
            current = cupy.cuda.get_current_stream()
            if self.graph is not None:
                self.graph.launch(stream=current)
                return
            self.calls += 1
            # on the capture stream, after whatever the current stream has queued
            self.stream.wait_event(current.record())
            if self.calls == 1:  # warm-up: compile the kernels, fill the pool
                try:
                    be._prepare_capture()
                except Exception as exc:  # no nvmath-python, or a cuBLASError (an Exception)
                    why = str(exc) if type(exc) is RuntimeError else f"{type(exc).__name__}: {exc}"
                    self._fall_back(why)
                    self.fn()
                    return
                with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
                    self.fn()
                current.wait_event(self.stream.record())
                return
            try:
                graph = self._record()
            except Exception as exc:  # anything a capture forbids: run eagerly from now on
                self.keep.clear()
                self.pool.free_all_blocks()  # nothing refers to them now
                self._fall_back(f"capture failed ({type(exc).__name__}: {exc})")
                self.fn()
                return
            self.graph, self.mode = graph, "graph"
            self.graph.launch(stream=current)

    def _record(self) -> Any:
        """fn recorded on the capture stream as a graph. A MemoryError where the pool changed
        during the capture: when cudaMalloc fails, CuPy's pool frees all its free blocks,
        which nodes already recorded may point to (a relaxed capture allows it)."""
        be, cupy = self.be, self.be.xp
        total = self.pool.total_bytes()
        with cupy.cuda.using_allocator(self.pool.malloc), self.stream:
            be._bind_blas(self.stream)
            self.stream.begin_capture()
            be._capture = self  # only once capturing: a failed begin_capture leaves nothing
            try:
                self.fn()
            finally:
                be._capture = None
                graph = self.stream.end_capture()
        if self.pool.total_bytes() != total:
            raise MemoryError(
                f"the capture's memory pool changed while recording ({total} bytes before, "
                f"{self.pool.total_bytes()} after; low GPU memory): the graph may point to "
                "freed memory"
            )
        return graph


def standalone_source(spec: KernelSpec, ctype: str) -> str:
    """A self-contained CUDA source for `spec` with T = `ctype`, binding every parameter the
    way CuPy's ElementwiseKernel does (inputs as `const T`, outputs as `T &`, raw arrays as
    pointers indexed by the kernel, `i` the index), so NVRTC can check the operation compiles
    without a GPU or CuPy's code generator."""

    def params(text: str) -> list[tuple[bool, str, str]]:
        out = []
        for p in text.split(","):
            words = p.split()
            raw = words[0] == "raw"
            out.append((raw, words[-2], words[-1]))
        return out

    ins, outs = params(spec.in_params), params(spec.out_params)
    args = [f"const {t}* _in_{n}" for _, t, n in ins] + [f"{t}* _out_{n}" for _, t, n in outs]
    binds = [
        f"const {t}* {n} = _in_{n};" if raw else f"const {t} {n} = _in_{n}[_i];"
        for raw, t, n in ins
    ] + [f"{t}* {n} = _out_{n};" if raw else f"{t} &{n} = _out_{n}[_i];" for raw, t, n in outs]
    return (
        f"typedef {ctype} T;\ntypedef long long int64;\ntypedef unsigned int uint32;\n"
        f'extern "C" __global__ void {spec.name}({", ".join(args)}, long long _n) {{\n'
        "  for (long long _i = blockIdx.x * (long long)blockDim.x + threadIdx.x; _i < _n;\n"
        "       _i += (long long)blockDim.x * gridDim.x) {\n"
        "    const ptrdiff_t i = _i;\n"
        + "".join(f"    {b}\n" for b in binds)
        + f"    {spec.operation}\n  }}\n}}\n"
    )
