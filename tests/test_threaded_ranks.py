"""Data-parallel training with its ranks as threads of this process: a Communicator whose
collectives meet at a threading.Barrier. The same checks as test_distributed's mpiexec runs,
in-process, where coverage and mutation testing see the trainer's data-parallel steps (the
mpiexec runs are other processes), plus what those runs cannot stage: ranks whose data or
weights differ, and a model data-parallel training refuses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import mpi_worker
import numpy as np
import pytest

from backprop import BatchNormalization, Dense, Sequential
from backprop.distributed import Communicator, DistributedError

WAIT_S = 20  # a rank left waiting at a collective fails the test instead of hanging it


class ThreadRanks:
    """`size` ranks that exchange values through one slot each."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=WAIT_S)
        self.slots: list[Any] = [None] * size
        self.calls: list[str] = []  # the collectives rank 0 made, in order


class ThreadCommunicator(Communicator):
    def __init__(self, ranks: ThreadRanks, rank: int) -> None:
        self.ranks, self.rank, self.size = ranks, rank, ranks.size

    def path(self, be):  # chosen from where be's arrays live, as MPICommunicator's is
        return f"threads, {be.memory} memory"

    def exchange(self, call: str, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (a barrier before and after the read, so no
        rank overwrites its slot while another still reads it)."""
        if self.rank == 0:
            self.ranks.calls.append(call)
        self.ranks.slots[self.rank] = value
        self.ranks.barrier.wait()
        values = list(self.ranks.slots)
        self.ranks.barrier.wait()
        return values

    def allreduce_sum(self, be, x):
        total = sum(self.exchange("allreduce_sum", be.to_numpy(x).copy()))
        be.copy(be.asarray(total, dtype=total.dtype), out=x)

    def broadcast(self, be, x, root=0):
        values = self.exchange("broadcast", be.to_numpy(x).copy())
        be.copy(be.asarray(values[root], dtype=values[root].dtype), out=x)

    def broadcast_host(self, x, root=0):
        x[...] = self.exchange("broadcast_host", x.copy())[root]

    def all_agree(self, flag):
        return all(self.exchange("all_agree", bool(flag)))

    def allgather(self, value):
        return self.exchange("allgather", value)


class NoBroadcast(ThreadCommunicator):
    """Leaves every rank's weights as they are: replicas that start apart."""

    def broadcast(self, be, x, root=0):
        self.exchange("broadcast", None)


def on_ranks(
    work: Callable[[Communicator], Any], size: int = 2, comm: type = ThreadCommunicator
) -> tuple[list[Any], list[BaseException | None], ThreadRanks]:
    """Run `work(communicator)` on `size` threads; each one's result and exception."""
    ranks = ThreadRanks(size)
    results: list[Any] = [None] * size
    errors: list[BaseException | None] = [None] * size

    def rank(r: int) -> None:
        try:
            results[r] = work(comm(ranks, r))
        except BaseException as exc:  # reported to the test
            errors[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 2)
    assert not any(thread.is_alive() for thread in threads), "a rank never finished"
    return results, errors, ranks


def train_rank(dtype: str, optimizer: str = "sgd") -> Callable[[Communicator], Any]:
    def work(comm: Communicator) -> tuple[list[np.ndarray], dict]:
        m = mpi_worker.model(dtype, optimizer)
        history = mpi_worker.train(m, dtype, comm)
        return m.get_weights(), history

    return work


@pytest.mark.parametrize(
    "dtype, optimizer, ranks, tol",
    [
        ("float64", "sgd", 2, 1e-12),
        ("float64", "adam", 2, 1e-12),
        ("float32", "sgd", 2, 1e-5),
        ("float64", "sgd", 3, 1e-12),
    ],
)
def test_ranks_equal_one_process_on_the_same_global_batches(dtype, optimizer, ranks, tol):
    """101 samples in batches of 10: the last batch has 1 sample, so a rank's shard is empty
    (and with 3 ranks the shards differ in size: 4, 3, 3)."""
    results, errors, group = on_ranks(train_rank(dtype, optimizer), ranks)
    assert errors == [None] * ranks
    (w0, h0), *others = results
    for w, h in others:  # the replicas are identical, and so are their Histories
        for a, b in zip(w0, w, strict=True):
            np.testing.assert_array_equal(a, b)
        assert h == h0
    reference = mpi_worker.model(dtype, optimizer)
    expected = mpi_worker.train(reference, dtype, distributed=False)
    for a, b in zip(w0, reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.max(np.abs(b)))
    assert h0.keys() == expected.keys() == {"loss", "val_loss"}
    for key in expected:
        np.testing.assert_allclose(h0[key], expected[key], rtol=tol, err_msg=key)
    # the shapes, the weights and the optimizer's state (Adam's m and v, momentum's
    # velocity) from rank 0, the replicas' check; per epoch, the shuffle from rank 0, one
    # all-reduce per step (11), then the epoch's loss and the validation loss; at the end,
    # the replicas' check
    state = ["broadcast"] * (2 if optimizer == "adam" else 1)
    epoch = ["broadcast_host"] + ["allreduce_sum"] * 13
    start = ["allgather", "broadcast", *state, "allgather"]
    assert group.calls == start + epoch * 3 + ["allgather"]


def test_ranks_start_from_rank_0s_weights_and_optimizer_state():
    """Each rank builds its model with its own seed; fit gives every rank rank 0's weights
    and optimizer state before the first step."""

    def work(comm):
        m = mpi_worker.model("float64", "adam")
        m.layers[0].W[...] += comm.rank  # rank 1's weights differ from rank 0's
        m.optimizer.build([m.network.flat_params], m.backend)
        for state in m.optimizer.state:
            for value in state.values():
                value[...] = comm.rank
        before = [w.copy() for w in m.get_weights()]
        mpi_worker.train(m, "float64", comm)
        return before, m.get_weights()

    results, errors, _ = on_ranks(work)
    assert errors == [None, None]
    (before0, after0), (before1, after1) = results
    assert not np.array_equal(before0[0], before1[0])
    for a, b in zip(after0, after1, strict=True):
        np.testing.assert_array_equal(a, b)
    reference = mpi_worker.model("float64", "adam")
    mpi_worker.train(reference, "float64", distributed=False)
    for a, b in zip(after0, reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_replicas_that_differ_after_the_broadcast_stop_every_rank():
    def work(comm):
        m = mpi_worker.model("float64")
        m.layers[0].W[...] += comm.rank
        return mpi_worker.train(m, "float64", comm)

    _, errors, _ = on_ranks(work, comm=NoBroadcast)
    for error in errors:
        assert isinstance(error, DistributedError)
        assert str(error).startswith("the replicas' initial weights after broadcast differ: ['"), (
            error
        )


def test_one_rank_failing_stops_every_rank_with_its_message():
    def work(comm):
        m = mpi_worker.model("float64")
        if comm.rank == 1:
            mpi_worker.fail_third_backward(m)
        return mpi_worker.train(m, "float64", comm)

    _, errors, group = on_ranks(work)
    message = (
        "data-parallel training stopped on every rank because "
        "rank 1: ValueError: injected failure in the third batch"
    )
    for error in errors:
        assert isinstance(error, DistributedError) and str(error) == message
    assert isinstance(errors[1].__cause__, ValueError)
    assert errors[0].__cause__ is None  # rank 0's own step went well
    assert group.calls.count("allreduce_sum") == 3  # stopped at the third step


def test_a_training_set_smaller_than_the_ranks_is_refused_on_every_rank():
    def work(comm):
        m = mpi_worker.model("float64")
        x, y, _, _ = mpi_worker.problem("float64")
        before = m.get_weights()
        with pytest.raises(ValueError) as caught:
            m.fit(x[:2], y[:2], epochs=1, verbose=0, distributed=comm)
        for a, b in zip(before, m.get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)  # nothing trained
        return str(caught.value)

    results, errors, _ = on_ranks(work, size=3)
    assert errors == [None] * 3
    assert (
        results
        == [
            "the training set has 2 samples but there are 3 ranks: each rank needs at least "
            "one sample"
        ]
        * 3
    )


def test_ranks_holding_different_data_are_refused():
    def work(comm):
        m = mpi_worker.model("float64")
        x, y, x_val, y_val = mpi_worker.problem("float64")
        rows = 101 - comm.rank  # rank 1 has one sample fewer
        with pytest.raises(ValueError) as caught:
            m.fit(x[:rows], y[:rows], validation_data=(x_val, y_val), verbose=0, distributed=comm)
        return str(caught.value)

    results, errors, _ = on_ranks(work)
    assert errors == [None, None]
    assert (
        results
        == [
            "the training data differ across ranks (samples, x and y row shapes, validation "
            "samples per rank): [(101, (12,), (4,), 23), (100, (12,), (4,), 23)]"
        ]
        * 2
    )


def test_batch_normalization_is_refused_in_data_parallel_training():
    def work(comm):
        m = Sequential([Dense(4), BatchNormalization(), Dense(2, "softmax")], input_dim=3)
        m.compile(loss="categorical_crossentropy", optimizer="sgd")
        with pytest.raises(ValueError) as caught:
            m.fit(np.ones((4, 3)), np.eye(2)[[0, 1, 0, 1]], verbose=0, distributed=comm)
        assert str(caught.value) == (
            "BatchNormalization is not supported in data-parallel training: each rank would "
            "normalize with its own shard's statistics and the replicas' moving statistics "
            "would drift apart; train it in one process"
        )

    _, errors, group = on_ranks(work)
    assert errors == [None, None]
    assert group.calls == []  # refused before any collective
