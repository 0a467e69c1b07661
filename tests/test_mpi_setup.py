"""Setting up data-parallel runs on machines unlike this one, simulated: the launcher that
matches mpi4py's MPI library (an Open MPI mpiexec that refuses root, next to MPICH's), the
all-reduce path of ranks that share one GPU, and a communicator set-up that fails on a rank."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends import emulated_cupy
from backprop import distributed
from backprop.distributed import (
    NCCL,
    STAGED,
    DistributedError,
    MPICommunicator,
    mpiexec_command,
)

PYTHON = sys.executable

# A stand-in for Open MPI's mpiexec on a machine where we are root: says what it is, refuses
# to start the way Open MPI does unless both variables are set, else runs the program once.
FAKE_OPEN_MPI = f"""#!{PYTHON}
import os, subprocess, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("mpiexec (Open MPI) 5.0.3")
    sys.exit(0)
if not (
    os.environ.get("OMPI_ALLOW_RUN_AS_ROOT") == "1"
    and os.environ.get("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM") == "1"
):
    print("mpiexec has detected an attempt to run as root.", file=sys.stderr)
    sys.exit(1)
while args and args[0].startswith("-"):
    args = args[2:] if args[0] == "-n" else args[1:]
sys.exit(subprocess.call(args))
"""

FAKE_MPICH = f"""#!{PYTHON}
import subprocess, sys
if sys.argv[1:] == ["--version"]:
    print("HYDRA build details:\\n    Version: 4.2.0")
    sys.exit(0)
sys.exit(subprocess.call(sys.argv[3:]))
"""


def _script(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine with MPICH's mpiexec beside Python (as the mpi extra installs it) and Open
    MPI's on PATH; the test says which library mpi4py was built against."""
    venv_bin = tmp_path / "venv" / "bin"
    _script(venv_bin, "mpiexec", FAKE_MPICH)
    system_bin = tmp_path / "usr" / "bin"
    _script(system_bin, "mpiexec", FAKE_OPEN_MPI)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(system_bin))  # no other launcher of this machine
    return venv_bin / "mpiexec", system_bin / "mpiexec"


def test_open_mpi_library_gets_open_mpi_launcher_and_may_run_as_root(machine, monkeypatch):
    _, open_mpi = machine
    monkeypatch.setattr(distributed, "mpi_library", lambda: "Open MPI v5.0.3, package: ...")
    monkeypatch.setattr(os, "geteuid", lambda: 0, raising=False)
    command, env = mpiexec_command(2)
    assert command[:3] == [str(open_mpi), "-n", "2"]
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"
    done = subprocess.run(
        [*command, PYTHON, "-c", "print('rank ran')"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "rank ran"


def test_open_mpi_as_another_user_gets_no_root_override(machine, monkeypatch):
    monkeypatch.setattr(distributed, "mpi_library", lambda: "Open MPI v4.1.2")
    monkeypatch.setattr(os, "geteuid", lambda: 1000, raising=False)
    monkeypatch.delenv("OMPI_ALLOW_RUN_AS_ROOT", raising=False)
    _, env = mpiexec_command(2)
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in env


def test_mpich_library_gets_mpich_launcher(machine, monkeypatch):
    mpich, _ = machine
    monkeypatch.setattr(distributed, "mpi_library", lambda: "MPICH Version:      4.2.0")
    command, _ = mpiexec_command(2)
    assert command == [str(mpich), "-n", "2"]


def test_no_launcher_of_the_library_says_what_it_found(machine, monkeypatch):
    mpich, open_mpi = machine
    mpich.unlink()
    monkeypatch.setattr(distributed, "mpi_library", lambda: "MPICH Version:      4.2.0")
    with pytest.raises(RuntimeError) as caught:
        mpiexec_command(2)
    message = str(caught.value)
    assert "no mpiexec for mpi4py's MPI library (MPICH Version:      4.2.0)" in message
    assert f"found {open_mpi} (Open MPI)" in message


# --------------------------------------------------------------------------- GPUs per rank
class FakeComm:
    """Rank `rank` of 2 on one machine, as mpi4py would show it; `peer(value)` is what the
    other rank contributes to each allgather."""

    def __init__(self, rank, peer):
        self.rank, self.peer = rank, peer

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return 2

    def Split_type(self, kind):
        return self

    def Free(self):
        pass

    def allgather(self, value):
        other = self.peer(value)
        return [value, other] if self.rank == 0 else [other, value]


def _gpu_backend(index):
    be = emulated_cupy.emulated_cupy_backend()
    be.device = emulated_cupy._Device(index)
    return be


@pytest.fixture
def nccl(monkeypatch):
    """NCCL present; records the communicators made."""
    pytest.importorskip("mpi4py")
    made = []
    monkeypatch.setattr(MPICommunicator, "_cupy_nccl_available", staticmethod(lambda: True))
    monkeypatch.setattr(MPICommunicator, "_nccl_comm", lambda self, be: made.append(be))
    return made


def test_two_ranks_on_one_gpu_stage_through_host_memory(nccl):
    """Both ranks on GPU 0 (one GPU, two ranks): NCCL would refuse, so no NCCL communicator
    is made and the all-reduce goes through host memory, on both ranks alike."""
    for rank in (0, 1):
        comm = MPICommunicator(FakeComm(rank, peer=lambda value: value))
        assert comm.local_rank == rank and comm.local_size == 2
        assert comm.prepare(_gpu_backend(0)) == STAGED
    assert nccl == []


def test_ranks_on_their_own_gpus_use_nccl(nccl):
    def peer(value):  # the other rank is on GPU 1
        return (value[0], 1) if isinstance(value, tuple) else value

    be = _gpu_backend(0)
    comm = MPICommunicator(FakeComm(0, peer))
    assert comm.prepare(be) == NCCL
    assert comm.path(be) == NCCL
    assert nccl == [be]


def test_communicator_set_up_failing_on_one_rank_stops_every_rank(nccl, monkeypatch):
    """NCCL failing on rank 1 raises one DistributedError naming it on rank 0 too, not a raw
    traceback on one rank and a hang on the other."""

    def peer(value):
        if isinstance(value, tuple):
            return (value[0], 1)
        if value is None:  # the set-up outcome: rank 1 failed
            return "NcclError: NCCL_ERROR_INVALID_USAGE"
        return value

    comm = MPICommunicator(FakeComm(0, peer))
    with pytest.raises(DistributedError, match=r"rank 1: NcclError: NCCL_ERROR_INVALID_USAGE"):
        comm.prepare(_gpu_backend(0))


def test_host_arrays_reduce_on_the_host_without_asking_the_gpus():
    pytest.importorskip("mpi4py")
    from backends import get_backend

    comm = MPICommunicator(FakeComm(0, peer=lambda value: value))
    assert comm.prepare(get_backend("numpy")) == distributed.HOST
    assert comm.prepare(get_backend("strict")) == STAGED
