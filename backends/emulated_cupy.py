"""A stand-in for CuPy on machines without a GPU, to run CupyBackend's Python glue.

It is NumPy underneath, with CuPy's differences that matter to the backend: arrays are a
distinct type (host NumPy arrays are not device arrays), creation functions take no device=
keyword and copy host data, and ElementwiseKernel runs the kernel's own CUDA-C operation,
translated for the small subset the kernels use (declarations, =, +=, -=, *=, the ternary
operator, chained or nested, T(...) casts, math functions, and for raw kernels `for` loops
with indexing, `if` guards on stores and `__shfl_down_sync`, whose mask it checks: a lane
outside the mask, or reading from a lane outside it, gets garbage, as on a GPU); what it
cannot translate faithfully (&&, ||, !, ++ and -- outside a loop header, other compound
assignments, C casts, suffixed literals) raises a TranslationError naming the construct, and
so does a double literal in a float kernel (`x * 0.5` rather than `x * T(0.5)`: on a GPU it
silently computes in double precision). The CUDA compiler itself
is checked separately, with NVRTC, in tests/test_cuda_kernels.py; this checks that the
backend passes the right arguments in the right order and that the kernels compute what
their NumPy twins compute.

It also emulates what decides speed on a real GPU and what a CUDA graph forbids:

- Launches: every kernel CuPy would launch (an ElementwiseKernel call, a ufunc, a reduction,
  a gather, a copy or fill, a GEMM) and every graph launch adds one to `launches()`.
- Stream capture (`Stream.begin_capture` / `end_capture`): operations issued while a stream
  captures are recorded, not run (outputs are allocated then, as CuPy's pool would), and
  `Graph.launch` replays the recording. While capturing, these raise as they would (or
  should) on a GPU: `cupy.matmul` (CuPy refuses cuBLAS during capture), any device -> host
  read (`asnumpy`, `float(x)`, `bool(x)`, `x.item()`: a Python decision on a device value),
  a host -> device copy, `synchronize()`, and an allocation the private pool in use cannot
  serve from blocks freed since it was warmed up.
- Devices: two emulated GPUs. `with cupy.cuda.Device(k):` makes k current; each array lives on
  the device that was current when it was made (views on their base's), and every operation
  on an array of another device raises as CuPy's peer-access check does, so code that forgets
  to enter its device fails here as it would on a GPU (where it fails, or silently computes
  on GPU 0).
- `fake_cublas()`: nvmath-python's low-level cuBLAS bindings (create, set_stream,
  set_workspace, sgemm, dgemm), computing column-major GEMMs from raw pointers, leading
  dimensions and transpose flags exactly as cuBLAS reads them; these capture fine. A handle
  keeps its stream and workspace; `set_stream` resets the workspace (as cublasSetStream
  does), and a GEMM without one allocates cuBLAS's own: inside a capture, a memory node
  (`graph_memory_nodes()`). `live` holds the handles created and not destroyed.
- Graph memory: a recorded graph holds addresses, not objects. It keeps weak references to
  the memory blocks its nodes use, and `Graph.launch` fails loudly (StaleGraphError) where
  one was freed since (by its array's end without a pool, or a pool's free_all_blocks).
- Fault injection (`failing(what, times, after)`): `begin_capture`, cuBLAS calls and
  allocations during capture can be made to fail, as they can on a GPU, for tests of the
  fallbacks.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import operator
import re
import types
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np


class CaptureError(RuntimeError):
    """Something a real stream capture forbids happened while a stream was capturing."""


class StaleGraphError(RuntimeError):
    """A graph was launched after memory its nodes point to was freed (on a GPU: a replay
    writing into freed memory, silently)."""


class OutOfMemoryError(MemoryError):
    """cupy.cuda.memory.OutOfMemoryError: cudaMalloc failed."""


class cuBLASError(Exception):
    """nvmath.bindings.cublas.cuBLASError (nvmath's name; an Exception, not a RuntimeError)."""


class _State:
    capturing: Graph | None = None
    launches = 0
    graph_sizes: list[int] = []  # noqa: RUF012  (the node count of each graph recorded)
    graph_memory_nodes: list[int] = []  # noqa: RUF012  (their memory nodes, the same order)
    faults: dict[str, list[int]] = {}  # noqa: RUF012  (what -> [calls to let pass, failures])
    pool: MemoryPool | None = None
    stream: Stream | None = None  # the current stream (None: the default stream)


STATE = _State()


def launches() -> int:
    """Kernel and graph launches issued by the host so far (recording does not count)."""
    return STATE.launches


def graph_sizes() -> list[int]:
    """The node count (kernels, copies, fills, GEMMs) of every graph recorded so far."""
    return list(STATE.graph_sizes)


def graph_memory_nodes() -> list[int]:
    """The memory (allocation) nodes of every graph recorded so far: cuBLAS allocating its
    workspace inside the capture."""
    return list(STATE.graph_memory_nodes)


FAULTS = ("begin_capture", "cublas", "cudaMalloc")


@contextlib.contextmanager
def failing(what: str, times: int = 1, after: int = 0) -> Any:
    """Within the block, the `times` calls of one kind that follow the next `after` fail:
    "begin_capture" (Stream.begin_capture raises CaptureError), "cublas" (a fake_cublas
    call: create, set_stream, set_workspace, a GEMM, raises cuBLASError), "cudaMalloc" (an
    allocation while a stream captures that the pool cannot serve from its cached blocks
    calls cudaMalloc, which fails: see MemoryPool.allocate)."""
    if what not in FAULTS:
        raise ValueError(f"what must be one of {FAULTS}, got {what!r}")
    STATE.faults[what] = [after, times]
    try:
        yield
    finally:
        del STATE.faults[what]


def _fault(what: str) -> bool:
    """Whether this call of kind `what` fails (see failing)."""
    pending = STATE.faults.get(what)
    if not pending:
        return False
    if pending[0] > 0:
        pending[0] -= 1
        return False
    if pending[1] > 0:
        pending[1] -= 1
        return True
    return False


def _forbid(what: str) -> None:
    if STATE.capturing is not None:
        raise CaptureError(f"{what} is not permitted while a stream is capturing")


DEVICE_COUNT = 2  # emulated GPUs


class _Devices:
    current = 0  # the current device, as `with cupy.cuda.Device(k):` sets it
    previous: list[int] = []  # noqa: RUF012  (the devices to return to, innermost last)


class PeerAccessError(ValueError):
    """An operation on an array of another device than the current one (CuPy's ValueError)."""


def _check_devices(*operands: Any) -> None:
    """Raise as CuPy does where an array operand lives on another device than the current."""
    for x in operands:
        if isinstance(x, (tuple, list)):
            _check_devices(*x)
        elif isinstance(x, dict):
            _check_devices(*x.values())
        elif isinstance(x, DeviceArray) and x.device_id != _Devices.current:
            _peer_access(x.device_id)


def _peer_access(device_id: int) -> None:
    raise PeerAccessError(
        f"The device where the array resides ({device_id}) is different from the current "
        f"device ({_Devices.current}). Peer access is unavailable between these devices."
    )


def _plain(x: Any) -> Any:
    """A DeviceArray as the NumPy array over the same memory (anything else unchanged)."""
    if isinstance(x, DeviceArray):
        if STATE.capturing is not None:
            STATE.capturing.uses(x)
        return x.view(np.ndarray)
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def _issue(run: Callable[[], Any]) -> None:
    """Run one kernel now, or record it into the graph being captured."""
    if STATE.capturing is not None:
        STATE.capturing.nodes.append(run)
    else:
        STATE.launches += 1
        run()


def _new(value: Any) -> DeviceArray:
    """`value` (a NumPy result) as a new device array, allocated from the pool in use."""
    arr = np.asarray(value).view(DeviceArray)
    arr.device_id = _Devices.current
    if STATE.pool is not None:
        # The block is free again for the pool once this array and its views are gone, as
        # in CuPy (real CUDA graphs hold raw addresses into the pool, which keeps them).
        STATE.pool.allocate(arr)
    else:  # the default pool: the block is gone with the array
        arr._block = _Block(int(arr.nbytes))  # type: ignore[attr-defined]
    if STATE.capturing is not None:
        STATE.capturing.uses(arr)
    return arr


def _issue_new(compute: Callable[[], Any]) -> DeviceArray:
    """A kernel that allocates its output: computed now when eager; when capturing, the
    output is allocated now (from a dry run on the current contents, which writes nothing
    else) and filled by the recorded kernel on every replay."""
    with np.errstate(all="ignore"):
        result = _new(compute())
    if STATE.capturing is not None:
        target = result.view(np.ndarray)

        def replay() -> None:
            with np.errstate(all="ignore"):
                np.copyto(target, compute())

        STATE.capturing.nodes.append(replay)
    else:
        STATE.launches += 1
    return result


class DeviceArray(np.ndarray):
    """An array "on the device": NumPy operations keep the type, and each is one launch."""

    device_id = 0  # the emulated GPU holding the memory (a view: its base's)

    def __array_finalize__(self, obj: Any) -> None:
        self.device_id = getattr(obj, "device_id", _Devices.current)

    @property
    def device(self) -> _Device:  # type: ignore[override]  # CuPy: a Device, not "cpu"
        return _Device(self.device_id)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        _check_devices(inputs, kwargs)
        if ufunc is np.matmul and STATE.capturing is not None:
            raise NotImplementedError(
                "calling cuBLAS API during stream capture is currently unsupported"
            )
        out = kwargs.pop("out", None)
        args = _plain(inputs)
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        if out is not None:
            plain_out = _plain(out)
            _issue(lambda: getattr(ufunc, method)(*args, out=plain_out, **kwargs))
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _issue_new(lambda: getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        if func in _VIEWS:
            return super().__array_function__(func, types_, args, kwargs)
        _check_devices(args, kwargs)
        plain_args, plain_kwargs = _plain(args), {k: _plain(v) for k, v in kwargs.items()}
        out = kwargs.get("out")
        if func is np.copyto:
            _issue(lambda: func(*plain_args, **plain_kwargs))
            return None
        if out is not None:
            _issue(lambda: func(*plain_args, **plain_kwargs))
            return out
        return _issue_new(lambda: func(*plain_args, **plain_kwargs))

    def __setitem__(self, key: Any, value: Any) -> None:
        _check_devices(self, key, value)
        target, plain_key, plain_value = self.view(np.ndarray), _plain(key), _plain(value)
        if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
            _forbid("a host -> device copy")

        def run() -> None:
            target[plain_key] = plain_value

        _issue(run)

    def __getitem__(self, key: Any) -> Any:
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, (np.ndarray, list)) for k in keys):  # a gather: a kernel
            _check_devices(self, keys)
            plain, plain_key = self.view(np.ndarray), _plain(key)
            return _issue_new(lambda: plain[plain_key])
        return super().__getitem__(key)

    # Reading a device value on the host: a device -> host copy.
    def _host_read(self, what: str) -> np.ndarray:
        _forbid(f"reading a device value on the host ({what})")
        return self.view(np.ndarray)

    def __float__(self) -> float:
        return float(self._host_read("float()"))

    def __int__(self) -> int:
        return int(self._host_read("int()"))

    def __index__(self) -> int:
        return int(self._host_read("an index"))

    def __bool__(self) -> bool:
        return bool(self._host_read("a Python decision on a device value"))

    def item(self, *args: Any) -> Any:
        return self._host_read("item()").item(*args)

    def tolist(self) -> Any:
        return self._host_read("tolist()").tolist()

    def copy(self, order: Any = "C") -> Any:
        _check_devices(self)
        plain = self.view(np.ndarray)
        return _issue_new(lambda: plain.copy(order))

    def astype(self, dtype: Any, *args: Any, **kwargs: Any) -> Any:
        _check_devices(self)
        plain = self.view(np.ndarray)
        return _issue_new(lambda: plain.astype(dtype, *args, **kwargs))

    @property
    def data(self) -> Any:
        """CuPy's MemoryPointer: `.ptr` is the address of the first element (an int that
        knows its device, so the emulated cuBLAS can check it; remembered with its block, so
        that a GEMM recorded from raw pointers holds the block weakly) and `.device_id`."""
        ptr = _Pointer(self.view(np.ndarray).ctypes.data)
        ptr.device_id = self.device_id
        block = _block_of(self)
        if block is not None:
            _ADDRESSES[ptr] = weakref.ref(block)
        return types.SimpleNamespace(ptr=ptr, device_id=self.device_id)


