"""A recorded function on the CPU: the backend calls a function makes, replayed as a list.

`NumpyBackend.capture(fn)` returns a `TapeReplay`, the CPU's counterpart of CuPy's CUDA
graph. Its first call runs fn eagerly while recording every call fn makes to the backend's
public array operations (the outermost ones: a method that calls another is one entry), each
as the method with its bound arguments. Its second call records fn again and checks that the
two recordings are one list over the same memory (each array by its root buffer, offset,
shape and strides; each scalar by value); it then puts back the arrays the calls touch as
they were before that call, replays the list, and checks that the replay left every one of
them bit for bit as the eager call did. From the third call on, a call is the replay: the
layers', optimizer's and trainer's Python no longer runs, only the backend's methods.

Recording refuses (fn then runs eagerly on every call, and `reason` says why) where fn reads
a device value on the host (`to_numpy`); where an array that no recorded call made reaches a
recorded call (an operator expression such as `a - y`: its result is a new array on every
call); where a scalar differs between the two recordings (a host value per call); and where
the replay does not reproduce the eager call (arrays written outside the backend's methods).
What it cannot see: an in-place write, outside the backend's methods, to an array that no
recorded call touches. So the Trainer records by default only steps made of the library's
own layers, activations, losses and optimizers, which do all their array work through the
backend.

The replayed list may also be reordered (`schedule`): an optimizer update is elementwise, so
the part of it for one layer's parameters can run as soon as the last call before it that
touches those parameters or their gradients is done ("early"), or on a second thread while
the rest of the backward pass runs ("overlap"): the same arithmetic on the same elements.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import types
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .base import Replay

#: backend methods that are not array operations: never recorded, run as they are
NOT_RECORDED = frozenset(
    {
        "capture",
        "check_array",
        "collective_stream",
        "device_context",
        "is_array",
        "synchronize",
        "with_dtype",
    }
)
#: the optimizer updates: elementwise over their flat arrays, so the update of a part of the
#: arrays is that part of the update
UPDATES = frozenset(
    {
        "sgd_update",
        "momentum_update",
        "adagrad_update",
        "rmsprop_update",
        "adam_update",
        "adam_step",
    }
)
SCHEDULES = ("end", "early", "overlap")
#: elements below which a part of an update joins the next part (64 KiB of float32)
MIN_PART = 1 << 14
#: recordings made before giving up on two that agree: the first call of a step makes its
#: workspaces (so its recording has calls the next lacks), the next ones must agree
RECORDINGS = 3

Footprint = tuple[int, int, int]  # (id of a root buffer, first byte, byte past the last)


def _root(x: np.ndarray) -> np.ndarray:
    while isinstance(x.base, np.ndarray):
        x = x.base
    return x


def _address(x: np.ndarray) -> int:
    return int(x.__array_interface__["data"][0])


def _span(x: np.ndarray, root: np.ndarray) -> tuple[int, int]:
    """The bytes of `root` that `x` (a view of it) can reach: [first, past the last)."""
    start = _address(x) - _address(root)
    if x.size == 0:
        return start, start
    low = sum(min(0, (n - 1) * s) for n, s in zip(x.shape, x.strides, strict=True))
    high = sum(max(0, (n - 1) * s) for n, s in zip(x.shape, x.strides, strict=True))
    return start + low, start + high + x.itemsize


class Entry:
    """One recorded call: the backend's method, its bound arguments, the memory it touches,
    and `call`, which does it again (writing into the arrays it made when recorded)."""

    def __init__(self, name: str, method: Callable[..., Any], bound: inspect.BoundArguments):
        self.name, self.method, self.bound = name, method, bound
        self.footprint: list[Footprint] = []
        self.call: Callable[[], Any] = functools.partial(method, *bound.args, **bound.kwargs)


class Recording:
    """What one eager call of fn did through the backend: `entries` in order, `keys` (their
    description, compared between two recordings), `roots` (the buffers they touch that were
    not made during the call, by id)."""

    def __init__(self, be: Any = None) -> None:
        # be._replay_form(name, arguments): a faster call doing what a recorded call did
        # (the NumPy function itself, with the method's decisions taken), or None
        self.fast = getattr(be, "_replay_form", None)
        self.entries: list[Entry] = []
        self.keys: list[Any] = []
        self.roots: dict[int, np.ndarray] = {}
        self.made: dict[int, int] = {}  # id(root of an array a call made) -> its entry
        self.keep: list[np.ndarray] = []  # what `made` names, alive so no id is reused
        self.refused: str | None = None
        self.depth = 0  # > 0 inside a recorded call: its own calls are part of it

    def _key(self, value: Any, entry: Entry) -> Any:
        if isinstance(value, np.ndarray):
            root = _root(value)
            made = self.made.get(id(root))
            if made is None:
                self.roots.setdefault(id(root), root)
                where: tuple[str, int] = ("x", id(root))
            else:
                where = ("made by", made)
            lo, hi = _span(value, root)
            entry.footprint.append((id(root), lo, hi))
            return (where, lo, value.shape, value.strides, value.dtype.str)
        if isinstance(value, (tuple, list)):
            return (type(value).__name__, tuple(self._key(v, entry) for v in value))
        if isinstance(value, np.generic):
            return ("scalar", value.dtype.str, value.item())
        return ("value", value)

    def add(self, name: str, method: Callable[..., Any], args: Any, kwargs: Any, result: Any):
        if name == "to_numpy":
            self.refused = self.refused or "it reads a device value on the host (to_numpy)"
        bound = inspect.signature(method).bind(*args, **kwargs)
        entry = Entry(name, method, bound)
        index = len(self.entries)
        key = [name, [(k, self._key(v, entry)) for k, v in bound.arguments.items()]]
        touched = {f[0] for f in entry.footprint}
        results = result if isinstance(result, tuple) else (result,)
        fresh = []
        for i, r in enumerate(results):
            if not isinstance(r, np.ndarray):
                continue
            root = _root(r)
            if id(root) in touched or id(root) in self.made or id(root) in self.roots:
                continue  # written into an array it was given (out=), or a view of one
            self.made[id(root)] = index
            self.keep.append(root)
            entry.footprint.append((id(root), *_span(r, root)))
            fresh.append((i, r))
        key.append([(i, r.shape, r.dtype.str) for i, r in fresh])
        if fresh:
            entry.call = _writing_into(entry, results, fresh)
        elif self.fast is not None:
            entry.call = self.fast(name, bound.arguments) or entry.call
        self.entries.append(entry)
        self.keys.append(key)


def _writing_into(
    entry: Entry, results: tuple[Any, ...], fresh: list[tuple[int, np.ndarray]]
) -> Callable[[], Any]:
    """The call that does `entry` again into the arrays it made when recorded: with out=
    where the method takes it and made only its result, else by copying."""
    bound = entry.bound
    if (
        len(results) == 1
        and "out" in inspect.signature(entry.method).parameters
        and bound.arguments.get("out") is None
        and fresh[0][1].base is None
    ):
        again = inspect.BoundArguments(bound.signature, bound.arguments.copy())
        again.arguments["out"] = fresh[0][1]
        entry.bound = again
        return functools.partial(entry.method, *again.args, **again.kwargs)
    method, args, kwargs = entry.method, bound.args, bound.kwargs

    def refill() -> None:
        result = method(*args, **kwargs)
        results = result if isinstance(result, tuple) else (result,)
        for i, target in fresh:
            np.copyto(target, results[i])

    return refill


_NAMES: dict[type, tuple[str, ...]] = {}


def _recorded_names(cls: type) -> tuple[str, ...]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = _public_methods(cls)
    return names


def _public_methods(cls: type) -> tuple[str, ...]:
    return tuple(
        name
        for name in dir(cls)
        if not name.startswith("_")
        and name not in NOT_RECORDED
        and isinstance(inspect.getattr_static(cls, name), types.FunctionType)
    )


def _recorder(rec: Recording, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def record(*args: Any, **kwargs: Any) -> Any:
        if rec.depth:
            return method(*args, **kwargs)
        rec.depth += 1
        try:
            result = method(*args, **kwargs)
        finally:
            rec.depth -= 1
        rec.add(name, method, args, kwargs, result)
        return result

    return record


@contextlib.contextmanager
def recording(be: Any, rec: Recording) -> Iterator[None]:
    """While inside, every public array operation of `be` (called as be.name(...)) runs and
    is recorded into `rec`: instance attributes shadow the class's methods, so a backend that
    is not recording pays nothing."""
    names = _recorded_names(type(be))
    own = {name: be.__dict__[name] for name in names if name in be.__dict__}  # (patched ones)
    for name in names:
        setattr(be, name, _recorder(rec, name, getattr(be, name)))
    try:
        yield
    finally:
        for name in names:
            if name in own:
                setattr(be, name, own[name])
            else:
                be.__dict__.pop(name, None)


def difference(first: Recording, second: Recording) -> str | None:
    """Why two recordings of fn are not one list over the same memory (None: they are)."""
    if len(first.keys) != len(second.keys):
        return (
            f"fn made {len(first.keys)} backend calls on one call and {len(second.keys)} on "
            "the next (it branches on data, or on a host value)"
        )
    for k, (a, b) in enumerate(zip(first.keys, second.keys, strict=True)):
        if a == b:
            continue
        name = a[0]
        if name != b[0]:
            return f"call {k + 1} of fn was {name} on one call and {b[0]} on the next"
        for (arg, x), (_, y) in zip(a[1], b[1], strict=True):
            if x == y:
                continue
            if _has_array(x) or _has_array(y):
                return (
                    f"argument {arg!r} of {name} (call {k + 1} of fn) is a new array on every "
                    "call: array work outside the backend's methods (an operator expression "
                    "such as a - y) cannot be recorded"
                )
            return (
                f"argument {arg!r} of {name} (call {k + 1} of fn) changes from call to call "
                f"({x[-1]!r}, then {y[-1]!r}): a host value, which a replay would freeze"
            )
        return f"call {k + 1} of fn ({name}) made arrays of other shapes on the next call"
    return None


def _has_array(key: Any) -> bool:
    return isinstance(key, tuple) and bool(key) and isinstance(key[0], tuple) and len(key) == 5


def _same_bits(a: np.ndarray, b: np.ndarray, block: int = 1 << 24) -> bool:
    """Whether a and b hold the same bytes (NaNs and signed zeros included), compared a
    block at a time so that a big array (the data set) needs no big temporary."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not (a.flags.c_contiguous and b.flags.c_contiguous):
        return a.tobytes() == b.tobytes()
    x, y = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
    return all(np.array_equal(x[i : i + block], y[i : i + block]) for i in range(0, x.size, block))


