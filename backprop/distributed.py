"""Data-parallel training over MPI: what `fit(..., distributed=True)` needs from a process
group, behind one small interface.

Each process (rank) holds a full replica of the model. Every global batch is split into
contiguous shards, one per rank; each rank backpropagates its shard, scales its gradient by
shard / batch, and one all-reduce (sum) over the model's single flat gradient buffer gives
every rank the gradient of the mean cost over the global batch, so every rank applies the
same update as single-process training would.

Paths for the all-reduce, chosen per backend by `Communicator.prepare(backend)` (on every rank
at once, so they agree) from where the backend says its arrays live (`Backend.memory`): host
arrays go to MPI directly; CUDA arrays go through NCCL when CuPy has it, else straight to MPI
when MPI is CUDA-aware, else through host memory; any other backend stages through host
memory. Ranks that share a GPU (more ranks on a machine than GPUs) stage through host memory
too: NCCL refuses two ranks on one device.

mpi4py and an MPI library are the optional extra `mpi` (`pip install -e ".[mpi]"` in a
checkout).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from backends import Array, Backend

MPI_EXTRA = 'pip install -e ".[mpi]" in a checkout of xpbackprop'
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


# The all-reduce paths, as `Communicator.path` reports them.
HOST = "MPI on host buffers"
NCCL = "NCCL on device buffers"
CUDA_AWARE = "CUDA-aware MPI on device buffers"
STAGED = "MPI through host memory (staged copies)"


def _device_index(be: Backend) -> int:
    return int(getattr(be.device, "id", 0))


class DistributedError(RuntimeError):
    """A rank failed during data-parallel training; every rank raises it, with the message."""


class Communicator:
    """A process group of one: the single-process case, where every collective is a no-op."""

    rank = 0
    size = 1

    def path(self, be: Backend) -> str:
        return "single process"

    def prepare(self, be: Backend) -> str:
        """Choose (on every rank together) and set up the all-reduce path for `be`'s arrays;
        returns it. A failure on any rank raises DistributedError on every rank."""
        return self.path(be)

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
        # this rank's place among the ranks on its machine (whatever the launcher), which
        # picks its GPU: the ranks sharing memory form one group
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        local.Free()
        self._nccl: Any = None
        self._paths: dict[int, tuple[Backend, str]] = {}  # id(backend) -> (backend, path)

    def __repr__(self) -> str:
        return f"MPICommunicator(rank={self.rank}, size={self.size})"

    # ------------------------------------------------------------------ paths
    def path(self, be: Backend) -> str:
        """The all-reduce path for `be`'s arrays: the one `prepare` chose, else the one this
        rank would choose on its own."""
        chosen = self._paths.get(id(be))
        return chosen[1] if chosen is not None else self._local_path(be)

    def _local_path(self, be: Backend) -> str:
        if be.memory == "host":
            return HOST
        if be.memory == "cuda":
            if self._cupy_nccl_available():
                return NCCL
            if self._cuda_aware():
                return CUDA_AWARE
        return STAGED

    def prepare(self, be: Backend) -> str:
        path = self._local_path(be)
        if be.memory == "cuda":  # two ranks on one GPU: NCCL refuses them, staging works
            gpus = self.comm.allgather((self.MPI.Get_processor_name(), _device_index(be)))
            if len(set(gpus)) < len(gpus):
                path = STAGED
        if len(set(self.comm.allgather(path))) > 1:  # ranks that differ meet on the host
            path = STAGED
        if path == NCCL:
            error = None
            try:
                self._nccl_comm(be)
            except Exception as exc:  # reported to every rank below, then raised everywhere
                error = f"{type(exc).__name__}: {exc}"
            errors = self.comm.allgather(error)
            if any(e is not None for e in errors):
                reports = [f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None]
                raise DistributedError(
                    "setting up NCCL for the all-reduce failed on every rank because "
                    + "; ".join(reports)
                )
        self._paths[id(be)] = (be, path)
        return path

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
        if path == HOST:
            self.comm.Allreduce(self.MPI.IN_PLACE, x, op=self.MPI.SUM)
        elif path == NCCL:
            from cupy.cuda import nccl

            kind = nccl.NCCL_FLOAT32 if x.dtype.itemsize == 4 else nccl.NCCL_FLOAT64
            # the stream of be's GPU that its gradient kernels were queued on (not GPU 0's)
            stream = be.collective_stream()
            self._nccl_comm(be).allReduce(
                x.data.ptr, x.data.ptr, x.size, kind, nccl.NCCL_SUM, stream.ptr
            )
        elif path == CUDA_AWARE:
            be.synchronize()
            self.comm.Allreduce(self.MPI.IN_PLACE, x, op=self.MPI.SUM)
        else:
            host = be.to_numpy(x).copy()
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            be.copy(be.asarray(host, dtype=host.dtype), out=x)

    def broadcast(self, be: Backend, x: Array, root: int = 0) -> None:
        if self.path(be) == HOST:
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


MPI_FAMILIES = {
    # library version text -> the launcher family that starts its processes
    "Open MPI": "Open MPI",
    "MPICH": "MPICH",
    "Intel(R) MPI": "MPICH",  # Intel MPI and MVAPICH are MPICH derivatives, launched by Hydra
    "MVAPICH": "MPICH",
}


def _family(text: str) -> str | None:
    """The MPI family a library version or `mpiexec --version` text names, if any."""
    if "Open MPI" in text or "OpenRTE" in text or "PRRTE" in text:
        return "Open MPI"
    if "HYDRA" in text or any(name in text for name in MPI_FAMILIES if name != "Open MPI"):
        return "MPICH"
    return None


def mpi_library() -> str:
    """The first line of the MPI library's version, as mpi4py reports it ("MPICH Version:
    4.2.0", "Open MPI v5.0.3, ..."); RuntimeError without mpi4py."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError(f"data-parallel training needs mpi4py: {MPI_EXTRA}") from exc
    return str(MPI.Get_library_version()).strip().splitlines()[0]