class _Pointer(int):
    """A device address, with the device it points into."""

    device_id = 0


# functions that only make views or read metadata: no kernel
_VIEWS = {
    np.reshape,
    np.transpose,
    np.shape,
    np.ndim,
    np.size,
    np.result_type,
    np.may_share_memory,
    np.shares_memory,
    np.broadcast_to,
    np.expand_dims,
    np.squeeze,
    np.ravel,
    np.empty_like,
    np.iscomplexobj,
    np.isrealobj,
}


def _device(x: Any, dtype: Any = None) -> DeviceArray:
    if isinstance(x, DeviceArray):
        _check_devices(x)
        plain = x.view(np.ndarray)
        return _issue_new(lambda: np.array(plain, dtype=dtype, copy=True))
    _forbid("a host -> device copy")
    STATE.launches += 1  # the copy
    return _new(np.array(x, dtype=dtype, copy=True))


def _creation(fn: Any, kernel: bool) -> Any:
    def create(*args: Any, **kwargs: Any) -> DeviceArray:
        if "device" in kwargs:
            raise TypeError(f"{fn.__name__}() got an unexpected keyword argument 'device'")
        if not kernel:  # empty: an allocation, no kernel
            return _new(fn(*args, **kwargs))
        return _issue_new(lambda: fn(*args, **kwargs))  # a fill

    return create