class TapeReplay(Replay):
    """fn recorded as the list of its backend calls and replayed (see the module doc; where
    the first call makes what later calls reuse, such as workspaces, the second recording is
    compared with the third).
    `mode` is "eager" until the recording is adopted, then "tape"; `reason` says why it was
    not (None while it may still be)."""

    records = True

    def __init__(
        self,
        be: Any,
        fn: Callable[[], None],
        schedule: Callable[[list[Entry]], list[Callable[[], Any]]] | None = None,
    ) -> None:
        super().__init__(fn)
        self.be, self.schedule = be, schedule
        self.calls = 0
        self.first: Recording | None = None
        self.program: list[Callable[[], Any]] = []
        self.entries = 0  # backend calls in the adopted recording

    def __call__(self) -> None:
        self.launches += 1
        if self.mode == "tape":
            for call in self.program:
                call()
            return
        if self.reason is not None:
            self.fn()
            return
        self.calls += 1
        if self.first is None:  # the first call (or the first since one raised)
            first = self._record()
            if first.refused:
                self._fall_back(first.refused)
            else:
                self.first = first
            return
        self._adopt()

    def _record(self) -> Recording:
        rec = Recording(self.be)
        with recording(self.be, rec):
            self.fn()
        return rec

    def _fall_back(self, reason: str) -> None:
        self.reason, self.mode, self.first, self.program = reason, "eager", None, []

    def _adopt(self) -> None:
        """The second call: record again, compare, replay from the state before, compare."""
        first, self.first = self.first, None
        assert first is not None
        before = {k: r.copy() for k, r in first.roots.items()}
        second = self._record()
        reason = second.refused or difference(first, second)
        if reason is not None and self.calls < RECORDINGS and not second.refused:
            self.first = second  # the first call may have made what later calls reuse
            return
        if reason is not None:
            self._fall_back(reason)
            return
        roots = {k: r for k, r in second.roots.items() if r.flags.writeable}
        after = {k: r.copy() for k, r in roots.items()}
        program = (
            self.schedule(second.entries) if self.schedule else [e.call for e in second.entries]
        )
        for k, r in roots.items():
            np.copyto(r, before[k])
        for call in program:
            call()
        if not all(_same_bits(r, after[k]) for k, r in roots.items()):
            for k, r in roots.items():
                np.copyto(r, after[k])
            self._fall_back(
                "replaying fn's recorded backend calls did not reproduce its eager call: it "
                "writes arrays outside the backend's methods"
            )
            return
        self.program, self.mode, self.entries = program, "tape", len(second.entries)


