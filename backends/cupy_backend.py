"""The CuPy backend: the base class's math on an NVIDIA GPU, with fused elementwise kernels.

CuPy is imported when a `CupyBackend` is constructed, never when this module is imported, so
`import backends` works on machines without CuPy. Each CUDA kernel below sits next to the NumPy
expression it must equal; the conformance tests check that equality on a GPU, and
`tests/test_cuda_kernels.py` compiles every kernel with NVRTC where no GPU exists.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .base import Array, Backend, adam_step_size


class KernelSpec(NamedTuple):
    """A CuPy ElementwiseKernel, as data: compiled on first use on a GPU, checked by NVRTC here."""

    in_params: str
    out_params: str
    operation: str
    name: str


# Activations. `T` is float or double; CUDA's math functions are overloaded for both.
KERNELS: dict[str, KernelSpec] = {
    # a = 1 / (1 + exp(-z)), computed from exp(-|z|) so it never overflows
    "sigmoid": KernelSpec(
        "T z",
        "T a",
        "T e = exp(-fabs(z)); T r = T(1) / (T(1) + e); a = z >= T(0) ? r : e * r;",
        "bp_sigmoid",
    ),
    # delta = da * a * (1 - a)
    "sigmoid_backward": KernelSpec(
        "T a, T da", "T delta", "delta = da * a * (T(1) - a);", "bp_sigmoid_backward"
    ),
    # delta = da * (1 - a * a)
    "tanh_backward": KernelSpec(
        "T a, T da", "T delta", "delta = da * (T(1) - a * a);", "bp_tanh_backward"
    ),
    # a = np.maximum(z, 0)
    "relu": KernelSpec("T z", "T a", "a = z > T(0) ? z : T(0);", "bp_relu"),
    # delta = np.where(a > 0, da, 0)
    "relu_backward": KernelSpec(
        "T a, T da", "T delta", "delta = a > T(0) ? da : T(0);", "bp_relu_backward"
    ),
    # a = np.where(z > 0, z, alpha * z)
    "leaky_relu": KernelSpec(
        "T z, T alpha", "T a", "a = z > T(0) ? z : alpha * z;", "bp_leaky_relu"
    ),
    # delta = np.where(z > 0, da, alpha * da)
    "leaky_relu_backward": KernelSpec(
        "T z, T da, T alpha",
        "T delta",
        "delta = z > T(0) ? da : alpha * da;",
        "bp_leaky_relu_backward",
    ),
    # a = np.where(z > 0, z, alpha * np.expm1(z))
    "elu": KernelSpec("T z, T alpha", "T a", "a = z > T(0) ? z : alpha * expm1(z);", "bp_elu"),
    # delta = np.where(z > 0, da, da * (a + alpha))
    "elu_backward": KernelSpec(
        "T z, T a, T da, T alpha",
        "T delta",
        "delta = z > T(0) ? da : da * (a + alpha);",
        "bp_elu_backward",
    ),
    # a = np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))
    "softplus": KernelSpec(
        "T z", "T a", "a = (z > T(0) ? z : T(0)) + log1p(exp(-fabs(z)));", "bp_softplus"
    ),
    # delta = da * sigmoid(z)
    "softplus_backward": KernelSpec(
        "T z, T da",
        "T delta",
        "T e = exp(-fabs(z)); T r = T(1) / (T(1) + e); delta = da * (z >= T(0) ? r : e * r);",
        "bp_softplus_backward",
    ),
    # Optimizer updates, in place: `param` and the state arrays are read-write outputs.
    # param -= lr * grad
    "sgd_update": KernelSpec("T grad, T lr", "T param", "param -= lr * grad;", "bp_sgd"),
    # velocity = momentum * velocity - lr * grad; param += velocity
    "momentum_update": KernelSpec(
        "T grad, T lr, T momentum",
        "T param, T velocity",
        "velocity = momentum * velocity - lr * grad; param += velocity;",
        "bp_momentum",
    ),
    # velocity = momentum * velocity - lr * grad; param += momentum * velocity - lr * grad
    "nesterov_update": KernelSpec(
        "T grad, T lr, T momentum",
        "T param, T velocity",
        "velocity = momentum * velocity - lr * grad; param += momentum * velocity - lr * grad;",
        "bp_nesterov",
    ),
    # accumulator += grad**2; param -= lr * grad / (np.sqrt(accumulator) + epsilon)
    "adagrad_update": KernelSpec(
        "T grad, T lr, T epsilon",
        "T param, T accumulator",
        "accumulator += grad * grad; param -= lr * grad / (sqrt(accumulator) + epsilon);",
        "bp_adagrad",
    ),
    # ms = rho * ms + (1 - rho) * grad**2; param -= lr * grad / (np.sqrt(ms) + epsilon)
    "rmsprop_update": KernelSpec(
        "T grad, T lr, T rho, T epsilon",
        "T param, T mean_square",
        "mean_square = rho * mean_square + (T(1) - rho) * grad * grad;"
        " param -= lr * grad / (sqrt(mean_square) + epsilon);",
        "bp_rmsprop",
    ),
    # param *= 1 - decay; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g**2;
    # param -= lr_t * m / (np.sqrt(v) + epsilon)
    "adam_update": KernelSpec(
        "T grad, T lr_t, T beta_1, T beta_2, T epsilon, T decay",
        "T param, T m, T v",
        "param -= decay * param;"
        " m = beta_1 * m + (T(1) - beta_1) * grad;"
        " v = beta_2 * v + (T(1) - beta_2) * grad * grad;"
        " param -= lr_t * m / (sqrt(v) + epsilon);",
        "bp_adam",
    ),
}


def import_cupy() -> Any:
    """Import CuPy and check that a CUDA device is usable, or raise a clear RuntimeError."""
    try:
        import cupy
    except ImportError as exc:
        raise RuntimeError(
            "the 'cupy' backend needs CuPy, which is not installed: "
            "pip install 'xpbackprop[cuda12]' (CUDA 12) or 'xpbackprop[cuda13]' (CUDA 13)"
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


class CupyBackend(Backend):
    """Computes on an NVIDIA GPU with CuPy: cuBLAS for matmul, fused kernels elsewhere."""

    name = "cupy"

    def __init__(self, dtype: Any = "float32", device: int = 0) -> None:
        cupy = import_cupy()
        super().__init__(cupy, device=cupy.cuda.Device(device), dtype=dtype)
        self._ndarray = cupy.ndarray
        self._kernels = {key: cupy.ElementwiseKernel(*spec) for key, spec in KERNELS.items()}

    @property
    def device_name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.device.id)
        name = props["name"]
        return f"GPU {self.device.id}: {name.decode() if isinstance(name, bytes) else name}"

    def _check(self, *arrays: Any) -> None:
        for x in arrays:
            if not isinstance(x, self._ndarray):
                self.check_array(x, "array")

    def _run(self, key: str, *args: Any, out: Array | None = None) -> Any:
        if out is not None:
            args = (*args, out)
        with self.device:
            return self._kernels[key](*args)

    # ------------------------------------------------------------------ transfer
    # CuPy's creation functions take no device= keyword (CuPy 14): arrays go to the current
    # device, so every creation runs inside this backend's device context.
    def _on_device(self, create: Any, *args: Any, **kwargs: Any) -> Array:
        with self.device:
            return create(*args, **kwargs)

    def is_array(self, x: Any) -> bool:
        # cupy.ndarray has no __array_namespace__ (CuPy 14), so the base class's test fails
        return isinstance(x, self._ndarray)

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        with self.device:
            return self.xp.asarray(x, dtype=None if dtype is None else self._resolve_dtype(dtype))

    def to_numpy(self, x: Array) -> np.ndarray:
        return self.xp.asnumpy(x)

    def take(self, x: Array, indices: Array, out: Array | None = None) -> Array:
        self._check(x, indices)
        return self.xp.take(x, indices, axis=0, out=out)

    # ------------------------------------------------------------------ linear algebra
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        self._check(a, b)
        return self.xp.matmul(a, b, out=out)

    # ------------------------------------------------------------------ activations
    def sigmoid(self, z: Array, out: Array | None = None) -> Array:
        self._check(z)
        return self._run("sigmoid", z, out=out)

    def sigmoid_backward(self, a: Array, da: Array, out: Array | None = None) -> Array:
        self._check(a, da)
        return self._run("sigmoid_backward", a, da, out=out)

    def tanh_backward(self, a: Array, da: Array, out: Array | None = None) -> Array:
        self._check(a, da)
        return self._run("tanh_backward", a, da, out=out)

    def relu(self, z: Array, out: Array | None = None) -> Array:
        self._check(z)
        return self._run("relu", z, out=out)

    def relu_backward(self, a: Array, da: Array, out: Array | None = None) -> Array:
        self._check(a, da)
        return self._run("relu_backward", a, da, out=out)

    def leaky_relu(self, z: Array, alpha: float, out: Array | None = None) -> Array:
        self._check(z)
        return self._run("leaky_relu", z, alpha, out=out)

    def leaky_relu_backward(
        self, z: Array, da: Array, alpha: float, out: Array | None = None
    ) -> Array:
        self._check(z, da)
        return self._run("leaky_relu_backward", z, da, alpha, out=out)

    def elu(self, z: Array, alpha: float, out: Array | None = None) -> Array:
        self._check(z)
        return self._run("elu", z, alpha, out=out)

    def elu_backward(
        self, z: Array, a: Array, da: Array, alpha: float, out: Array | None = None
    ) -> Array:
        self._check(z, a, da)
        return self._run("elu_backward", z, a, da, alpha, out=out)

    def softplus(self, z: Array, out: Array | None = None) -> Array:
        self._check(z)
        return self._run("softplus", z, out=out)

    def softplus_backward(self, z: Array, da: Array, out: Array | None = None) -> Array:
        self._check(z, da)
        return self._run("softplus_backward", z, da, out=out)

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

    def adam_update(
        self,
        param: Array,
        grad: Array,
        m: Array,
        v: Array,
        lr: float,
        beta_1: float,
        beta_2: float,
        epsilon: float,
        step: int,
        weight_decay: float = 0.0,
    ) -> None:
        self._check(param, grad, m, v)
        lr_t = adam_step_size(lr, beta_1, beta_2, step)
        self._run(
            "adam_update", grad, lr_t, beta_1, beta_2, epsilon, lr * weight_decay, param, m, v
        )

    # ------------------------------------------------------------------ device
    def synchronize(self) -> None:
        self.device.synchronize()


def standalone_source(spec: KernelSpec, ctype: str) -> str:
    """A self-contained CUDA source for `spec` with T = `ctype`, binding every parameter the
    way CuPy's ElementwiseKernel does (inputs as `const T`, outputs as `T &`), so NVRTC can
    check the operation compiles without a GPU or CuPy's code generator."""

    def names(params: str) -> list[str]:
        return [p.split()[-1] for p in params.split(",")]

    ins, outs = names(spec.in_params), names(spec.out_params)
    args = [f"const T* _in_{n}" for n in ins] + [f"T* _out_{n}" for n in outs]
    binds = [f"const T {n} = _in_{n}[_i];" for n in ins] + [f"T &{n} = _out_{n}[_i];" for n in outs]
    return (
        f"typedef {ctype} T;\n"
        f'extern "C" __global__ void {spec.name}({", ".join(args)}, long long _n) {{\n'
        "  for (long long _i = blockIdx.x * (long long)blockDim.x + threadIdx.x; _i < _n;\n"
        "       _i += (long long)blockDim.x * gridDim.x) {\n"
        + "".join(f"    {b}\n" for b in binds)
        + f"    {spec.operation}\n  }}\n}}\n"
    )