def _empty_like(x: Any, dtype: Any = None) -> DeviceArray:
    return _new(np.empty_like(_plain(x), dtype=dtype))


class _Device:
    """cupy.cuda.Device: `with Device(k):` makes GPU k current until the block ends."""

    id = 0

    def __init__(self, index: int | None = None) -> None:
        index = _Devices.current if index is None else int(index)
        if not 0 <= index < DEVICE_COUNT:
            raise RuntimeError(f"cudaErrorInvalidDevice: invalid device ordinal ({index})")
        self.id = index

    def __enter__(self) -> _Device:
        _Devices.previous.append(_Devices.current)
        _Devices.current = self.id
        return self

    def __exit__(self, *exc: Any) -> None:
        _Devices.current = _Devices.previous.pop()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"

    def use(self) -> None:
        _Devices.current = self.id

    def synchronize(self) -> None:
        _forbid("synchronize()")


class Event:
    pass


class Stream:
    """A CUDA stream: a context manager that makes it current, and stream capture."""

    _next_ptr = 0x1000

    def __init__(self, non_blocking: bool = False) -> None:
        self.non_blocking = non_blocking
        self.device_id = _Devices.current  # a stream belongs to the device current at creation
        Stream._next_ptr += 0x10
        self.ptr = Stream._next_ptr
        self._previous: list[Stream | None] = []
        self._graph: Graph | None = None

    def __enter__(self) -> Stream:
        self._previous.append(STATE.stream)
        STATE.stream = self
        return self

    def __exit__(self, *exc: Any) -> None:
        STATE.stream = self._previous.pop()

    def begin_capture(self, mode: Any = None) -> None:
        if _fault("begin_capture"):
            raise CaptureError("cudaStreamBeginCapture failed (injected)")
        if STATE.capturing is not None:
            raise CaptureError("a stream is already capturing")
        if STATE.stream is not self:
            raise CaptureError("begin_capture on a stream that is not current")
        self._graph = Graph()
        STATE.capturing = self._graph

    def end_capture(self) -> Graph:
        graph, self._graph = self._graph, None
        if graph is None or STATE.capturing is not graph:
            raise CaptureError("end_capture without begin_capture on this stream")
        STATE.capturing = None
        STATE.graph_sizes.append(len(graph.nodes))
        STATE.graph_memory_nodes.append(graph.memory_nodes)
        return graph

    def is_capturing(self) -> bool:
        return self._graph is not None

    def record(self, event: Any = None) -> Event:
        return Event()

    def wait_event(self, event: Event) -> None:
        pass

    def synchronize(self) -> None:
        _forbid("synchronize()")


