"""The array-backend interface, implemented once over any Array-API namespace.

`Backend` is already a complete, working backend: every method is written against `self.xp`
(an Array-API namespace) and `self.device`. Device classes (`NumpyBackend`, `CupyBackend`)
override only where they have something faster, such as `out=` arguments or fused kernels.

Conventions shared by every method:
- Arrays are batch-first: a batch has shape (batch, features).
- `out=None` means "allocate the result"; with `out` given, the result is written into it and
  `out` is returned. Backends that cannot write in place still honour the contract.
- Scalars (alphas, betas, epsilons) are Python floats. The values an optimizer update takes
  per step (learning rate, Adam's step size and decay) may also be 0-d device arrays, so a
  captured step reads them from device memory on every replay instead of freezing them.
- Activation forwards take an optional `bias` (a row, shape (units,)): z += bias in place
  first, so z keeps the pre-activations the backward pass needs, then a = f(z). One fused
  kernel on a GPU instead of two.
- Nothing here copies device data to the host except `to_numpy`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import types
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from .kernels import COLUMN_KERNELS, KERNELS, ArrayOps, uniform

Array = Any  # an array of this backend's namespace

_FLOAT_NAMES = ("float32", "float64")
_Class = TypeVar("_Class", bound=type)


def on_backend_device(backend: str | None = None) -> Callable[[_Class], _Class]:
    """A class decorator: every public method of the class (its own and those it inherits)
    runs inside `with <backend>.device_context():`, where <backend> is the instance itself
    (`backend=None`: for a backend class) or its attribute named `backend`.

    For namespaces that work on a *current* device (CuPy: new arrays, kernels and copies go
    to the current GPU, whatever their operands' device), this makes every method of a
    backend on GPU k, and every array expression a network writes with operators
    (`a - y`), run on GPU k. Private helpers run inside the public method that calls them.
    """

    def decorate(cls: _Class) -> _Class:
        for name in dir(cls):
            method = inspect.getattr_static(cls, name)
            if name.startswith("_") or name == "device_context":
                continue
            if isinstance(method, types.FunctionType):
                setattr(cls, name, _entering_device(method, backend))
        return cls

    return decorate


def _entering_device(method: Callable[..., Any], backend: str | None) -> Callable[..., Any]:
    @functools.wraps(method)
    def on_device(self: Any, *args: Any, **kwargs: Any) -> Any:
        be = self if backend is None else getattr(self, backend)
        with be.device_context():
            return method(self, *args, **kwargs)

    return on_device


class Backend:
    """A backend over the Array-API namespace `xp`, placing arrays on `device`.

    Parameters
    ----------
    xp : module
        An Array-API namespace (`numpy`, `cupy`, `array_api_strict`, ...).
    device : object, optional
        Where arrays live; `None` is the namespace's default device.
    dtype : {"float32", "float64"}
        The default floating dtype for new arrays (training uses float32; gradient checks
        use float64).
    """

    name = "array_api"
    #: Whether a training pass gathers the rows of a chunk of steps (up to 64 batches) at once
    #: into fixed buffers (True: one launch per chunk instead of one per step, for devices
    #: bound by host launches, and fixed addresses a recorded chunk can replay), or batch by
    #: batch (False: each batch's rows are gathered just before its step and are still in
    #: the CPU's cache for it).
    gather_chunks = False
    #: Where this backend's arrays live, which decides how a collective (an MPI all-reduce)
    #: reaches them: "host" (CPU memory MPI reads and writes directly), "cuda" (NVIDIA device
    #: memory: NCCL or a CUDA-aware MPI where present, else staged through the host) or
    #: "other" (copied to the host and back).
    memory = "other"

    def __init__(self, xp: Any, device: Any = None, dtype: Any = "float32") -> None:
        self.xp = xp
        self.device = device
        self.dtype = self._float_dtype(dtype)
        # what the table's references (backends/kernels.py) compute with: NumPy's ufuncs with
        # out=, over this namespace
        self._ops: Any = ArrayOps(xp)

    # ------------------------------------------------------------------ identity
    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device_name!r}, dtype={self.dtype_name})"

    @property
    def threads(self) -> int:
        """The CPU threads this backend's elementwise work uses: 1 here; the NumPy backend
        splits big jobs over several (a GPU parallelizes on its own)."""
        return 1

    @property
    def dtype_name(self) -> str:
        """The default dtype as a string, "float32" or "float64"."""
        for name in _FLOAT_NAMES:
            if self.dtype == getattr(self.xp, name):
                return name
        return str(self.dtype)

    @property
    def device_name(self) -> str:
        """A human-readable description of where this backend computes."""
        namespace = getattr(self.xp, "__name__", str(self.xp))
        return f"{namespace} on {self.device if self.device is not None else 'default device'}"

    def with_dtype(self, dtype: Any) -> Backend:
        """A backend like this one whose default dtype is `dtype`."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.dtype = self._float_dtype(dtype)
        return clone

    def _float_dtype(self, dtype: Any) -> Any:
        if dtype is None:
            return self.dtype
        for name in _FLOAT_NAMES:
            if dtype == name or dtype == getattr(self.xp, name) or dtype == np.dtype(name):
                return getattr(self.xp, name)
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")

    def _resolve_dtype(self, dtype: Any) -> Any:
        """None -> the default float dtype; a name or a NumPy dtype -> this namespace's dtype."""
        if dtype is None:
            return self.dtype
        if isinstance(dtype, str) or isinstance(dtype, np.dtype) or isinstance(dtype, type):
            name = np.dtype(dtype).name
            if hasattr(self.xp, name):
                return getattr(self.xp, name)
        return dtype

    # ------------------------------------------------------------------ transfer
    def is_array(self, x: Any) -> bool:
        """True when `x` is an array of this backend's namespace."""
        get_namespace = getattr(x, "__array_namespace__", None)
        return get_namespace is not None and get_namespace() is self.xp

    def check_array(self, x: Any, name: str = "x") -> Array:
        """`x` if it is an array of this backend, else a TypeError that says how to fix it."""
        if not self.is_array(x):
            raise TypeError(
                f"{name} must be an array of the {self.name} backend, got {type(x).__module__}."
                f"{type(x).__qualname__}; call backend.asarray({name}) on your data first"
            )
        return x

    def _on_device(self, create: Any, *args: Any, **kwargs: Any) -> Array:
        """create(*args, **kwargs) placing the new array on this backend's device (the
        Array-API way: a device= keyword; CuPy overrides this with its device context)."""
        return create(*args, device=self.device, **kwargs)

    def asarray(self, x: Any, dtype: Any = None) -> Array:
        """Copy host data (or adopt a backend array) onto this backend's device.

        `dtype=None` keeps the dtype of `x` (floats stay floats, integer labels stay integers).
        """
        dtype = None if dtype is None else self._resolve_dtype(dtype)
        if not self.is_array(x):
            x = np.asarray(x)
            if dtype is None:
                dtype = self._resolve_dtype(x.dtype)
        return self._on_device(self.xp.asarray, x, dtype=dtype)

    def to_numpy(self, x: Array) -> np.ndarray:
        """Copy a backend array to a host NumPy array: the only device -> host transfer."""
        try:
            return np.asarray(x)
        except (RuntimeError, TypeError, ValueError):
            return np.from_dlpack(x, device="cpu", copy=True)

    def zeros(self, shape: int | tuple[int, ...], dtype: Any = None) -> Array:
        return self._on_device(self.xp.zeros, shape, dtype=self._resolve_dtype(dtype))

    def empty(self, shape: int | tuple[int, ...], dtype: Any = None) -> Array:
        return self._on_device(self.xp.empty, shape, dtype=self._resolve_dtype(dtype))

    def zeros_like(self, x: Array) -> Array:
        return self.xp.zeros_like(x)

    def full(self, shape: int | tuple[int, ...], value: float, dtype: Any = None) -> Array:
        return self._on_device(self.xp.full, shape, value, dtype=self._resolve_dtype(dtype))

    def arange(self, n: int, dtype: Any = "int64") -> Array:
        return self._on_device(self.xp.arange, n, dtype=self._resolve_dtype(dtype))

    def astype(self, x: Array, dtype: Any) -> Array:
        return self.xp.astype(x, self._resolve_dtype(dtype))

    def copy(self, x: Array, out: Array | None = None) -> Array:
        """A copy of `x` (into `out` when given)."""
        if out is None:
            return self.xp.asarray(x, copy=True)
        out[...] = x
        return out

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array:
        """`x` with a new shape: a view where the namespace can give one."""
        return self.xp.reshape(x, shape)

    def take(self, x: Array, indices: Array, out: Array | None = None) -> Array:
        """Rows of `x` at `indices` (a gather along axis 0): x[indices]. Indices must lie in
        [0, len(x)); out-of-range indices are unspecified behaviour, as in the Array API."""
        return self._into(self.xp.take(x, indices, axis=0), out)

    def one_hot(self, labels: Array, num_classes: int, dtype: Any = None) -> Array:
        """(n,) integer labels -> (n, num_classes) one-hot rows in `dtype`."""
        classes = self.arange(num_classes, dtype=labels.dtype)
        return self.xp.astype(labels[:, None] == classes, self._resolve_dtype(dtype))

    @staticmethod
    def _into(result: Array, out: Array | None) -> Array:
        if out is None:
            return result
        out[...] = result
        return out

    def _biased(self, z: Array, bias: Array | None) -> Array:
        """z + bias written into z (the pre-activations with their bias), or z itself."""
        return z if bias is None else self._into(z + bias, z)

    def _elementwise(
        self, key: str, *args: Any, out: Array | None = None, bias: Array | None = None
    ) -> Array:
        """The table's job `key` (backends/kernels.py) on `args`, the inputs of its kernel in
        order (arrays of one shape, and scalars), into `out` (allocated when None). With
        `bias`, z = args[0] first gets z += bias, in place."""
        if bias is not None:
            args = (self._biased(args[0], bias), *args[1:])
        if out is None:
            out = self.xp.empty_like(args[0])
        KERNELS[key].reference(self._ops, *args, out)
        return out

    def _update(self, key: str, grad: Array, scalars: tuple[Any, ...], *state: Array) -> None:
        """The table's optimizer update `key`, in place on `state` (param first)."""
        KERNELS[key].reference(self._ops, grad, *scalars, *state)

    def _bias_grad(self, delta: Array, bias_grad: Array | None) -> Array:
        """Write the column sums of delta (the bias gradient) into `bias_grad` when given;
        return delta. A backend with a fused kernel does both in one pass instead."""
        if bias_grad is not None:
            self.sum(delta, axis=0, out=bias_grad)
        return delta

    # ------------------------------------------------------------------ linear algebra
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        """a @ b for 2-D arrays; transposed views (`W.T`) are used as they are, never copied."""
        return self._into(self.xp.matmul(a, b), out)

    # ------------------------------------------------------------------ elementwise
    def add(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self._into(a + b, out)

    def subtract(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self._into(a - b, out)

    def multiply(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self._into(a * b, out)

    def divide(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return self._into(a / b, out)

    def scaled_difference(
        self,
        a: Array,
        b: Array,
        scale: float,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        """(a - b) * scale: the output delta of softmax + cross-entropy, (a - y) / batch.
        With `bias_grad`, its column sums (the output layer's db) are written there too."""
        return self._bias_grad(
            self._elementwise("scaled_difference", a, b, scale, out=out), bias_grad
        )

    def exp(self, x: Array, out: Array | None = None) -> Array:
        return self._into(self.xp.exp(x), out)

    def log(self, x: Array, out: Array | None = None) -> Array:
        return self._into(self.xp.log(x), out)

    def tanh(self, x: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        return self._elementwise("tanh", x, out=out, bias=bias)

    def sqrt(self, x: Array, out: Array | None = None) -> Array:
        return self._into(self.xp.sqrt(x), out)

    def square(self, x: Array, out: Array | None = None) -> Array:
        return self._into(x * x, out)

    def abs(self, x: Array, out: Array | None = None) -> Array:
        return self._into(self.xp.abs(x), out)

    def sign(self, x: Array, out: Array | None = None) -> Array:
        """-1, 0 or 1 by each element's sign (0 for 0): L1's gradient."""
        return self._into(self.xp.sign(x), out)

    def maximum(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        if not self.is_array(b):
            b = self._on_device(self.xp.asarray, b, dtype=a.dtype)
        return self._into(self.xp.maximum(a, b), out)

    def minimum(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        if not self.is_array(b):
            b = self._on_device(self.xp.asarray, b, dtype=a.dtype)
        return self._into(self.xp.minimum(a, b), out)

    def where(self, condition: Array, a: Array | float, b: Array | float) -> Array:
        return self.xp.where(condition, a, b)

    def clip(self, x: Array, lo: float, hi: float, out: Array | None = None) -> Array:
        return self._into(self.xp.clip(x, lo, hi), out)

    def all_finite(self, x: Array) -> Array:
        """A 0-d boolean device array: are all entries of `x` finite? (No host round trip.)"""
        return self.xp.all(self.xp.isfinite(x))

    # ------------------------------------------------------------------ activations
    # Each pair: forward a = f(z), and backward delta = da * f'(z), computed from whatever the
    # forward pass kept (for sigmoid and tanh, the output a). A forward takes the layer's
    # `bias` (z += b first, z keeping the sum); a backward takes `bias_grad`, into which it
    # writes the column sums of delta (the layer's db): one kernel each on a GPU.
    # The formulas are the table's (backends/kernels.py): one entry per job, beside its CUDA.
    def sigmoid(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        """a = 1 / (1 + exp(-z)), from exp(-|z|) so that it never overflows."""
        return self._elementwise("sigmoid", z, out=out, bias=bias)

    def sigmoid_backward(
        self, a: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        """delta = da * a * (1 - a), with a = sigmoid(z)."""
        return self._bias_grad(self._elementwise("sigmoid_backward", a, da, out=out), bias_grad)

    def tanh_backward(
        self, a: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        """delta = da * (1 - a^2), with a = tanh(z)."""
        return self._bias_grad(self._elementwise("tanh_backward", a, da, out=out), bias_grad)

    def relu(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        """a = max(z, 0)."""
        return self._elementwise("relu", z, out=out, bias=bias)

    def relu_backward(
        self, a: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        """delta = da where a > 0 else 0 (a > 0 exactly when z > 0)."""
        return self._bias_grad(self._elementwise("relu_backward", a, da, out=out), bias_grad)

    def leaky_relu(
        self, z: Array, alpha: float, out: Array | None = None, bias: Array | None = None
    ) -> Array:
        """a = z where z > 0 else alpha * z."""
        return self._elementwise("leaky_relu", z, alpha, out=out, bias=bias)

    def leaky_relu_backward(
        self,
        z: Array,
        da: Array,
        alpha: float,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        """delta = da where z > 0 else alpha * da."""
        delta = self._elementwise("leaky_relu_backward", z, da, alpha, out=out)
        return self._bias_grad(delta, bias_grad)

    def elu(
        self, z: Array, alpha: float, out: Array | None = None, bias: Array | None = None
    ) -> Array:
        """a = z where z > 0 else alpha * (exp(z) - 1)."""
        return self._elementwise("elu", z, alpha, out=out, bias=bias)

    def elu_backward(
        self,
        z: Array,
        a: Array,
        da: Array,
        alpha: float,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        """delta = da where z > 0 else da * (a + alpha), as d/dz alpha (e^z - 1) = a + alpha."""
        delta = self._elementwise("elu_backward", z, a, da, alpha, out=out)
        return self._bias_grad(delta, bias_grad)

    def selu(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        """a = scale * z where z > 0 else scale * alpha * (exp(z) - 1) (SELU's constants)."""
        return self._elementwise("selu", z, out=out, bias=bias)

    def selu_backward(
        self,
        z: Array,
        a: Array,
        da: Array,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        """delta = scale * da where z > 0 else da * (a + scale * alpha)."""
        return self._bias_grad(self._elementwise("selu_backward", z, a, da, out=out), bias_grad)

    # ------------------------------------------------------------------ batch normalization
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
        """Batch normalization of x (rows, n) with its batch statistics, as in training:
        x_hat = (x - mean) / sqrt(var + epsilon) over the rows (the biased variance),
        out = gamma * x_hat + beta, inv_std = 1 / sqrt(var + epsilon) (n,); the moving
        statistics (n,) become momentum * moving + (1 - momentum) * batch's, in place.
        Returns (out, x_hat, inv_std)."""
        xp = self.xp
        out = xp.empty_like(x) if out is None else out
        x_hat = xp.empty_like(x) if x_hat is None else x_hat
        inv_std = xp.empty_like(gamma) if inv_std is None else inv_std
        COLUMN_KERNELS["batch_norm"].reference(
            xp, x, gamma, beta, momentum, epsilon, out, x_hat, inv_std, moving_mean, moving_var
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
        """From da = dC/d(out) of batch_norm: dC/dx (rows, n) into `out`, and dgamma =
        sum(da * x_hat), dbeta = sum(da) over the rows (n,). Returns (out, dgamma, dbeta)."""
        xp = self.xp
        out = xp.empty_like(da) if out is None else out
        dgamma = xp.empty_like(gamma) if dgamma is None else dgamma
        dbeta = xp.empty_like(gamma) if dbeta is None else dbeta
        COLUMN_KERNELS["batch_norm_backward"].reference(
            xp, da, x_hat, gamma, inv_std, out, dgamma, dbeta
        )
        return out, dgamma, dbeta

    def softplus(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        """a = log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|)), which never overflows."""
        return self._elementwise("softplus", z, out=out, bias=bias)

    def softplus_backward(
        self, z: Array, da: Array, out: Array | None = None, bias_grad: Array | None = None
    ) -> Array:
        """delta = da * sigmoid(z)."""
        return self._bias_grad(self._elementwise("softplus_backward", z, da, out=out), bias_grad)

    def softmax(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        """Softmax along the last axis, shifted by the row maximum so exp never overflows."""
        xp, z = self.xp, self._biased(z, bias)
        e = xp.exp(z - xp.max(z, axis=-1, keepdims=True))
        return self._into(e / xp.sum(e, axis=-1, keepdims=True), out)

    def log_softmax(self, z: Array, out: Array | None = None) -> Array:
        """log(softmax(z)) along the last axis: z - max - log(sum(exp(z - max)))."""
        xp = self.xp
        shifted = z - xp.max(z, axis=-1, keepdims=True)
        return self._into(shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True)), out)

    def softmax_backward(self, a: Array, da: Array, out: Array | None = None) -> Array:
        """The softmax Jacobian-vector product: delta = a * (da - sum(da * a, axis=-1))."""
        xp = self.xp
        return self._into(a * (da - xp.sum(da * a, axis=-1, keepdims=True)), out)

    def maxout(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        """(..., k) pieces -> (...) their maximum over the last axis; `bias` has z's shape
        past the batch axis (units, k)."""
        z = self._biased(z, bias)
        return self._into(self.xp.max(z, axis=-1), out)

    def maxout_backward(self, z: Array, da: Array, out: Array | None = None) -> Array:
        """Route da (...) to the winning piece of z (..., k); ties go to the first winner."""
        xp = self.xp
        k = z.shape[-1]
        winner = xp.argmax(z, axis=-1, keepdims=True)
        pieces = self.arange(k, dtype=winner.dtype)
        return self._into(xp.where(winner == pieces, da[..., None], xp.zeros_like(z)), out)

    # ------------------------------------------------------------------ random numbers
    # Counter-based (see backends/kernels.py): a hash of (element index, seed, counter), with
    # key = [seed, counter] a (2,) uint32 device array, the same bits on every backend.
    def random_uniform(self, key: Array, shape: tuple[int, ...]) -> Array:
        """Uniform numbers in [0, 1) of this backend's dtype, element k (in C order) being
        mix(k + mix(counter + mix(seed))) >> 8, times 2^-24, for key = [seed, counter]."""
        index = self.arange(math.prod(shape), dtype="uint32")
        return self.xp.reshape(uniform(self.xp, key, index, self.dtype), shape)

    def dropout(
        self, x: Array, key: Array, rate: float, out: Array | None = None, mask: Array | None = None
    ) -> tuple[Array, Array]:
        """Inverted dropout: mask = 1 / (1 - rate) where random_uniform(key) >= rate, else 0
        (into `mask`), and x * mask (into `out`). Returns (out, mask)."""
        xp = self.xp
        one = xp.asarray(1.0, dtype=self.dtype, device=self.device)
        scale = one / (one - xp.asarray(rate, dtype=self.dtype, device=self.device))
        out = xp.empty_like(x) if out is None else out
        mask = xp.empty_like(x) if mask is None else mask
        KERNELS["dropout"].reference(self._ops, x, key, rate, scale, out, mask)
        return out, mask

    # ------------------------------------------------------------------ reductions
    def sum(
        self,
        x: Array,
        axis: int | tuple[int, ...] | None = None,
        keepdims: bool = False,
        out: Array | None = None,
    ) -> Array:
        return self._into(self.xp.sum(x, axis=axis, keepdims=keepdims), out)

    def mean(
        self, x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> Array:
        return self.xp.mean(x, axis=axis, keepdims=keepdims)

    def max(
        self, x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> Array:
        return self.xp.max(x, axis=axis, keepdims=keepdims)

    def argmax(
        self, x: Array, axis: int | None = None, keepdims: bool = False, out: Array | None = None
    ) -> Array:
        """Indices of the maxima (int64; the first one on ties)."""
        return self._into(self.xp.argmax(x, axis=axis, keepdims=keepdims), out)

    # ------------------------------------------------------------------ optimizer updates
    # In place on `param` and the optimizer's state arrays; `grad` is left as it is. The
    # formulas are the table's (backends/kernels.py).
    def sgd_update(self, param: Array, grad: Array, lr: float) -> None:
        """param -= lr * grad."""
        self._update("sgd_update", grad, (lr,), param)

    def momentum_update(
        self,
        param: Array,
        grad: Array,
        velocity: Array,
        lr: float,
        momentum: float,
        nesterov: bool = False,
    ) -> None:
        """velocity = momentum * velocity - lr * grad; param += velocity
        (Nesterov: param += momentum * velocity - lr * grad, with the new velocity)."""
        key = "nesterov_update" if nesterov else "momentum_update"
        self._update(key, grad, (lr, momentum), param, velocity)

    def adagrad_update(
        self, param: Array, grad: Array, accumulator: Array, lr: float, epsilon: float
    ) -> None:
        """accumulator += grad^2; param -= lr * grad / (sqrt(accumulator) + epsilon)."""
        self._update("adagrad_update", grad, (lr, epsilon), param, accumulator)

    def rmsprop_update(
        self,
        param: Array,
        grad: Array,
        mean_square: Array,
        lr: float,
        rho: float,
        epsilon: float,
    ) -> None:
        """mean_square = rho * mean_square + (1 - rho) * grad^2;
        param -= lr * grad / sqrt(mean_square + epsilon) (Keras's form: epsilon inside)."""
        self._update("rmsprop_update", grad, (lr, rho, epsilon), param, mean_square)

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
        """Adam (AdamW when weight_decay > 0), step t = `step` >= 1:

        param -= lr * weight_decay * param              (decoupled decay, AdamW)
        m = beta_1 m + (1 - beta_1) g;   v = beta_2 v + (1 - beta_2) g^2
        param -= lr_t * m / (sqrt(v) + epsilon),  lr_t = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)

        The host computes lr_t; `adam_step` does the arithmetic.
        """
        step_size = adam_step_size(lr, beta_1, beta_2, step)
        self.adam_step(param, grad, m, v, step_size, beta_1, beta_2, epsilon, lr * weight_decay)

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
        """One Adam update given this step's values (floats or 0-d device arrays):
        step_size = lr_t (bias-corrected) and decay = lr * weight_decay.

        param -= decay * param;  m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2;
        param -= step_size * m / (sqrt(v) + epsilon)
        """
        scalars = (step_size, beta_1, beta_2, epsilon, decay)
        self._update("adam_step", grad, scalars, param, m, v)

    # ------------------------------------------------------------------ capture
    @property
    def capture_records(self) -> str | None:
        """What `capture` records: None (nothing: fn runs eagerly on every call), "device"
        (what fn does on the device, whoever issues it: a CUDA graph), or "calls" (the
        backend calls fn makes, replayed as a list: right only where all of fn's array work
        goes through the backend's methods; see backends/tape.py)."""
        return None

    def capture(self, fn: Callable[[], None]) -> Replay:
        """A replayable form of `fn`, a function of no arguments that only issues this
        backend's operations on arrays it keeps (a training step, or a whole epoch of them).

        Calling the result does what calling `fn` does. A device backend may record fn once
        and replay the recording (CuPy: a CUDA graph), so fn must not read device values on
        the host, allocate outside what it allocated on its first call, or take per-call
        values other than from device arrays. Here: fn itself, run eagerly every call.
        """
        return Replay(fn)

    # ------------------------------------------------------------------ device
    def device_context(self) -> Any:
        """A context manager in which this backend's device is the current one, for array
        expressions written with operators (`a - y`) on its arrays. Nothing to enter here:
        an Array-API namespace places results with their operands; CuPy places them on the
        current device (see CupyBackend)."""
        return contextlib.nullcontext()

    def collective_stream(self) -> Any:
        """The stream a collective (an NCCL all-reduce) on this backend's arrays is queued
        on, so it runs after the kernels issued so far; None where work is not queued on
        streams (host backends)."""
        return None

    def synchronize(self) -> None:
        """Wait until all queued work on the device has finished (a no-op on the CPU)."""


class Replay:
    """What `Backend.capture` returns: call it to run the captured function once more.

    `mode` says how: "eager" (the function is called), "graph" (a recorded device graph is
    replayed), "tape" (a recorded list of backend calls is replayed). `reason` says why a
    backend that can capture did not (None otherwise)."""

    mode = "eager"
    #: whether calls may be recorded and replayed (False: every call runs fn eagerly)
    records = False

    def __init__(self, fn: Callable[[], None], reason: str | None = None) -> None:
        self.fn, self.reason = fn, reason
        self.launches = 0  # calls so far

    def __call__(self) -> None:
        self.launches += 1
        self.fn()


def adam_step_size(lr: float, beta_1: float, beta_2: float, step: int) -> float:
    """Adam's bias-corrected step size lr * sqrt(1 - beta_2^t) / (1 - beta_1^t), on the host."""
    if step < 1:
        raise ValueError(f"step must be >= 1 (the first update is step 1), got {step}")
    return lr * math.sqrt(1.0 - beta_2**step) / (1.0 - beta_1**step)