def _launcher_family(path: str) -> str | None:
    try:
        done = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return _family(done.stdout + done.stderr)


def mpiexec_command(processes: int) -> tuple[list[str], dict[str, str]]:
    """How to start `processes` ranks of a Python program with the MPI library mpi4py uses:
    the command prefix (append the program) and the environment to run it in.

    The launcher must belong to that library (Open MPI's cannot start MPICH processes, nor the
    other way round), so the candidates (the mpiexec beside this interpreter, as the `mpi`
    extra installs it, then mpiexec and mpirun on PATH) are asked `--version` and the first of
    the right family is taken. Open MPI refuses to run as root unless told to; containers
    run as root, so the environment says so there. RuntimeError names what is missing."""
    library = mpi_library()
    family = _family(library)
    candidates = [str(Path(sys.executable).parent / "mpiexec")]
    candidates += [found for name in ("mpiexec", "mpirun") if (found := shutil.which(name))]
    seen: list[str] = []
    for path in dict.fromkeys(candidates):
        if not Path(path).exists():
            continue
        kind = _launcher_family(path)
        seen.append(f"{path} ({kind or 'unknown MPI'})")
        if family is None or kind == family:
            break
    else:
        raise RuntimeError(
            f"no mpiexec for mpi4py's MPI library ({library}) was found"
            + (f"; found {', '.join(seen)}" if seen else " beside Python or on PATH")
            + f": install that library's launcher, or {MPI_EXTRA} for MPICH's"
        )
    command, env = [path, "-n", str(processes)], dict(os.environ)
    if kind == "Open MPI":
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
        if processes > (os.cpu_count() or 1):
            command.append("--oversubscribe")  # Open MPI counts one slot per core
    return command, env