def _default_stream(device_id: int) -> Stream:
    with _Device(device_id):
        return Stream()


_DEFAULT_STREAMS = [_default_stream(k) for k in range(DEVICE_COUNT)]  # one per device


def get_current_stream() -> Stream:
    """The stream entered last, else the current device's default stream."""
    return STATE.stream if STATE.stream is not None else _DEFAULT_STREAMS[_Devices.current]


class _Block:
    """A block of device memory: alive while an array on it, or its pool, holds it."""

    __slots__ = ("__weakref__", "nbytes")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes


def _block_of(x: Any) -> _Block | None:
    """The memory block under a device array (its views share their base's)."""
    while isinstance(x, DeviceArray):
        block = x.__dict__.get("_block")
        if block is not None:
            return block
        x = x.base
    return None


# data pointers handed out (DeviceArray.data) -> their block, for GEMMs on raw pointers
_ADDRESSES: dict[int, weakref.ref[_Block]] = {}


class Graph:
    """A recorded sequence of kernels; `launch` replays it (one host launch). It holds the
    memory its nodes use as a real graph does, by address: weakly."""

    def __init__(self) -> None:
        self.nodes: list[Callable[[], None]] = []
        self.memory: dict[int, weakref.ref[_Block]] = {}
        self.memory_nodes = 0  # allocations recorded (cuBLAS's workspace)

    def uses(self, x: Any) -> None:
        block = _block_of(x)
        if block is not None:
            self._hold(weakref.ref(block))

    def uses_address(self, ptr: int) -> None:
        ref = _ADDRESSES.get(ptr)
        if ref is not None and ref() is not None:
            self._hold(ref)

    def _hold(self, ref: weakref.ref[_Block]) -> None:
        # keyed by the reference (one per live block, and kept alive here), not by the
        # block's id, which a block made after another's end may reuse
        self.memory[id(ref)] = ref

    def launch(self, stream: Any = None) -> None:
        _forbid("launching a graph")
        freed = sum(ref() is None for ref in self.memory.values())
        if freed:
            raise StaleGraphError(
                f"launching a graph {freed} of whose {len(self.memory)} memory blocks were "
                "freed since it was recorded: its nodes would write into freed memory"
            )
        STATE.launches += 1
        for node in self.nodes:
            node()


class MemoryPool:
    """A private pool: blocks freed by the arrays it handed out are reused by size. While a
    stream captures, an allocation it cannot serve from a freed block is an error (the
    pool was not warmed up by an eager run of the same work), except where cudaMalloc is
    made to fail (`failing("cudaMalloc")`): then, as CuPy's pool does, it frees all its
    free blocks and mallocs again, which a relaxed capture permits (and so does this pool
    for the rest of that capture), or raises OutOfMemoryError."""

    def __init__(self) -> None:
        self.free: dict[int, list[_Block]] = {}
        self.allocated = 0
        self._flushed: Graph | None = None  # the capture during which it freed its blocks

    def malloc(self, nbytes: int) -> Any:
        return self

    def allocate(self, arr: np.ndarray) -> None:
        nbytes = int(arr.nbytes)
        cached = self.free.get(nbytes)
        if cached:
            block = cached.pop()
        elif STATE.capturing is not None and _fault("cudaMalloc"):
            self.free_all_blocks()  # what CuPy's pool does when cudaMalloc fails, then retries
            self._flushed = STATE.capturing
            if _fault("cudaMalloc"):
                raise OutOfMemoryError(f"out of memory allocating {nbytes} bytes (injected)")
            block = self._new_block(nbytes)
        elif STATE.capturing is not None and self._flushed is not STATE.capturing:
            raise CaptureError(
                f"an allocation of {nbytes} bytes outside the warmed pool while capturing"
            )
        else:
            block = self._new_block(nbytes)
        arr._block = block  # type: ignore[attr-defined]
        weakref.finalize(arr, self._release, block)

    def _new_block(self, nbytes: int) -> _Block:
        self.allocated += nbytes
        return _Block(nbytes)

    def _release(self, block: _Block) -> None:
        self.free.setdefault(block.nbytes, []).append(block)

    def free_all_blocks(self) -> None:
        """Returns the free blocks to the device: a graph that points into them is stale."""
        for blocks in self.free.values():
            self.allocated -= sum(b.nbytes for b in blocks)
        self.free.clear()

    def total_bytes(self) -> int:
        return self.allocated

    def n_free_blocks(self) -> int:
        return sum(len(blocks) for blocks in self.free.values())