# --------------------------------------------------------------------------- update schedules
def schedule(
    entries: list[Entry], how: str, worker: Callable[[], ThreadPoolExecutor] | None = None
) -> list[Callable[[], Any]]:
    """The calls of `entries` in order, each optimizer update split into parts that move up
    to right after the last earlier call touching their elements ("early"), or that start
    there on `worker`'s thread and are waited for where the update stood ("overlap").
    "end": unchanged."""
    anchored: dict[int, list[Callable[[], Any]]] = {}
    moved: set[int] = set()
    previous = -1
    for u, entry in enumerate(entries):
        if how == "end" or entry.name not in UPDATES:
            continue
        parts = _update_parts(entries, previous, u)
        previous = u
        if parts is None:
            continue
        moved.add(u)
        pending: list[Future[Any]] = []  # filled while the program runs
        for anchor, call in parts:
            if how == "overlap" and anchor < u and worker is not None:
                call = _submit(worker, call, pending)
            anchored.setdefault(anchor, []).append(call)
        if how == "overlap" and any(anchor < u for anchor, _ in parts):
            anchored.setdefault(u - 1, []).append(functools.partial(_wait, pending))
    program: list[Callable[[], Any]] = []
    for e, entry in enumerate(entries):
        if e not in moved:
            program.append(entry.call)
        program.extend(anchored.get(e, ()))
    return program


