"""The NumPy backend: the base class's math, with `out=` and in-place work to avoid temporaries."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from .base import Array, Backend, Replay
from .kernels import KERNELS
from .tape import SCHEDULES, TapeReplay, schedule

# Elements per block of an optimizer update (1 MiB of float32 per array). An update makes a
# few in-place passes over a parameter, its gradient, its state and one temporary; over a
# whole model of millions of parameters those arrays push the weights the next step's GEMMs
# need out of the last-level cache. Block by block, the passes reuse one block-sized
# temporary and a block's arrays stay cached between passes. (784-1024-1024-10 at batch 32:
# 1.51x the GEMM floor against 1.79x unblocked, median of 4 paired rounds.)
UPDATE_BLOCK = 1 << 18
# Elements above which an elementwise job (an activation, its backward, a gather, an
# optimizer update) is split over the backend's threads. NumPy releases the GIL inside its
# loops, so row ranges of one job run on several cores at once. Below these sizes a split
# lost, measured on two cores: during training BLAS's own threads still spin on the cores
# after each GEMM, and the hand-off then costs more than the second core gives (784-500-500-10
# and 784-1024-1024-10, batch 128: 3% slower per epoch with the update split; batch 1024: 1%
# slower with the activations split). Standalone big jobs gain 1.7-1.8x on two cores. Both
# can be set with $BACKPROP_PARALLEL_MIN (elements), to measure a many-core machine, and the
# update's alone with $BACKPROP_UPDATE_PARALLEL_MIN (or NumpyBackend(update_split_min=...)).
PARALLEL_MIN = 1 << 20
UPDATE_PARALLEL_MIN = 1 << 21


def _parallel_min(default: int, name: str = "BACKPROP_PARALLEL_MIN") -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _flag(name: str, value: bool | None, env: str, default: bool) -> bool:
    """`value`, else $env ("0" or "1"), else `default`."""
    if value is None:
        text = os.environ.get(env, "").strip()
        if text not in ("", "0", "1"):
            raise ValueError(f"${env} must be 0 or 1, got {text!r}")
        return default if not text else text == "1"
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _choice(name: str, value: str | None, env: str, choices: tuple[str, ...]) -> str:
    """`value`, else $env, else choices[0]: one of `choices`, or a ValueError naming it."""
    where = name
    if value is None:
        value, where = os.environ.get(env, "").strip() or choices[0], f"${env}"
    if value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def default_threads() -> int:
    """The threads a NumPy backend uses for elementwise work: $BACKPROP_NUM_THREADS, else
    the cores this process may run on, shared among the MPI ranks started on this machine
    (as their launchers report them)."""
    value = os.environ.get("BACKPROP_NUM_THREADS", "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"BACKPROP_NUM_THREADS must be an integer >= 1, got {value!r}")
        return int(value)
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:  # pragma: no cover - macOS, Windows
        cores = os.cpu_count() or 1
    ranks = 1
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"):
        if os.environ.get(name, "").isdigit():
            ranks = max(1, int(os.environ[name]))
            break
    return max(1, cores // ranks)


class NumpyBackend(Backend):
    """Computes on the CPU with NumPy (and the BLAS NumPy was built with).

    `threads` (default: `default_threads()`) run the elementwise jobs of big arrays in
    parallel, row ranges of one job at a time; BLAS keeps its own threads for the GEMMs.

    The rest are switches for measuring where a CPU step's time goes (each also an
    environment variable, read when the backend is made; the defaults are today's choices):

    record : bool
        Whether `capture` records a function's backend calls once and replays them
        (backends/tape.py), so a captured training step runs no layer, optimizer or trainer
        Python ($BACKPROP_CPU_CAPTURE=0/1; default on).
    update_split_min : int
        Elements above which an optimizer update is split over the threads
        ($BACKPROP_UPDATE_PARALLEL_MIN; default UPDATE_PARALLEL_MIN).
    update_schedule : {"end", "early", "overlap"}
        Where a recorded step's optimizer update runs: "end", after the backward pass, as
        written; "early", each layer's part right after the last call touching that layer's
        parameters or gradients (while they are still in cache); "overlap", those parts on a
        second thread while the rest of the backward pass runs ($BACKPROP_UPDATE_SCHEDULE).
    blas_yield : bool
        Limit BLAS to one thread during each optimizer update (threadpoolctl), so that its
        threads stop competing for the cores with the update's ($BACKPROP_BLAS_YIELD=0/1;
        default off).
    """

    name = "numpy"
    memory = "host"

    def __init__(
        self,
        dtype: Any = "float32",
        threads: int | None = None,
        *,
        record: bool | None = None,
        update_split_min: int | None = None,
        update_schedule: str | None = None,
        blas_yield: bool | None = None,
    ) -> None:
        super().__init__(np, device="cpu", dtype=dtype)
        self._ops = np  # the table's references run on NumPy's own ufuncs, with out=
        # Scratch arrays for the in-place optimizer updates, keyed by (shape, dtype): one
        # temporary per parameter shape, reused every step instead of allocated.
        self._scratch: dict[tuple[Any, ...], np.ndarray] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._update_pool: ThreadPoolExecutor | None = None  # "overlap"'s second thread
        self.threads = default_threads() if threads is None else threads
        self._min_split = _parallel_min(PARALLEL_MIN)
        default_min = _parallel_min(UPDATE_PARALLEL_MIN)
        if update_split_min is None:
            update_split_min = _parallel_min(default_min, "BACKPROP_UPDATE_PARALLEL_MIN")
        if isinstance(update_split_min, bool) or not isinstance(update_split_min, int):
            raise ValueError(f"update_split_min must be an integer >= 0, got {update_split_min!r}")
        if update_split_min < 0:
            raise ValueError(f"update_split_min must be an integer >= 0, got {update_split_min!r}")
        self._min_update_split = update_split_min
        self.update_schedule = _choice(
            "update_schedule", update_schedule, "BACKPROP_UPDATE_SCHEDULE", SCHEDULES
        )
        self.record = _flag("record", record, "BACKPROP_CPU_CAPTURE", True)
        self.blas_yield = _flag("blas_yield", blas_yield, "BACKPROP_BLAS_YIELD", False)
        self._blas: list[Any] = _blas_controllers() if self.blas_yield else []

    @property
    def capture_records(self) -> str | None:
        return "calls" if self.record else None

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"threads must be an integer >= 1, got {value!r}")
        self._threads = value
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    # ------------------------------------------------------------------ parallel work
    def _parts(self, n: int, size: int, minimum: int | None = None) -> list[slice] | None:
        """Ranges of n rows for the threads, or None to do the job in the caller (a job of
        at most `minimum` elements, by default the elementwise jobs' threshold, or one
        thread)."""
        minimum = self._min_split if minimum is None else minimum
        if self._threads < 2 or size <= minimum or n < 2:
            return None
        k = min(self._threads, n)
        bounds = [n * i // k for i in range(k + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(k)]

    def _each(self, job: Callable[[int, slice], None], n: int, size: int) -> None:
        """job(part, rows) over the row ranges of a job of n rows (size elements): part 0 in
        the caller, the others on the pool, all done on return."""
        self._run(job, self._parts(n, size))

    def _run(self, job: Callable[[int, slice], None], parts: list[slice] | None) -> None:
        if parts is None:
            job(0, slice(None))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._threads - 1, thread_name_prefix="backprop")
        futures = [self._pool.submit(job, i, rows) for i, rows in enumerate(parts[1:], 1)]
        job(0, parts[0])
        for future in futures:
            future.result()

    def _apply(self, kernel: Callable[..., Any], rowwise: tuple[Any, ...], *shared: Any) -> None:
        """kernel(*rowwise, *shared): directly for a small job (no closure, no hand-off: the
        small networks' steps pay nothing), else over row ranges of the `rowwise` arrays
        (split along their first axis) on the threads; `shared` arguments go whole."""
        x = rowwise[0]
        if self._threads < 2 or x.size <= self._min_split:
            kernel(*rowwise, *shared)
            return
        self._each(lambda _, rows: kernel(*(a[rows] for a in rowwise), *shared), x.shape[0], x.size)

    @property
    def device_name(self) -> str:
        return f"CPU (NumPy {np.__version__})"

    def _tmp(self, like: np.ndarray, slot: int = 0) -> np.ndarray:
        key = (like.shape, like.dtype, slot)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty_like(like)
        return buf

    # ------------------------------------------------------------------ transfer
    def asarray(self, x: Any, dtype: Any = None) -> Array:
        return np.asarray(x, dtype=None if dtype is None else self._resolve_dtype(dtype))

    def to_numpy(self, x: Array) -> np.ndarray:
        return np.asarray(x)

    def copy(self, x: Array, out: Array | None = None) -> Array:
        if out is None:
            return x.copy()
        np.copyto(out, x)
        return out

    def take(self, x: Array, indices: Array, out: Array | None = None) -> Array:
        # mode="clip": with the default mode="raise", NumPy buffers `out` (about 2x slower);
        # indices out of range are unspecified behaviour in the interface, as in the Array API
        if out is None or indices.ndim != 1:
            return x.take(indices, axis=0, out=out, mode="clip")
        self._apply(_gather, (out, indices), x)
        return out

    # ------------------------------------------------------------------ linear algebra
    def matmul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        return np.matmul(a, b, out=out)

    # ------------------------------------------------------------------ elementwise
    # (on 0-d arrays NumPy's ufuncs return scalars; _array keeps them arrays, as the
    # interface and the other backends have them)
    def add(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return _array(np.add(a, b, out=out))

    def subtract(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return _array(np.subtract(a, b, out=out))

    def multiply(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return _array(np.multiply(a, b, out=out))

    def divide(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return _array(np.divide(a, b, out=out))

    def exp(self, x: Array, out: Array | None = None) -> Array:
        return _array(np.exp(x, out=out))

    def log(self, x: Array, out: Array | None = None) -> Array:
        return _array(np.log(x, out=out))

    def sqrt(self, x: Array, out: Array | None = None) -> Array:
        return _array(np.sqrt(x, out=out))

    def square(self, x: Array, out: Array | None = None) -> Array:
        return _array(np.square(x, out=out))

    def abs(self, x: Array, out: Array | None = None) -> Array:
        return _array(np.abs(x, out=out))

    def sign(self, x: Array, out: Array | None = None) -> Array:
        return _array(np.sign(x, out=out))

    def maximum(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return _array(np.maximum(a, b, out=out))

    def minimum(self, a: Array, b: Array | float, out: Array | None = None) -> Array:
        return _array(np.minimum(a, b, out=out))

    def clip(self, x: Array, lo: float, hi: float, out: Array | None = None) -> Array:
        return _array(np.clip(x, lo, hi, out=out))

    def _biased(self, z: Array, bias: Array | None) -> Array:
        return z if bias is None else np.add(z, bias, out=z)

    # ------------------------------------------------------------------ activations
    # Every elementwise job is the table's reference (backends/kernels.py) on NumPy, in place,
    # run whole for a small array and on row ranges over the threads for a big one.
    def _elementwise(
        self, key: str, *args: Any, out: Array | None = None, bias: Array | None = None
    ) -> Array:
        kernel = KERNELS[key]
        if out is None:
            out = np.empty_like(args[0])
        tmp = None if kernel.scratch is None else self._scratch_like(out, kernel.scratch)
        args = (*args, out)
        if self._threads < 2 or out.size <= self._min_split or out.ndim == 0:
            _rows(kernel.reference, args, bias, tmp)  # (no closure: small jobs pay nothing)
            return out
        rows = out.shape[0]
        split = [isinstance(x, np.ndarray) and x.ndim == out.ndim and len(x) == rows for x in args]

        def job(_: int, r: slice) -> None:
            part = [x[r] if s else x for x, s in zip(args, split, strict=True)]
            _rows(kernel.reference, part, bias, None if tmp is None else tmp[r])

        self._each(job, rows, out.size)
        return out

    def _scratch_like(self, like: np.ndarray, kind: str) -> np.ndarray:
        """A scratch array of `like`'s shape, "float" (its dtype) or "bool", reused."""
        dtype = like.dtype if kind == "float" else np.dtype(bool)
        key = ("scratch", like.shape, dtype)
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty(like.shape, dtype=dtype)
        return buf

    def sigmoid(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        # a NumPy-only form of the table's sigmoid (see _sigmoid below): fewer passes
        out = np.empty_like(z) if out is None else out
        self._apply(_sigmoid, (z, out), bias)
        return out

    def softmax(self, z: Array, out: Array | None = None, bias: Array | None = None) -> Array:
        z = self._biased(z, bias)
        out = np.subtract(z, np.maximum.reduce(z, axis=-1, keepdims=True), out=out)
        np.exp(out, out=out)
        out /= np.add.reduce(out, axis=-1, keepdims=True)
        return out

    def softmax_backward(self, a: Array, da: Array, out: Array | None = None) -> Array:
        # delta = a * (da - sum(da * a, axis=-1))
        out = np.multiply(da, a, out=out)
        s = out.sum(axis=-1, keepdims=True)
        np.subtract(da, s, out=out)
        out *= a
        return out

    # ------------------------------------------------------------------ batch normalization
    # The table's formulas (backends/kernels.py, COLUMN_KERNELS) in place: the column sums as
    # BLAS matrix-vector products (`sum` below) and no batch-sized temporaries.
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
        out = np.empty_like(x) if out is None else out
        x_hat = np.empty_like(x) if x_hat is None else x_hat
        inv_std = np.empty_like(gamma) if inv_std is None else inv_std
        rows = x.shape[0]
        mean = self.sum(x, axis=0) / rows
        d = np.subtract(x, mean, out=x_hat)
        var = self.sum(np.multiply(d, d, out=out), axis=0) / rows  # out as scratch
        np.sqrt(np.add(var, epsilon, out=inv_std), out=inv_std)
        np.divide(1.0, inv_std, out=inv_std)
        np.multiply(d, inv_std, out=x_hat)
        np.add(np.multiply(x_hat, gamma, out=out), beta, out=out)
        for moving, batch in ((moving_mean, mean), (moving_var, var)):
            moving *= momentum
            moving += (1.0 - momentum) * batch
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
        out = np.empty_like(da) if out is None else out
        dgamma = np.empty_like(gamma) if dgamma is None else dgamma
        dbeta = np.empty_like(gamma) if dbeta is None else dbeta
        rows = da.shape[0]
        self.sum(da, axis=0, out=dbeta)
        self.sum(np.multiply(da, x_hat, out=out), axis=0, out=dgamma)
        # delta = gamma inv_std / N (N da - dbeta - x_hat dgamma)
        #       = gamma inv_std (da - (dbeta + x_hat dgamma) / N), in place in out
        np.multiply(x_hat, dgamma, out=out)
        out += dbeta
        out /= -rows
        out += da
        out *= gamma * inv_std
        return out, dgamma, dbeta

    # ------------------------------------------------------------------ reductions
    def sum(
        self,
        x: Array,
        axis: int | tuple[int, ...] | None = None,
        keepdims: bool = False,
        out: Array | None = None,
    ) -> Array:
        if axis == 0 and x.ndim == 2 and not keepdims and x.dtype.kind == "f":
            # column sums (dC/db = delta summed over the batch) as ones @ x: a BLAS
            # matrix-vector product, 2-3x faster than the strided reduction
            return np.matmul(self._ones(x.shape[0], x.dtype), x, out=out)
        return _array(np.add.reduce(x, axis=axis, keepdims=keepdims, out=out))  # type: ignore[arg-type]

    def mean(
        self, x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> Array:
        return _array(np.mean(x, axis=axis, keepdims=keepdims))

    def max(
        self, x: Array, axis: int | tuple[int, ...] | None = None, keepdims: bool = False
    ) -> Array:
        return _array(np.max(x, axis=axis, keepdims=keepdims))

    def _ones(self, n: int, dtype: Any) -> np.ndarray:
        key = ("ones", n, dtype)
        ones = self._scratch.get(key)
        if ones is None:
            ones = self._scratch[key] = np.ones(n, dtype=dtype)
        return ones

    def argmax(
        self, x: Array, axis: int | None = None, keepdims: bool = False, out: Array | None = None
    ) -> Array:
        return x.argmax(axis=axis, out=out, keepdims=keepdims)

    # ------------------------------------------------------------------ optimizer updates
    def _update(self, key: str, grad: Array, scalars: tuple[Any, ...], *state: Array) -> None:
        if not self.blas_yield:
            self._update_blocks(key, grad, scalars, *state)
            return
        with _single_threaded(self._blas):
            self._update_blocks(key, grad, scalars, *state)

    def _update_blocks(
        self, key: str, grad: Array, scalars: tuple[Any, ...], *state: Array
    ) -> None:
        """The table's update `key` over the flat arrays, in ranges split over the threads (for
        a big model) and, within each, blocks of at most UPDATE_BLOCK elements with one
        temporary per thread."""
        reference = KERNELS[key].reference
        n = grad.size
        flat = [a.reshape(-1) for a in (grad, *state)]
        if self._threads < 2 or n <= self._min_update_split:  # in the caller, blockwise
            for lo in range(0, n, UPDATE_BLOCK):
                g, *views = (a[lo : lo + UPDATE_BLOCK] for a in flat)
                reference(np, g, *scalars, *views, tmp=self._tmp(g))
            return

        def job(part: int, span: slice) -> None:
            start, stop = span.indices(n)[:2]
            for lo in range(start, stop, UPDATE_BLOCK):
                g, *views = (a[lo : min(lo + UPDATE_BLOCK, stop)] for a in flat)
                reference(np, g, *scalars, *views, tmp=self._tmp(g, slot=100 + part))

        # ranges a multiple of 16 elements long (64 bytes of float32), as aligned as the arrays
        parts = self._parts(-(-n // 16), n, self._min_update_split)
        self._run(lambda part, rows: job(part, _scaled(rows, 16, n)), parts)

    # ------------------------------------------------------------------ capture
    def capture(self, fn: Callable[[], None]) -> Replay:
        """fn recorded as the list of its backend calls and replayed (backends/tape.py): its
        first call runs eagerly and records, the second records again, checks and adopts
        the recording, every later call replays it, with the optimizer update placed as
        `update_schedule` says. Where recording is off, or refused (`reason` says why), fn
        runs eagerly on every call."""
        if not self.record:
            return Replay(fn, reason="recording is off (record=False or $BACKPROP_CPU_CAPTURE=0)")
        how = self.update_schedule
        return TapeReplay(self, fn, functools.partial(schedule, how=how, worker=self._worker))

    def _replay_form(self, name: str, arguments: dict[str, Any]) -> Callable[[], Any] | None:
        """For a recording (backends/tape.py): a call doing what `name` did with these
        arguments, with this method's own Python done once (which job, which threads, which
        blocks), or None to call the method again. For the calls a step makes most: GEMMs,
        gathers and the SGD updates that run in the calling thread."""
        a = arguments
        if name == "matmul" and a.get("out") is not None:
            return functools.partial(np.matmul, a["a"], a["b"], out=a["out"])
        if name == "take" and a.get("out") is not None and a["indices"].ndim == 1:
            if self._threads < 2 or a["out"].size <= self._min_split:
                return functools.partial(_gather, a["out"], a["indices"], a["x"])
        if name == "sgd_update":
            return self._update_form("sgd_update", a["grad"], (a["lr"],), a["param"])
        if name == "momentum_update":
            key = "nesterov_update" if a.get("nesterov", False) else "momentum_update"
            scalars = (a["lr"], a["momentum"])
            return self._update_form(key, a["grad"], scalars, a["param"], a["velocity"])
        return None

    def _update_form(
        self, key: str, grad: Array, scalars: tuple[Any, ...], *state: Array
    ) -> Callable[[], Any] | None:
        """_update's blocks, each a bound call of the table's reference, where it runs them
        in the calling thread."""
        n, arrays = grad.size, (grad, *state)
        if self.blas_yield or (self._threads > 1 and n > self._min_update_split):
            return None
        if not all(x.flags.c_contiguous and x.size == n for x in arrays):
            return None
        reference, flat = KERNELS[key].reference, [x.reshape(-1) for x in arrays]
        calls: list[Callable[[], Any]] = []
        for lo in range(0, n, UPDATE_BLOCK):
            g, *views = (x[lo : lo + UPDATE_BLOCK] for x in flat)
            calls.append(functools.partial(reference, np, g, *scalars, *views, tmp=self._tmp(g)))
        return calls[0] if len(calls) == 1 else functools.partial(_each_call, calls)

    def _worker(self) -> ThreadPoolExecutor:
        """The second thread that "overlap" runs the update's parts on."""
        if self._update_pool is None:
            self._update_pool = ThreadPoolExecutor(1, thread_name_prefix="backprop-update")
        return self._update_pool


def _each_call(calls: list[Callable[[], Any]]) -> None:
    for call in calls:
        call()


def _blas_controllers() -> list[Any]:
    """threadpoolctl's controllers of the BLAS libraries loaded in this process."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError as exc:
        raise RuntimeError(
            "blas_yield (or $BACKPROP_BLAS_YIELD=1) needs threadpoolctl: pip install threadpoolctl"
        ) from exc
    return [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]


@contextmanager
def _single_threaded(blas: list[Any]) -> Iterator[None]:
    """BLAS limited to one thread while inside, then given back its threads."""
    before = [lib.num_threads for lib in blas]
    for lib in blas:
        lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in zip(blas, before, strict=True):
            lib.set_num_threads(n)


# --------------------------------------------------------------------------- row kernels
def _array(result: Any) -> np.ndarray:
    """A result as an array: NumPy returns a full reduction, or arithmetic on 0-d arrays, as
    a scalar (np.float32), the other backends as a 0-d array, as the interface promises. A
    recorded step (backends/tape.py) tells arrays that calls made from host values by this."""
    return result if isinstance(result, np.ndarray) else np.asarray(result)


def _biased(z: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return z if bias is None else np.add(z, bias, out=z)


def _sigmoid(z: np.ndarray, out: np.ndarray, bias: np.ndarray | None) -> None:
    # sigmoid(z) = 1 / (1 + exp(-z)): one transcendental pass and three in place. For
    # z < -88 (float32) exp(-z) overflows to inf and 1 / (1 + inf) is the exact limit 0, so the
    # overflow is expected and not warned about; z > 17 gives exactly 1. The NumPy-only
    # variant of the table's exp(-|z|) form (seven passes and a mask), equal to it within
    # rounding. NumPy's float32 exp is about twice as fast as its tanh here, so this beats
    # (1 + tanh(z / 2)) / 2: 112 against 184 us for 128 x 500 on one core.
    np.negative(_biased(z, bias), out=out)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)


def _rows(reference: Callable[..., None], args: Any, bias: np.ndarray | None, tmp: Any) -> None:
    """A table reference on (a row range of) its arrays, z += bias first when given."""
    if bias is not None:
        np.add(args[0], bias, out=args[0])
    reference(np, *args, tmp=tmp)


def _gather(out: np.ndarray, indices: np.ndarray, x: np.ndarray) -> None:
    x.take(indices, axis=0, out=out, mode="clip")


def _scaled(rows: slice, unit: int, n: int) -> slice:
    """A range of `unit`-element groups as a range of elements, clipped to n."""
    start, stop = rows.indices(-(-n // unit))[:2]
    return slice(start * unit, min(stop * unit, n))