@contextlib.contextmanager
def using_allocator(malloc: Any = None) -> Any:
    previous = STATE.pool
    STATE.pool = malloc.__self__ if malloc is not None else None
    try:
        yield
    finally:
        STATE.pool = previous


# --------------------------------------------------------------------------- kernels
def _split_top(expr: str, sep: str) -> int:
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch in "(["
        depth -= ch in ")]"
        if ch == sep and depth == 0:
            return i
    return -1


class TranslationError(ValueError):
    """Kernel code the emulation's translator cannot run faithfully: refused, never guessed."""


# C that Python spells differently or reads as something else: refused with its name, not
# translated (Python would reject `&&`, but would read `--x` as x and `!x` as an error).
_REFUSED = (
    (re.compile(r"&&|\|\|"), "logical && or || (Python's & and | bind tighter)"),
    (re.compile(r"!(?!=)"), "logical not (!)"),
    (re.compile(r"\+\+|--"), "increment or decrement (++, --) outside a for loop's header"),
    (re.compile(r"(?:<<|>>|[-+*/%&|^])="), "a compound assignment other than +=, -=, *="),
    (re.compile(r"\((?:unsigned|int|long|float|double|char)\b[^()]*\)\s*[\w(]"), "a C cast"),
    (re.compile(r"\b\d+\.?\d*(?:[eE][-+]?\d+)?[fFuUlL]\b"), "a literal with a type suffix"),
)


def _refuse(expr: str) -> None:
    for pattern, construct in _REFUSED:
        found = pattern.search(expr)
        if found:
            raise TranslationError(
                f"the emulated CuPy cannot translate {construct}, {found.group(0)!r} in "
                f"{expr!r}: "
                "extend backends/emulated_cupy.py's translator or rewrite the kernel text"
            )


def _matching_colon(text: str) -> int:
    """The index of the top-level ':' that closes a ternary whose '?' precedes `text` (a
    nested `b ? c : d` inside the true branch is skipped), or -1."""
    depth = pending = 0
    for i, ch in enumerate(text):
        depth += ch in "(["
        depth -= ch in ")]"
        if depth == 0 and ch == "?":
            pending += 1
        elif depth == 0 and ch == ":":
            if pending == 0:
                return i
            pending -= 1
    return -1


def _ternary(flat: str) -> str:
    """C's conditional operator, right-associative (`a ? b : c ? d : e` is
    `a ? b : (c ? d : e)`), as nested `where` calls. It binds looser than every other
    operator the kernels use, so the first top-level '?' ends the condition."""
    q = _split_top(flat, "?")
    if q < 0:
        if _split_top(flat, ":") >= 0:
            raise TranslationError(f"the emulated CuPy found a ':' without its '?' in {flat!r}")
        return flat
    rest = flat[q + 1 :]
    c = _matching_colon(rest)
    if c < 0:
        raise TranslationError(f"the emulated CuPy found a '?' without its ':' in {flat!r}")
    return f"where({flat[:q]}, {_ternary(rest[:c])}, {_ternary(rest[c + 1 :])})"


def translate(expr: str) -> str:
    """A CUDA-C expression of the kernels' subset as a NumPy expression; a TranslationError
    names a construct outside it."""
    _refuse(expr)
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
    return _ternary("".join(out))


_FOR = re.compile(
    r"for\s*\(\s*ptrdiff_t\s+(\w+)\s*=\s*(.+?);\s*\1\s*<\s*(.+?);\s*\+\+\1\s*\)\s*\{(.*)\}\s*$"
)
_ASSIGN = re.compile(r"(?:(?:T|U|ptrdiff_t)\s+)?(\w+(?:\[[^\]]+\])?)\s*([-+*]?=)\s*(.+)")
# the compound assignments `_execute` runs: x op= v is x = x op v
_COMPOUND = {"+=": operator.add, "-=": operator.sub, "*=": operator.mul}


def _statements(code: str) -> list[str]:
    """Split kernel code into top-level statements (a `for` loop with its block is one)."""
    parts, depth, parens, start = [], 0, 0, 0
    for i, ch in enumerate(code):
        depth += ch == "{"
        depth -= ch == "}"
        parens += ch == "("
        parens -= ch == ")"
        if depth == 0 and parens == 0 and ch in ";}":
            text = code[start : i + 1].strip().rstrip(";").strip()
            if text:
                parts.append(text)
            start = i + 1
    tail = code[start:].strip()
    if tail:
        parts.append(tail)
    return parts


def _condition(statement: str) -> tuple[str, str] | None:
    """`if (cond) statement` -> (cond, statement), else None."""
    if not re.match(r"if\s*\(", statement):
        return None
    start = statement.index("(")
    depth = 0
    for j in range(start, len(statement)):
        depth += statement[j] == "("
        depth -= statement[j] == ")"
        if depth == 0:
            return statement[start + 1 : j], statement[j + 1 :].strip()
    raise AssertionError(statement)


