"""What a capture that fails on a GPU leaves behind, verified on the emulated CuPy
(backends/emulated_cupy.py), which injects the failures (`failing`), keeps each cuBLAS
handle's stream and workspace, and holds a recorded graph's memory weakly, as addresses.

Each fallback: training goes on eagerly with exactly one RuntimeWarning, its results equal
eager training, and nothing is left behind (no capture in progress, no arrays kept)."""

from __future__ import annotations

import gc
import re
import warnings

import numpy as np
import pytest

from backends import emulated_cupy as ce
from backprop import SGD, Dense, Sequential


def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 12)).astype(np.float32), rng.integers(0, 3, n)


def _model(be):
    model = Sequential(
        [Dense(9, "tanh"), Dense(7, "relu"), Dense(3, "softmax")], input_dim=12, backend=be, seed=3
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1, momentum=0.9))
    return model


X_HOST, Y = _data()


def _fit(model, X, epochs=4, capture=True):
    # 5 steps of batch 16: one chunk, warmed up in epoch 1 and recorded in epoch 2; fit
    # again with the same X, it goes on with the same replay
    return model.fit(X, Y, epochs=epochs, batch_size=16, verbose=0, capture=capture)


def _eager_weights():
    model = _model(ce.emulated_cupy_backend())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = _fit(model, model.backend.asarray(X_HOST), capture=False)
    return model.get_weights(), history.history