def _submit(
    worker: Callable[[], ThreadPoolExecutor], call: Callable[[], Any], pending: list[Future[Any]]
) -> Callable[[], Any]:
    def start() -> None:
        pending.append(worker().submit(call))

    return start


def _wait(pending: list[Future[Any]]) -> None:
    try:
        for future in pending:
            future.result()
    finally:
        pending.clear()


def _update_parts(
    entries: list[Entry], previous: int, u: int
) -> list[tuple[int, Callable[[], Any]]] | None:
    """The update entries[u] as (anchor, call) parts over ranges of its flat arrays, each
    anchored at the last entry after `previous` that touches its range of any of them (u
    itself for ranges nothing touches). None where it cannot be split."""
    update = entries[u]
    args = update.bound.arguments
    flat = [k for k, v in args.items() if isinstance(v, np.ndarray) and v.ndim == 1]
    if not flat or "param" not in flat:
        return None
    n = args["param"].size
    if any(args[k].size != n or not args[k].flags.c_contiguous for k in flat):
        return None
    spans = {k: (id(_root(args[k])), *_span(args[k], _root(args[k]))) for k in flat}
    whole = [f for k, v in args.items() if k not in flat for f in _footprints(v)]
    last = np.full(n, -1, dtype=np.int64)
    floor = previous
    for e in range(previous + 1, u):
        for root, lo, hi in entries[e].footprint:
            if any(root == r and lo < h and l < hi for r, l, h in whole):
                floor = e
            for k, (r, start, _) in spans.items():
                item = args[k].itemsize
                first, stop = max(0, (lo - start) // item), min(n, -(-(hi - start) // item))
                if root == r and first < stop:
                    last[first:stop] = e
    parts: list[tuple[int, Callable[[], Any]]] = []
    for lo, hi, anchor in _groups(last, floor, u):
        part = {k: (v[lo:hi] if k in flat else v) for k, v in args.items()}
        parts.append((anchor, functools.partial(update.method, **part)))
    return parts


def _groups(last: np.ndarray, floor: int, u: int) -> list[tuple[int, int, int]]:
    """(start, stop, anchor) ranges of the update: runs of elements last touched by one
    entry, anchored there (or at `floor`, if later); an element nothing touched (padding)
    joins the run before it. A run shorter than MIN_PART elements joins the range before it,
    anchored at the later of their anchors (a part may always run later, up to where the
    update was), so that a layer's bias goes with its weights and no part is too small to pay
    for its call."""
    n = len(last)
    touched = np.flatnonzero(last >= 0)
    if touched.size == 0:
        return [(0, n, u)]
    filled = last[touched[np.maximum(np.searchsorted(touched, np.arange(n), "right") - 1, 0)]]
    anchor = np.maximum(filled, floor)
    cuts = [0, *(np.flatnonzero(np.diff(anchor)) + 1).tolist(), n]
    groups: list[tuple[int, int, int]] = []
    for lo, hi in itertools.pairwise(cuts):
        at = int(anchor[lo])
        if groups and hi - lo < MIN_PART:
            start, _, before = groups.pop()
            groups.append((start, hi, max(before, at)))
        else:
            groups.append((lo, hi, at))
    return groups


def _footprints(value: Any) -> list[Footprint]:
    if isinstance(value, np.ndarray):
        root = _root(value)
        return [(id(root), *_span(value, root))]
    if isinstance(value, (tuple, list)):
        return [f for v in value for f in _footprints(v)]
    return []