def _garbage(dtype: Any) -> Any:
    """What a lane reads where a GPU gives no defined value: NaN, or an integer's largest
    value, so that a sum it enters is visibly wrong."""
    dtype = np.dtype(dtype)
    return dtype.type(np.nan) if dtype.kind in "fc" else np.iinfo(dtype).max


def _shfl_down(env: dict[str, Any]) -> Callable[..., Any]:
    """__shfl_down_sync over the emulated threads (`i`, in warps of 32): lane l gets the value
    of lane l + delta, or its own where that lane is past the warp's end. As on a GPU, the
    result is undefined (here: garbage, see `_garbage`) for a lane outside `mask` and for a
    lane whose source lane is outside it."""

    def shfl(mask: Any, value: Any, delta: Any) -> Any:
        index = np.asarray(env["i"])
        value = np.broadcast_to(value, index.shape)
        lane = index & 31
        in_mask = ((int(mask) >> lane) & 1).astype(bool)
        inside = lane + delta < 32
        source = np.where(inside, np.arange(index.size) + delta, np.arange(index.size))
        source = np.minimum(source, index.size - 1)
        undefined = ~in_mask | ~in_mask[source]
        return np.where(undefined, _garbage(value.dtype), value[source])

    return shfl


# A floating literal without a suffix: a double in CUDA C, so `x * 0.5` in a float kernel
# computes in double precision (slow on most GPUs; NVRTC compiles it without a word).
_DOUBLE_LITERAL = re.compile(
    r"(?<![\w.])(?:\d+\.\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+)(?![\w.])"
)


def check_single_precision(code: str, name: str) -> None:
    """A float kernel may hold a double literal only as T's argument (`T(0.5)`, folded into
    a float by the compiler); anywhere else it is a TranslationError naming the literal."""
    for found in _DOUBLE_LITERAL.finditer(code):
        cast = re.search(r"\bT\(\s*[-+]?\s*$", code[: found.start()])
        if cast and code[found.end() :].lstrip().startswith(")"):
            continue
        raise TranslationError(
            f"the float kernel {name} holds the double literal {found.group(0)!r}, which "
            f"makes a GPU compute in double precision: write T({found.group(0)})"
        )


def _execute(code: str, env: dict[str, Any], mask: Any = None) -> None:
    """Run kernel code with NumPy: every index at once (vectors), loops one step at a time;
    `if (cond) x[j] = v` writes only where cond holds (and `mask`, from enclosing ifs)."""
    for statement in _statements(code):
        if statement.startswith("typedef "):  # U is uint32 already (see _compute)
            continue
        loop = _FOR.fullmatch(statement)
        if loop:
            var, first, bound, body = loop.groups()
            stop = int(eval(translate(bound), env))
            for j in range(int(eval(translate(first), env)), stop):
                env[var] = j
                _execute(body, env, mask)
            continue
        guarded = _condition(statement)
        if guarded is not None:
            cond = np.asarray(eval(translate(guarded[0]), env), dtype=bool)
            _execute(guarded[1], env, cond if mask is None else mask & cond)
            continue
        match = _ASSIGN.fullmatch(statement)
        if match is None:
            if re.match(r"for\b", statement):
                raise TranslationError(
                    f"the emulated CuPy cannot translate the loop {statement!r}: it runs only "
                    "for (ptrdiff_t j = first; j < bound; ++j) { ... }"
                )
            _refuse(statement)
            raise TranslationError(
                f"the emulated CuPy cannot translate the statement {statement!r} (it runs "
                "declarations of T, U and ptrdiff_t, =, +=, -=, *=, if and for loops)"
            )
        target, op, expr = match.groups()
        value = eval(translate(expr), env)  # the kernels' own text, nothing else
        combine = _COMPOUND.get(op)
        if mask is not None:
            assert "[" in target and op == "=", f"only raw stores may be guarded: {statement}"
            name, index = target[:-1].split("[", 1)
            idx = np.broadcast_to(eval(translate(index), env), mask.shape)
            env[name][idx[mask]] = np.broadcast_to(value, mask.shape)[mask]
            continue
        if "[" in target:  # a raw array element: name[index]
            name, index = target[:-1].split("[", 1)
            idx = eval(translate(index), env)
            env[name][idx] = value if combine is None else combine(env[name][idx], value)
        else:
            env[target] = value if combine is None else combine(env[target], value)


