"""The elementwise jobs, one table entry each: the formula's NumPy reference and its CUDA text
side by side.

`KERNELS[key]` holds one job (an activation, its backward, the output delta, dropout, an
optimizer's update) as

- `reference(xp, *ins, *outs, tmp=None)`: the formula against NumPy's ufunc vocabulary with
  `out=` (`xp` is `numpy` itself, or `ArrayOps` over any Array-API namespace), taking the
  arguments the CUDA kernel takes, in its order, and writing the outputs in place. `tmp` is a
  scratch array of the kind `scratch` names, shaped like the outputs, or None to allocate one.
  Outputs may not overlap inputs, except the read-write state an update keeps (param, m, v).
- `cuda`: the same formula as the text of a CuPy ElementwiseKernel (`T` is float or double).

Every backend derives from the one entry: `Backend` (base.py) calls the reference over
`ArrayOps(xp)`; `NumpyBackend` calls it with NumPy on row ranges (or blocks) on its threads,
with its own scratch arrays; `CupyBackend` compiles the CUDA text, with the bias add or the
bias gradient fused in (`fuse`); backends/emulated_cupy.py interprets the CUDA text on NumPy.
tests/test_backend_conformance.py holds each CUDA text equal to its reference, and
tests/test_cuda_kernels.py compiles each with NVRTC.

The two texts agree to rounding, not always bit for bit: where C's association order would
cost NumPy a second temporary, the reference keeps the in-place order (AdaGrad's
`lr * grad / x` is computed `grad / x * lr`; Nesterov's `param += momentum * velocity - lr *
grad` as `param -= lr * grad; param += momentum * velocity`; sigmoid's backward
`da * a * (1 - a)` as `(1 - a) * a * da`).

One NumPy-only variant is not derived from the table: NumpyBackend.sigmoid computes
1 / (1 + exp(-z)), four passes in place (the bias added, then three) where the table's
exp(-|z|) form takes seven and a mask, equal to it within rounding (softplus_backward, which
needs the sigmoid inside a larger formula, uses the table's form).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np


class KernelSpec(NamedTuple):
    """A CuPy ElementwiseKernel, as data: compiled on first use on a GPU, checked by NVRTC here.

    Parameters marked `raw` are indexed by the kernel itself; a kernel whose arrays are all
    raw runs once per row (the caller passes size=rows) and `i` is the row."""

    in_params: str
    out_params: str
    operation: str
    name: str


class Kernel(NamedTuple):
    """One elementwise job: its NumPy reference and its CUDA kernel (see the module doc)."""

    reference: Callable[..., None]
    cuda: KernelSpec
    #: the names of the CUDA kernel's inputs that are arrays (the others are scalars)
    arrays: tuple[str, ...]
    #: the scratch array `reference` takes as `tmp`: "float" (the outputs' dtype), "bool", None
    scratch: str | None = None
    #: what CuPy fuses into a variant of the kernel: "bias" (a forward: z += b first),
    #: "bias_grad" (a backward: the column sums of its result too), or None
    fuse: str | None = None


class ArrayOps:
    """NumPy's ufunc vocabulary, `out=` included, over an Array-API namespace `xp` that has no
    `out=` (its arrays are written with `out[...] = result`): what the references are written
    against, so one formula runs on NumPy in place and on any namespace."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def __getattr__(self, name: str) -> Any:
        return getattr(self.xp, name)  # what has no out= (arange, astype, dtypes) as it is

    def _array(self, value: Any, like: Any) -> Any:
        if hasattr(value, "__array_namespace__"):
            return value
        return self.xp.asarray(value, dtype=like.dtype, device=like.device)

    def _float(self, value: Any, like: Any) -> Any:
        """A boolean array as `like`'s dtype (NumPy's 0/1 in arithmetic), else `value`."""
        if getattr(value, "dtype", None) == self.xp.bool and hasattr(like, "dtype"):
            return self.xp.astype(value, like.dtype)
        return value

    @staticmethod
    def _put(result: Any, out: Any) -> Any:
        if out is None:
            return result
        out[...] = result
        return out

    def add(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(a + b, out)

    def subtract(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(a - b, out)

    def multiply(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(self._float(a, b) * self._float(b, a), out)

    def divide(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(a / b, out)

    def negative(self, a: Any, out: Any = None) -> Any:
        return self._put(-a, out)

    def abs(self, a: Any, out: Any = None) -> Any:
        return self._put(self.xp.abs(a), out)

    def exp(self, a: Any, out: Any = None) -> Any:
        return self._put(self.xp.exp(a), out)

    def expm1(self, a: Any, out: Any = None) -> Any:
        return self._put(self.xp.expm1(a), out)

    def log1p(self, a: Any, out: Any = None) -> Any:
        return self._put(self.xp.log1p(a), out)

    def sqrt(self, a: Any, out: Any = None) -> Any:
        return self._put(self.xp.sqrt(a), out)

    def tanh(self, a: Any, out: Any = None) -> Any:
        return self._put(self.xp.tanh(a), out)

    def maximum(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(self.xp.maximum(a, self._array(b, a)), out)

    def minimum(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(self.xp.minimum(a, self._array(b, a)), out)

    def greater(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(a > b, out)

    def less(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(a < b, out)

    def greater_equal(self, a: Any, b: Any, out: Any = None) -> Any:
        return self._put(a >= b, out)

    def copyto(self, dst: Any, src: Any, where: Any) -> None:
        """dst = src where `where` holds (numpy.copyto's `where=`)."""
        dst[...] = self.xp.where(where, self._array(src, dst), dst)


def _is_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == 0


# --------------------------------------------------------------------------- activations
# A forward a = f(z); a backward delta = da * f'(z) from what the forward pass kept (for
# sigmoid and tanh, the output a).
def _sigmoid(xp: Any, z: Any, a: Any, tmp: Any = None) -> None:
    # a = 1 / (1 + e) where z >= 0 else e / (1 + e), e = exp(-|z|): never overflows
    negative = xp.less(z, 0.0)
    e = xp.abs(z, out=tmp)
    xp.negative(e, out=e)
    xp.exp(e, out=e)
    xp.add(e, 1.0, out=a)
    xp.divide(1.0, a, out=a)  # r = 1 / (1 + e)
    xp.multiply(e, a, out=e)
    xp.copyto(a, e, where=negative)  # e * r where z < 0


def _sigmoid_backward(xp: Any, a: Any, da: Any, delta: Any, tmp: Any = None) -> None:
    xp.subtract(1.0, a, out=delta)  # delta = da * a * (1 - a)
    xp.multiply(delta, a, out=delta)
    xp.multiply(delta, da, out=delta)


def _tanh(xp: Any, z: Any, a: Any, tmp: Any = None) -> None:
    xp.tanh(z, out=a)


def _tanh_backward(xp: Any, a: Any, da: Any, delta: Any, tmp: Any = None) -> None:
    xp.multiply(a, a, out=delta)  # delta = da * (1 - a^2)
    xp.subtract(1.0, delta, out=delta)
    xp.multiply(delta, da, out=delta)


def _relu(xp: Any, z: Any, a: Any, tmp: Any = None) -> None:
    xp.maximum(z, 0.0, out=a)  # a = z where z > 0 else 0 (for every z but NaN)


def _relu_backward(xp: Any, a: Any, da: Any, delta: Any, tmp: Any = None) -> None:
    # delta = da where a > 0 else 0 (a > 0 exactly when z > 0), as da * (a > 0): a
    # comparison into a boolean scratch and one multiply, many times faster on NumPy than a
    # masked copy (and equal for every finite da)
    xp.multiply(da, xp.greater(a, 0.0, out=tmp), out=delta)


def _leaky_relu(xp: Any, z: Any, alpha: float, a: Any, tmp: Any = None) -> None:
    # a = z where z > 0 else alpha z, which is max(z, alpha z) for alpha <= 1 and
    # min(z, alpha z) for alpha >= 1: two passes, no mask
    xp.multiply(z, alpha, out=a)
    (xp.maximum if alpha <= 1.0 else xp.minimum)(z, a, out=a)


def _leaky_relu_backward(
    xp: Any, z: Any, da: Any, alpha: float, delta: Any, tmp: Any = None
) -> None:
    xp.multiply(da, alpha, out=delta)  # delta = da where z > 0 else alpha da
    xp.copyto(delta, da, where=xp.greater(z, 0.0, out=tmp))


def _elu(xp: Any, z: Any, alpha: float, a: Any, tmp: Any = None) -> None:
    # a = z where z > 0 else alpha (e^z - 1), as max(z, 0) + alpha expm1(min(z, 0)): one of
    # the two terms is 0 (exactly), and expm1 never sees the positive side, where it could
    # overflow
    t = xp.minimum(z, 0.0, out=tmp)
    xp.expm1(t, out=t)
    xp.multiply(t, alpha, out=t)
    xp.maximum(z, 0.0, out=a)
    xp.add(a, t, out=a)


def _elu_backward(
    xp: Any, z: Any, a: Any, da: Any, alpha: float, delta: Any, tmp: Any = None
) -> None:
    # delta = da where z > 0 else da (a + alpha), as d/dz alpha (e^z - 1) = a + alpha
    xp.add(a, alpha, out=delta)
    xp.multiply(delta, da, out=delta)
    xp.copyto(delta, da, where=xp.greater(z, 0.0, out=tmp))


def _softplus(xp: Any, z: Any, a: Any, tmp: Any = None) -> None:
    # a = log(1 + e^z) = max(z, 0) + log1p(exp(-|z|)), which never overflows
    t = xp.abs(z, out=tmp)
    xp.negative(t, out=t)
    xp.exp(t, out=t)
    xp.log1p(t, out=t)
    xp.maximum(z, 0.0, out=a)
    xp.add(a, t, out=a)


def _softplus_backward(xp: Any, z: Any, da: Any, delta: Any, tmp: Any = None) -> None:
    _sigmoid(xp, z, delta, tmp)  # delta = da * sigmoid(z)
    xp.multiply(delta, da, out=delta)


# SELU (Klambauer et al., 2017): scale * elu(z, alpha) with the constants that make a layer
# of lecun_normal weights keep zero mean and unit variance
SELU_ALPHA = 1.6732632423543772
SELU_SCALE = 1.0507009873554805


def _selu(xp: Any, z: Any, a: Any, tmp: Any = None) -> None:
    # a = scale z where z > 0 else scale alpha (e^z - 1), computed as elu's two terms
    t = xp.minimum(z, 0.0, out=tmp)
    xp.expm1(t, out=t)
    xp.multiply(t, SELU_SCALE * SELU_ALPHA, out=t)
    xp.maximum(z, 0.0, out=a)
    xp.multiply(a, SELU_SCALE, out=a)
    xp.add(a, t, out=a)


def _selu_backward(xp: Any, z: Any, a: Any, da: Any, delta: Any, tmp: Any = None) -> None:
    # delta = scale da where z > 0 else da (a + scale alpha): d/dz scale alpha (e^z - 1) is
    # a + scale alpha
    xp.add(a, SELU_SCALE * SELU_ALPHA, out=delta)
    xp.multiply(delta, da, out=delta)
    t = xp.multiply(da, SELU_SCALE, out=tmp)
    xp.copyto(delta, t, where=xp.greater(z, 0.0))


def _scaled_difference(xp: Any, a: Any, b: Any, scale: Any, out: Any, tmp: Any = None) -> None:
    # out = (a - b) * scale: the output delta of softmax + cross-entropy, (a - y) / batch
    xp.subtract(a, b, out=out)
    xp.multiply(out, scale, out=out)


# --------------------------------------------------------------------------- dropout
# Counter-based random numbers: uniform numbers are a hash of (element index, seed, counter),
# with the seed and the counter in a (2,) uint32 device array `key`, so no host generator is
# read per step (a captured GPU step stays capturable) and every backend draws the same bits.
_MIX = (2146121005, 2221713035)  # lowbias32's multipliers, 0x7feb352d and 0x846ca68b


def mix32(x: Any) -> Any:
    """A 32-bit integer hash (lowbias32: xorshift-multiply, twice), on uint32 arrays; the
    products wrap modulo 2^32, as intended."""
    with np.errstate(over="ignore"):  # NumPy's 0-d uint32 products warn when they wrap
        x = x ^ (x >> 16)
        x = x * _MIX[0]
        x = x ^ (x >> 15)
        x = x * _MIX[1]
        return x ^ (x >> 16)


def uniform(xp: Any, key: Any, index: Any, dtype: Any) -> Any:
    """Uniform numbers in [0, 1) of `dtype`, one per uint32 `index` k: mix(k + mix(counter +
    mix(seed))) >> 8, times 2^-24, for key = [seed, counter]."""
    with np.errstate(over="ignore"):  # the sums wrap modulo 2^32 too
        bits = mix32(index + mix32(key[1] + mix32(key[0]))) >> 8
    return xp.astype(bits, dtype) * (2.0**-24)


def _dropout(
    xp: Any, x: Any, key: Any, rate: float, scale: Any, a: Any, mask: Any, tmp: Any = None
) -> None:
    # inverted dropout: u = uniform(key) of each element's C-order index; mask = scale where
    # u >= rate else 0 (scale = 1 / (1 - rate) in T); a = x * mask. The index is the whole
    # array's, so this job runs whole, never on row ranges.
    size = math.prod(x.shape)
    index = xp.reshape(xp.arange(size, dtype=xp.uint32, device=x.device), tuple(x.shape))
    u = uniform(xp, key, index, x.dtype)
    xp.multiply(xp.greater_equal(u, rate, out=tmp), scale, out=mask)
    xp.multiply(x, mask, out=a)


# --------------------------------------------------------------------------- optimizers
# In place on `param` and the state arrays (the CUDA kernels' read-write outputs); `grad`
# is left as it is. `tmp` holds one temporary, like `grad`.
def _sgd(xp: Any, grad: Any, lr: Any, param: Any, tmp: Any = None) -> None:
    t = xp.multiply(grad, lr, out=tmp)
    param -= t  # param -= lr grad


def _momentum(
    xp: Any, grad: Any, lr: Any, momentum: float, param: Any, velocity: Any, tmp: Any = None
) -> None:
    t = xp.multiply(grad, lr, out=tmp)
    velocity *= momentum
    velocity -= t  # velocity = momentum velocity - lr grad
    param += velocity


def _nesterov(
    xp: Any, grad: Any, lr: Any, momentum: float, param: Any, velocity: Any, tmp: Any = None
) -> None:
    t = xp.multiply(grad, lr, out=tmp)
    velocity *= momentum
    velocity -= t  # velocity = momentum velocity - lr grad
    param -= t
    xp.multiply(velocity, momentum, out=t)
    param += t  # param += momentum velocity - lr grad


def _adagrad(
    xp: Any, grad: Any, lr: Any, epsilon: float, param: Any, accumulator: Any, tmp: Any = None
) -> None:
    t = xp.multiply(grad, grad, out=tmp)
    accumulator += t  # accumulator += grad^2
    _scaled_step(xp, grad, accumulator, lr, epsilon, param, t)


def _scaled_step(
    xp: Any, grad: Any, second: Any, lr: Any, epsilon: float, param: Any, t: Any
) -> None:
    """param -= lr grad / (sqrt(second) + epsilon), with t as the temporary (AdaGrad's last
    step)."""
    xp.sqrt(second, out=t)
    xp.add(t, epsilon, out=t)
    xp.divide(grad, t, out=t)
    xp.multiply(t, lr, out=t)
    param -= t


def _rmsprop(
    xp: Any,
    grad: Any,
    lr: Any,
    rho: float,
    epsilon: float,
    param: Any,
    mean_square: Any,
    tmp: Any = None,
) -> None:
    t = xp.multiply(grad, grad, out=tmp)
    xp.multiply(t, 1.0 - rho, out=t)
    mean_square *= rho
    mean_square += t  # mean_square = rho mean_square + (1 - rho) grad^2
    # Keras's form: epsilon inside the square root, param -= lr grad / sqrt(ms + epsilon)
    xp.add(mean_square, epsilon, out=t)
    xp.sqrt(t, out=t)
    xp.divide(grad, t, out=t)
    xp.multiply(t, lr, out=t)
    param -= t


def _adam(
    xp: Any,
    grad: Any,
    step_size: Any,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    decay: Any,
    param: Any,
    m: Any,
    v: Any,
    tmp: Any = None,
) -> None:
    if not _is_zero(decay):  # (a host 0.0 is plain Adam: param - 0 param is param)
        tmp = xp.multiply(param, decay, out=tmp)
        param -= tmp  # param -= decay param
    t = xp.multiply(grad, 1.0 - beta_1, out=tmp)
    m *= beta_1
    m += t  # m = beta_1 m + (1 - beta_1) grad
    xp.multiply(grad, grad, out=t)
    xp.multiply(t, 1.0 - beta_2, out=t)
    v *= beta_2
    v += t  # v = beta_2 v + (1 - beta_2) grad^2
    xp.sqrt(v, out=t)
    xp.add(t, epsilon, out=t)
    xp.divide(m, t, out=t)
    xp.multiply(t, step_size, out=t)
    param -= t  # param -= step_size m / (sqrt(v) + epsilon)


# --------------------------------------------------------------------------- the table
# `T` is float or double in the CUDA text; CUDA's math functions are overloaded for both.
# The sigmoid, written once for the two kernels that use it: r = 1 / (1 + exp(-|z|)) and
# sigmoid(z) = r where z >= 0 else e r.
_SIGMOID_CUDA = "T e = exp(-fabs(z)); T r = T(1) / (T(1) + e);"

KERNELS: dict[str, Kernel] = {
    "sigmoid": Kernel(
        _sigmoid,
        KernelSpec("T z", "T a", _SIGMOID_CUDA + " a = z >= T(0) ? r : e * r;", "bp_sigmoid"),
        ("z",),
        "float",
        "bias",
    ),
    "sigmoid_backward": Kernel(
        _sigmoid_backward,
        KernelSpec("T a, T da", "T delta", "delta = da * a * (T(1) - a);", "bp_sigmoid_backward"),
        ("a", "da"),
        fuse="bias_grad",
    ),
    "tanh": Kernel(_tanh, KernelSpec("T z", "T a", "a = tanh(z);", "bp_tanh"), ("z",), fuse="bias"),
    "tanh_backward": Kernel(
        _tanh_backward,
        KernelSpec("T a, T da", "T delta", "delta = da * (T(1) - a * a);", "bp_tanh_backward"),
        ("a", "da"),
        fuse="bias_grad",
    ),
    "relu": Kernel(
        _relu, KernelSpec("T z", "T a", "a = z > T(0) ? z : T(0);", "bp_relu"), ("z",), fuse="bias"
    ),
    "relu_backward": Kernel(
        _relu_backward,
        KernelSpec("T a, T da", "T delta", "delta = a > T(0) ? da : T(0);", "bp_relu_backward"),
        ("a", "da"),
        "bool",
        "bias_grad",
    ),
    "leaky_relu": Kernel(
        _leaky_relu,
        KernelSpec("T z, T alpha", "T a", "a = z > T(0) ? z : alpha * z;", "bp_leaky_relu"),
        ("z",),
        fuse="bias",
    ),
    "leaky_relu_backward": Kernel(
        _leaky_relu_backward,
        KernelSpec(
            "T z, T da, T alpha",
            "T delta",
            "delta = z > T(0) ? da : alpha * da;",
            "bp_leaky_relu_backward",
        ),
        ("z", "da"),
        "bool",
        "bias_grad",
    ),
    "elu": Kernel(
        _elu,
        KernelSpec("T z, T alpha", "T a", "a = z > T(0) ? z : alpha * expm1(z);", "bp_elu"),
        ("z",),
        "float",
        "bias",
    ),
    "elu_backward": Kernel(
        _elu_backward,
        KernelSpec(
            "T z, T a, T da, T alpha",
            "T delta",
            "delta = z > T(0) ? da : da * (a + alpha);",
            "bp_elu_backward",
        ),
        ("z", "a", "da"),
        "bool",
        "bias_grad",
    ),
    "softplus": Kernel(
        _softplus,
        KernelSpec(
            "T z", "T a", "a = (z > T(0) ? z : T(0)) + log1p(exp(-fabs(z)));", "bp_softplus"
        ),
        ("z",),
        "float",
        "bias",
    ),
    "softplus_backward": Kernel(
        _softplus_backward,
        KernelSpec(
            "T z, T da",
            "T delta",
            _SIGMOID_CUDA + " delta = da * (z >= T(0) ? r : e * r);",
            "bp_softplus_backward",
        ),
        ("z", "da"),
        "float",
        "bias_grad",
    ),
    "selu": Kernel(
        _selu,
        KernelSpec(
            "T z",
            "T a",
            f"a = z > T(0) ? T({SELU_SCALE!r}) * z : T({SELU_SCALE * SELU_ALPHA!r}) * expm1(z);",
            "bp_selu",
        ),
        ("z",),
        "float",
        "bias",
    ),
    "selu_backward": Kernel(
        _selu_backward,
        KernelSpec(
            "T z, T a, T da",
            "T delta",
            f"delta = z > T(0) ? T({SELU_SCALE!r}) * da"
            f" : da * (a + T({SELU_SCALE * SELU_ALPHA!r}));",
            "bp_selu_backward",
        ),
        ("z", "a", "da"),
        "float",
        "bias_grad",
    ),
    "scaled_difference": Kernel(
        _scaled_difference,
        KernelSpec("T a, T b, T scale", "T out", "out = (a - b) * scale;", "bp_scaled_difference"),
        ("a", "b"),
        fuse="bias_grad",
    ),
    "dropout": Kernel(
        _dropout,
        KernelSpec(
            "T x, raw uint32 key, T rate, T scale",
            "T a, T mask",
            "typedef unsigned int U;"
            + "".join(
                f" U {v}1 = {src} ^ ({src} >> 16); U {v}2 = {v}1 * U({_MIX[0]});"
                f" U {v}3 = {v}2 ^ ({v}2 >> 15); U {v}4 = {v}3 * U({_MIX[1]});"
                f" U {v} = {v}4 ^ ({v}4 >> 16);"
                for v, src in (("s", "key[0]"), ("c", "(key[1] + s)"), ("h", "(U(i) + c)"))
            )
            + " T u = T(h >> 8) * T(5.9604644775390625e-08);"
            " mask = u >= rate ? scale : T(0); a = x * mask;",
            "bp_dropout",
        ),
        ("x",),
        "bool",
    ),
    # Optimizer updates, in place: `param` and the state arrays are read-write outputs.
    "sgd_update": Kernel(
        _sgd,
        KernelSpec("T grad, T lr", "T param", "param -= lr * grad;", "bp_sgd"),
        ("grad",),
        "float",
    ),
    "momentum_update": Kernel(
        _momentum,
        KernelSpec(
            "T grad, T lr, T momentum",
            "T param, T velocity",
            "velocity = momentum * velocity - lr * grad; param += velocity;",
            "bp_momentum",
        ),
        ("grad",),
        "float",
    ),
    "nesterov_update": Kernel(
        _nesterov,
        KernelSpec(
            "T grad, T lr, T momentum",
            "T param, T velocity",
            "velocity = momentum * velocity - lr * grad; param += momentum * velocity - lr * grad;",
            "bp_nesterov",
        ),
        ("grad",),
        "float",
    ),
    "adagrad_update": Kernel(
        _adagrad,
        KernelSpec(
            "T grad, T lr, T epsilon",
            "T param, T accumulator",
            "accumulator += grad * grad; param -= lr * grad / (sqrt(accumulator) + epsilon);",
            "bp_adagrad",
        ),
        ("grad",),
        "float",
    ),
    "rmsprop_update": Kernel(
        _rmsprop,
        KernelSpec(
            "T grad, T lr, T rho, T epsilon",
            "T param, T mean_square",
            "mean_square = rho * mean_square + (T(1) - rho) * grad * grad;"
            " param -= lr * grad / sqrt(mean_square + epsilon);",
            "bp_rmsprop",
        ),
        ("grad",),
        "float",
    ),
    "adam_step": Kernel(
        _adam,
        KernelSpec(
            "T grad, T step_size, T beta_1, T beta_2, T epsilon, T decay",
            "T param, T m, T v",
            "param -= decay * param;"
            " m = beta_1 * m + (T(1) - beta_1) * grad;"
            " v = beta_2 * v + (T(1) - beta_2) * grad * grad;"
            " param -= step_size * m / (sqrt(v) + epsilon);",
            "bp_adam",
        ),
        ("grad",),
        "float",
    ),
}


# --------------------------------------------------------------------------- column jobs
# Batch normalization reduces over the batch axis, so it is not elementwise: each job is one
# CUDA kernel of one thread per column (feature) that loops over the rows, beside its
# reference written against any Array-API namespace `xp` (plain operators, outputs written
# with `out[...] =`). x, y, x_hat, da, delta are (rows, n); the others (n,).


class ColumnKernel(NamedTuple):
    """One column job: its reference and its CUDA kernel (raw arrays, size=n threads)."""

    reference: Callable[..., None]
    cuda: KernelSpec


def _batch_norm(
    xp: Any,
    x: Any,
    gamma: Any,
    beta: Any,
    momentum: float,
    epsilon: float,
    y: Any,
    x_hat: Any,
    inv_std: Any,
    moving_mean: Any,
    moving_var: Any,
) -> None:
    # the batch's mean and (biased) variance per column, as Keras normalizes with and
    # averages into its moving statistics
    rows = x.shape[0]
    mean = xp.sum(x, axis=0) / rows
    d = x - mean
    var = xp.sum(d * d, axis=0) / rows
    s = 1.0 / xp.sqrt(var + epsilon)
    x_hat[...] = d * s
    y[...] = gamma * x_hat + beta
    inv_std[...] = s
    moving_mean[...] = momentum * moving_mean + (1.0 - momentum) * mean
    moving_var[...] = momentum * moving_var + (1.0 - momentum) * var


def _batch_norm_backward(
    xp: Any,
    da: Any,
    x_hat: Any,
    gamma: Any,
    inv_std: Any,
    delta: Any,
    dgamma: Any,
    dbeta: Any,
) -> None:
    # y = gamma x_hat + beta, x_hat = (x - mean) s: dbeta = sum da, dgamma = sum da x_hat,
    # dx = gamma s / N (N da - dbeta - x_hat dgamma) (the mean and variance depend on x too)
    rows = da.shape[0]
    dbeta[...] = xp.sum(da, axis=0)
    dgamma[...] = xp.sum(da * x_hat, axis=0)
    delta[...] = (gamma * inv_std / rows) * (rows * da - dbeta - x_hat * dgamma)


COLUMN_KERNELS: dict[str, ColumnKernel] = {
    "batch_norm": ColumnKernel(
        _batch_norm,
        KernelSpec(
            "raw T x, raw T gamma, raw T beta, T momentum, T epsilon, int64 rows, int64 n",
            "raw T y, raw T x_hat, raw T inv_std, raw T moving_mean, raw T moving_var",
            "T mean = T(0);"
            " for (ptrdiff_t r = 0; r < rows; ++r) { mean += x[r * n + i]; }"
            " mean = mean / T(rows);"
            " T var = T(0);"
            " for (ptrdiff_t r = 0; r < rows; ++r) { T d = x[r * n + i] - mean; var += d * d; }"
            " var = var / T(rows);"
            " T s = T(1) / sqrt(var + epsilon);"
            " for (ptrdiff_t r = 0; r < rows; ++r) {"
            " T h = (x[r * n + i] - mean) * s; x_hat[r * n + i] = h;"
            " y[r * n + i] = gamma[i] * h + beta[i]; }"
            " inv_std[i] = s;"
            " moving_mean[i] = momentum * moving_mean[i] + (T(1) - momentum) * mean;"
            " moving_var[i] = momentum * moving_var[i] + (T(1) - momentum) * var;",
            "bp_batch_norm",
        ),
    ),
    "batch_norm_backward": ColumnKernel(
        _batch_norm_backward,
        KernelSpec(
            "raw T da, raw T x_hat, raw T gamma, raw T inv_std, int64 rows, int64 n",
            "raw T delta, raw T dgamma, raw T dbeta",
            "T sb = T(0); T sg = T(0);"
            " for (ptrdiff_t r = 0; r < rows; ++r) {"
            " T g = da[r * n + i]; sb += g; sg += g * x_hat[r * n + i]; }"
            " T k = gamma[i] * inv_std[i] / T(rows);"
            " for (ptrdiff_t r = 0; r < rows; ++r) {"
            " delta[r * n + i] = k * (T(rows) * da[r * n + i] - sb - x_hat[r * n + i] * sg); }"
            " dgamma[i] = sg; dbeta[i] = sb;",
            "bp_batch_norm_backward",
        ),
    ),
}