def _check_fallback(what, match, times=1, after=0):
    """Trains through a fault injected into the capture; returns the backend and replay."""
    be = ce.emulated_cupy_backend()
    model, X = _model(be), be.asarray(X_HOST)
    with ce.failing(what, times, after), pytest.warns(RuntimeWarning) as record:
        history = _fit(model, X)
    assert len(record) == 1 and record[0].category is RuntimeWarning
    assert re.search(match, str(record[0].message)), record[0].message
    (replay,) = model.trainer.train_function.replays.values()
    assert replay.mode == "eager" and replay.graph is None
    # nothing left behind: no capture in progress, no stream made current, no arrays kept
    assert be._capture is None and replay.keep == []
    assert ce.STATE.capturing is None and ce.STATE.stream is None
    weights, eager_history = _eager_weights()
    for got, want in zip(model.get_weights(), weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert history.history == eager_history
    # and it stays so: later epochs run eagerly, warn no more and keep nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(model, X, epochs=2)
    assert model.trainer.train_function.replays == {(5, 70): replay}
    assert be._capture is None and replay.keep == [] and replay.mode == "eager"
    return be, replay


def test_failed_begin_capture_leaves_no_capture_state():
    """begin_capture fails: the backend must not think it captures (its matmuls would go to
    nvmath on the capture stream, unordered, keeping every operand)."""
    _check_fallback("begin_capture", r"capture failed \(CaptureError: cudaStreamBeginCapture")


def test_cublas_error_creating_the_handle_falls_back_to_eager():
    """nvmath's cuBLASError is an Exception, not a RuntimeError: it must not abort fit."""
    be, _ = _check_fallback("cublas", r"without a CUDA graph: cuBLASError: CUBLAS_STATUS_ALLOC")
    assert be._gemm_state is None


def test_cublas_error_during_capture_falls_back_to_eager():
    # after create (epoch 1), then set_stream and set_workspace: the first captured GEMM
    _check_fallback("cublas", r"capture failed \(cuBLASError: CUBLAS_STATUS_INTERNAL", after=3)


@pytest.fixture
def allocating_step(monkeypatch):
    """Each step allocates a temporary the warmed pool serves (used, then freed at once), and
    one of a size it has not seen, which needs cudaMalloc (our steps allocate nothing once
    warmed up, but a captured function may: CuPy's reductions take scratch memory from the
    current pool)."""
    from backprop.network import Network

    real = Network.backward
    steps = [0]

    def backward_with_temporaries(self, Y, loss, shortcut=True):
        be = self.backend
        be.multiply(be.add(Y, 1.0), 2.0)
        steps[0] += 1
        be.zeros((steps[0],))
        return real(self, Y, loss, shortcut)

    monkeypatch.setattr(Network, "backward", backward_with_temporaries)


def test_out_of_memory_during_capture_drops_the_graph(allocating_step):
    """cudaMalloc fails twice during the capture: CuPy's pool frees its free blocks, tries
    again, and raises OutOfMemoryError."""
    _check_fallback("cudaMalloc", r"capture failed \(OutOfMemoryError: out of memory", times=2)


def test_pool_freeing_its_blocks_during_capture_drops_the_graph(allocating_step):
    """cudaMalloc fails once during the capture and succeeds on the retry, after the pool has
    freed all its free blocks, some of which nodes recorded before point to: the graph
    would write into freed memory, so it is dropped (the pool's totals changed)."""
    _check_fallback("cudaMalloc", r"memory pool changed while recording")


def test_pool_freeing_its_blocks_during_capture_is_caught_by_the_emulation(
    allocating_step, monkeypatch
):
    """Without the check of the pool's totals, the emulation's graph fails loudly on its
    first launch: what a GPU would do silently."""
    monkeypatch.setattr(ce.MemoryPool, "total_bytes", lambda self: 0)
    be = ce.emulated_cupy_backend()
    model = _model(be)
    with ce.failing("cudaMalloc", 1), pytest.raises(ce.StaleGraphError, match="freed"):
        _fit(model, be.asarray(X_HOST))


def test_workspace_set_after_stream_so_capture_allocates_nothing():
    """cublasSetStream resets the handle's workspace: set before it, the 32 MiB workspace
    would never be used and cuBLAS would allocate inside the capture (memory nodes)."""
    be = ce.emulated_cupy_backend()
    before = len(ce.graph_memory_nodes())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(_model(be), be.asarray(X_HOST))
    assert ce.graph_memory_nodes()[before:] == [0]
    handle, workspace, _ = be._gemm_state
    assert be._blas.live[handle]["workspace"] == (workspace.data.ptr, workspace.nbytes)


def test_emulated_set_stream_resets_the_workspace_and_a_gemm_without_one_allocates():
    be = ce.emulated_cupy_backend()
    be._prepare_capture()
    blas, (handle, workspace, _) = be._blas, be._gemm_state
    blas.set_workspace(handle, workspace.data.ptr, workspace.nbytes)
    stream = be.xp.cuda.Stream(non_blocking=True)
    blas.set_stream(handle, stream.ptr)
    assert blas.live[handle] == {"stream": stream.ptr, "workspace": None, "device": 0}
    a, out = be.asarray(np.ones((2, 2), np.float32)), be.zeros((2, 2))
    replay = be.capture(lambda: None)
    with stream:
        stream.begin_capture()
        be._capture = replay
        be.matmul(a, a, out=out)
        be._capture = None
        graph = stream.end_capture()
    assert graph.memory_nodes == 1


def test_replaying_a_graph_whose_arrays_were_freed_fails():
    """A graph holds addresses, not objects: launched after the pool gave a recorded block
    back to the device, or after an array it writes (from no pool) is gone, it fails."""
    be = ce.emulated_cupy_backend()
    cp = be.xp
    x = be.asarray(np.ones(4, np.float32))
    pool, stream = cp.cuda.MemoryPool(), cp.cuda.Stream(non_blocking=True)
    with cp.cuda.using_allocator(pool.malloc), stream:
        be.add(be.multiply(x, 2.0), 1.0, out=x)  # warm-up: one temporary of 16 bytes
        stream.begin_capture()
        be.add(be.multiply(x, 2.0), 1.0, out=x)  # the temporary dies: back to the pool
        graph = stream.end_capture()
    graph.launch()
    np.testing.assert_array_equal(be.to_numpy(x), np.full(4, 7.0))  # 1 -> 3 (warm-up) -> 7
    assert pool.n_free_blocks() == 1
    pool.free_all_blocks()
    with pytest.raises(ce.StaleGraphError, match="freed"):
        graph.launch()
    # an array the graph writes, from no pool, freed
    y = be.zeros((3,))
    with stream:
        stream.begin_capture()
        be.add(y, 1.0, out=y)
        graph = stream.end_capture()
    graph.launch()
    del y
    gc.collect()
    with pytest.raises(ce.StaleGraphError):
        graph.launch()


def test_blas_handle_destroyed_with_the_backend():
    be = ce.emulated_cupy_backend()
    model = _model(be)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fit(model, be.asarray(X_HOST), epochs=2)
    blas, handle = be._blas, be._gemm_state[0]
    assert list(blas.live) == [handle]
    del model, be
    gc.collect()
    assert blas.live == {}


def test_failing_names_what_it_can_fail():
    with pytest.raises(ValueError, match="what must be one of"), ce.failing("launch"):
        pass