class _Raw:
    """A raw kernel parameter: indexed by flat element index, whatever its strides."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def _unravel(self, idx: Any) -> Any:
        return np.unravel_index(idx, self.array.shape)

    def __getitem__(self, idx: Any) -> Any:
        return self.array[self._unravel(idx)]

    def __setitem__(self, idx: Any, value: Any) -> None:
        self.array[self._unravel(idx)] = value


class ElementwiseKernel:
    """Runs `operation` with NumPy, binding parameters like CuPy's ElementwiseKernel."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str) -> None:
        def parse(text: str) -> list[tuple[bool, str, str]]:
            return [(p.split()[0] == "raw", p.split()[-2], p.split()[-1]) for p in text.split(",")]

        self.ins, self.outs = parse(in_params), parse(out_params)
        self.operation, self.name = operation, name

    def __call__(self, *args: Any, size: int = -1) -> Any:
        n_in, n_out = len(self.ins), len(self.outs)
        if len(args) not in (n_in, n_in + n_out):
            raise TypeError(f"{self.name}: wrong number of arguments ({len(args)})")
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        if not all(isinstance(a, DeviceArray) for a in arrays):
            raise TypeError(f"{self.name}: Unsupported type {np.ndarray}")
        _check_devices(arrays)
        # a kernel over raw arrays (and scalars) runs `size` times
        raw_kernel = all(
            raw
            for (raw, t, _), value in zip((*self.ins, *self.outs), args, strict=False)
            if t == "T" and isinstance(value, np.ndarray)
        )
        if raw_kernel and size < 0:
            raise ValueError(f"{self.name}: a kernel with only raw arrays needs size=")
        given = list(args[n_in:])
        params = (*self.ins, *self.outs)
        elementwise = [  # the arrays the kernel runs over (raw ones are indexed, not mapped)
            a
            for (raw, _, _), a in zip(params, args, strict=False)
            if isinstance(a, np.ndarray) and not raw
        ]
        shape = np.broadcast_shapes(*(a.shape for a in elementwise)) if not raw_kernel else ()
        arrays = elementwise or arrays
        for _ in range(len(given), n_out):  # outputs not given are allocated (not raw ones)
            given.append(_new(np.empty(shape, dtype=arrays[0].dtype)))
        dtype = arrays[0].dtype
        plain_args = [_plain(a) for a in args[:n_in]]
        plain_outs = [_plain(a) for a in given]
        _issue(lambda: self._compute(plain_args, plain_outs, dtype, shape, size))
        return given[0] if n_out == 1 else tuple(given)

    def _compute(
        self, ins: list[Any], outs: list[np.ndarray], dtype: Any, shape: Any, size: int
    ) -> None:
        T = dtype.type
        if dtype.kind == "f" and dtype.itemsize < 8:
            check_single_precision(self.operation, self.name)
        env: dict[str, Any] = {
            "T": T,
            "where": np.where,
            "exp": np.exp,
            "tanh": np.tanh,
            "fabs": np.abs,
            "log1p": np.log1p,
            "expm1": np.expm1,
            "sqrt": np.sqrt,
            "U": np.uint32,  # unsigned int: the kernels' hash arithmetic wraps modulo 2^32
        }
        env["__shfl_down_sync"] = _shfl_down(env)
        for (raw, ctype, name), value in zip(self.ins, ins, strict=True):
            if raw:
                env[name] = _Raw(value)
            elif isinstance(value, np.ndarray):
                env[name] = value.copy()
            else:
                env[name] = (T if ctype == "T" else np.int64)(value)
        for (raw, _, name), value in zip(self.outs, outs, strict=True):
            env[name] = _Raw(value) if raw else value.copy()
        if size >= 0:
            env["i"] = np.arange(size)
        else:  # the flat (C-order) index of each element, as CuPy's i
            env["i"] = np.arange(math.prod(shape)).reshape(shape)
        with np.errstate(all="ignore"):
            _execute(self.operation, env)
        for (raw, _, name), value in zip(self.outs, outs, strict=True):
            if not raw:
                value[...] = np.broadcast_to(np.asarray(env[name], dtype=dtype), shape)


# --------------------------------------------------------------------------- cuBLAS
def _column_major(ptr: int, rows: int, cols: int, ld: int, dtype: Any) -> np.ndarray:
    """The column-major rows x cols matrix at address `ptr` with leading dimension `ld`."""
    item = np.dtype(dtype).itemsize
    count = (cols - 1) * ld + rows if rows and cols else 0
    ctype = ctypes.c_float if item == 4 else ctypes.c_double
    base = np.ctypeslib.as_array((ctype * max(count, 1)).from_address(ptr))
    return np.lib.stride_tricks.as_strided(base, (rows, cols), (item, ld * item))


