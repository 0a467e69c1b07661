"""Data-parallel training over MPI: what `fit(..., distributed=True)` needs from a process
group, behind one small interface.

Each process (rank) holds a full replica of the model. Every global batch is split into
contiguous shards, one per rank; each rank backpropagates its shard, scales its gradient by
shard / batch, and one all-reduce (sum) over the model's single flat gradient buffer gives
every rank the gradient of the mean cost over the global batch, so every rank applies the
same update as single-process training would.

Paths for the all-reduce, chosen per backend and reported by `Communicator.path(backend)`:
NumPy arrays go to MPI directly; CuPy arrays go through NCCL when CuPy has it, else straight to
MPI when MPI is CUDA-aware, else through host memory; any other backend stages through host
memory.

mpi4py and an MPI library are the optional extra `mpi` (pip install "xpbackprop[mpi]").
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from backends import Array, Backend

MPI_EXTRA = "pip install 'xpbackprop[mpi]'"
# Environment variables the common MPI launchers set in every process they start.
LAUNCHER_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_under_mpi() -> bool:
    """True when this process was started by mpiexec/mpirun with more than one process."""
    for name in LAUNCHER_SIZE_VARIABLES:
        try:
            if int(os.environ.get(name, "1")) > 1:
                return True
        except ValueError:
            continue
    return False


class DistributedError(RuntimeError):
    """A rank failed during data-parallel training; every rank raises it, with the message."""


class Communicator:
    """A process group of one: the single-process case, where every collective is a no-op."""

    rank = 0
    size = 1

    def path(self, be: Backend) -> str:
        return "single process"

    def allreduce_sum(self, be: Backend, x: Array) -> None:
        """Sum `x` over all ranks, in place on every rank."""

    def broadcast(self, be: Backend, x: Array, root: int = 0) -> None:
        """Overwrite `x` on every rank with root's `x`."""

    def broadcast_host(self, x: Any, root: int = 0) -> None:
        """Overwrite the host NumPy array `x` on every rank with root's."""

    def all_agree(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on every rank."""
        return flag

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's `value` (small host objects: numbers, strings), in rank order."""
        return [value]


class MPICommunicator(Communicator):
    """A communicator over an mpi4py communicator (COMM_WORLD by default)."""

    def __init__(self, comm: Any = None) -> None:
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise RuntimeError(
                f"distributed training needs mpi4py and an MPI library: {MPI_EXTRA}"
            ) from exc
        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._nccl: Any = None

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"

    # ------------------------------------------------------------------ paths
    def path(self, be: Backend) -> str:
        if be.name == "numpy":
            return "MPI on host buffers"
        if be.name == "cupy":
            if self._cupy_nccl_available():
                return "NCCL on device buffers"
            if self._cuda_aware():
                return "CUDA-aware MPI on device buffers"
        return "MPI through host memory (staged copies)"

    def _cuda_aware(self) -> bool:
        query = getattr(self.MPI, "Query_cuda_support", None)
        try:
            return bool(query()) if query is not None else False
        except Exception:  # an MPI without the extension
            return False

    @staticmethod
    def _cupy_nccl_available() -> bool:
        try:
            from cupy.cuda import nccl
        except ImportError:
            return False
        return bool(getattr(nccl, "available", True))

    def _nccl_comm(self, be: Backend) -> Any:
        # NCCL's unique id is made on rank 0 and sent to the others over MPI, once
        if self._nccl is None:
            from cupy.cuda import nccl

            uid = nccl.get_unique_id() if self.rank == 0 else None
            uid = self.comm.bcast(uid, root=0)
            with be.device:
                self._nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self._nccl

    # ------------------------------------------------------------------ collectives
    def allreduce_sum(self, be: Backend, x: Array) -> None:
        path = self.path(be)
        if path.startswith("MPI on host"):
            self.comm.Allreduce(self.MPI.IN_PLACE, x, op=self.MPI.SUM)
        elif path.startswith("NCCL"):
            from cupy.cuda import nccl

            kind = nccl.NCCL_FLOAT32 if x.dtype.itemsize == 4 else nccl.NCCL_FLOAT64
            stream = be.xp.cuda.get_current_stream()
            self._nccl_comm(be).allReduce(
                x.data.ptr, x.data.ptr, x.size, kind, nccl.NCCL_SUM, stream.ptr
            )
        elif path.startswith("CUDA-aware"):
            be.synchronize()
            self.comm.Allreduce(self.MPI.IN_PLACE, x, op=self.MPI.SUM)
        else:
            host = be.to_numpy(x).copy()
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            be.copy(be.asarray(host, dtype=host.dtype), out=x)

    def broadcast(self, be: Backend, x: Array, root: int = 0) -> None:
        if self.path(be).startswith("MPI on host"):
            self.comm.Bcast(x, root=root)
            return
        host = be.to_numpy(x).copy()
        self.comm.Bcast(host, root=root)
        be.copy(be.asarray(host, dtype=host.dtype), out=x)

    def broadcast_host(self, x: Any, root: int = 0) -> None:
        self.comm.Bcast(x, root=root)

    def all_agree(self, flag: bool) -> bool:
        return bool(self.comm.allreduce(int(bool(flag)), op=self.MPI.MIN))

    def allgather(self, value: Any) -> list[Any]:
        return list(self.comm.allgather(value))


def get_communicator(distributed: bool | Communicator) -> Communicator:
    """fit's `distributed` argument: False -> a single process; True -> MPI's COMM_WORLD;
    a Communicator -> itself."""
    if isinstance(distributed, Communicator):
        return distributed
    if distributed is True:
        return MPICommunicator()
    if distributed is False:
        return Communicator()
    raise TypeError(
        f"distributed must be True, False or a Communicator, got {type(distributed).__name__}"
    )


def shard(start: int, stop: int, rank: int, size: int) -> slice:
    """Rank's contiguous part of rows [start, stop): sizes differ by at most one, the larger
    parts first (as numpy.array_split). A part may be empty when stop - start < size."""
    n = stop - start
    base, extra = divmod(n, size)
    begin = start + rank * base + min(rank, extra)
    return slice(begin, begin + base + (1 if rank < extra else 0))


def fingerprint(be: Backend, x: Array) -> str:
    """A short hash of an array's bytes, to check that replicas hold the same weights."""
    return hashlib.sha256(be.to_numpy(x).tobytes()).hexdigest()[:16]


def limit_blas_threads(ranks_per_machine: int) -> int | None:
    """Give each of `ranks_per_machine` processes an equal share of the cores' BLAS threads
    (at least one), so ranks do not oversubscribe the machine; returns the limit set, or None
    when threadpoolctl (part of the mpi extra) is not installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    threads = max(1, (os.cpu_count() or 1) // max(1, ranks_per_machine))
    threadpool_limits(limits=threads, user_api="blas")
    return threads


def ranks_per_machine() -> int:
    """How many ranks share this machine, from the launcher's environment (1 if unknown)."""
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_SIZE", "PMIX_SIZE"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1