def fake_cublas() -> types.SimpleNamespace:
    """nvmath.bindings.cublas's GEMM surface, over the emulated device memory. Each handle
    keeps its stream and workspace (`live`: handle -> that state, until destroyed)."""
    live: dict[int, dict[str, Any]] = {}

    def state(handle: int) -> dict[str, Any]:
        if _fault("cublas"):
            raise cuBLASError("CUBLAS_STATUS_INTERNAL_ERROR (injected)")
        if handle not in live:
            raise cuBLASError(f"invalid cuBLAS handle {handle} (CUBLAS_STATUS_NOT_INITIALIZED)")
        return live[handle]

    def create() -> int:
        if _fault("cublas"):
            raise cuBLASError("CUBLAS_STATUS_ALLOC_FAILED (injected)")
        handle = max(live, default=0) + 1
        live[handle] = {"stream": 0, "workspace": None, "device": _Devices.current}
        return handle

    def destroy(handle: int) -> None:
        state(handle)
        del live[handle]

    def set_stream(handle: int, stream: int) -> None:
        # "unconditionally resets the cuBLAS library workspace back to the default
        # workspace pool" (cublasSetStream)
        state(handle).update(stream=stream, workspace=None)

    def set_workspace(handle: int, ptr: int, nbytes: int) -> None:
        state(handle)["workspace"] = (ptr, nbytes)

    def gemm(dtype: Any) -> Any:
        def run(handle, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            handle_state = state(handle)
            if handle_state["device"] != _Devices.current:  # a handle belongs to its device
                raise RuntimeError(
                    f"cuBLAS: handle {handle} of device {handle_state['device']} used on "
                    f"device {_Devices.current} (CUBLAS_STATUS_EXECUTION_FAILED)"
                )
            for ptr in (a, b, c):  # the matrices (the scalars alpha, beta are host memory)
                if getattr(ptr, "device_id", _Devices.current) != _Devices.current:
                    _peer_access(ptr.device_id)
            if STATE.capturing is not None:
                if handle_state["workspace"] is None:  # cuBLAS allocates its own, in the graph
                    STATE.capturing.memory_nodes += 1
                for ptr in (a, b, c):
                    STATE.capturing.uses_address(ptr)
            ka, kb = (k, m) if transa else (m, k), (n, k) if transb else (k, n)
            for (rows, _), ld, name in ((ka, lda, "lda"), (kb, ldb, "ldb"), ((m, n), ldc, "ldc")):
                if ld < max(1, rows):
                    raise ValueError(
                        f"cuBLAS: {name}={ld} < rows={rows} (CUBLAS_STATUS_INVALID_VALUE)"
                    )
            A = _column_major(a, *ka, lda, dtype)
            B = _column_major(b, *kb, ldb, dtype)
            C = _column_major(c, m, n, ldc, dtype)
            al = _column_major(alpha, 1, 1, 1, dtype)[0, 0]
            be = _column_major(beta, 1, 1, 1, dtype)[0, 0]

            def compute() -> None:
                opA = A.T if transa else A
                opB = B.T if transb else B
                if al == 1 and be == 0:
                    # C^T = B^T A^T computed as the row-major A B it stands for, through the
                    # same views (and so the same BLAS call) as an eager matmul of them
                    np.matmul(opB.T, opA.T, out=C.T)
                else:
                    C[...] = al * (opA @ opB) + be * C

            _issue(compute)

        return run

    return types.SimpleNamespace(
        create=create,
        destroy=destroy,
        set_stream=set_stream,
        set_workspace=set_workspace,
        sgemm=gemm(np.float32),
        dgemm=gemm(np.float64),
        cuBLASError=cuBLASError,
        live=live,
    )


def fake_cupy() -> types.SimpleNamespace:
    """A module-like namespace with the parts of CuPy that CupyBackend uses."""
    ns: dict[str, Any] = {name: getattr(np, name) for name in dir(np) if not name.startswith("_")}
    for name in ("zeros", "full", "arange", "ones"):
        ns[name] = _creation(getattr(np, name), kernel=True)
    ns["empty"] = _creation(np.empty, kernel=False)

    def asarray(x: Any, dtype: Any = None, order: Any = None, *, copy: Any = None) -> Any:
        if isinstance(x, DeviceArray) and (dtype is None or x.dtype == dtype) and not copy:
            return x
        return _device(x, dtype)

    def asnumpy(x: Any) -> np.ndarray:
        _forbid("a device -> host copy (asnumpy)")
        STATE.launches += 1
        return np.array(_plain(x), copy=True)

    def ascontiguousarray(x: Any) -> Any:
        _check_devices(x)
        plain = _plain(x)
        return _issue_new(lambda: np.ascontiguousarray(plain))

    ns.update(
        ndarray=DeviceArray,
        asarray=asarray,
        asnumpy=asnumpy,
        ascontiguousarray=ascontiguousarray,
        empty_like=_empty_like,
        ElementwiseKernel=ElementwiseKernel,
        cuda=types.SimpleNamespace(
            Device=_Device,
            Stream=Stream,
            MemoryPool=MemoryPool,
            using_allocator=using_allocator,
            get_current_stream=get_current_stream,
            runtime=types.SimpleNamespace(
                getDeviceCount=lambda: DEVICE_COUNT,
                getDevice=lambda: _Devices.current,
                getDeviceProperties=lambda i: {"name": b"Emulated GPU (NumPy)"},
            ),
        ),
    )
    return types.SimpleNamespace(**ns)


def emulated_cupy_backend(dtype: str = "float32", blas: bool = True, device: int = 0) -> Any:
    """CupyBackend constructed over this stand-in for CuPy, on emulated GPU `device`; its
    captured GEMMs go through `fake_cublas()` (blas=False: as on a machine without
    nvmath-python)."""
    from backends import cupy_backend

    real = cupy_backend.import_cupy
    cupy_backend.import_cupy = fake_cupy
    try:
        backend = cupy_backend.CupyBackend(dtype=dtype, device=device)
    finally:
        cupy_backend.import_cupy = real

    def missing() -> Any:
        return cupy_backend.import_capturable_blas(missing=True)

    backend._import_blas = fake_cublas if blas else missing
    return backend
