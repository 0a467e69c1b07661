"""A CuPy backend on GPU 1 computes on GPU 1: every array it makes, every kernel, GEMM, copy
and collective it issues. Verified on the emulated CuPy (backends/emulated_cupy.py), which has
two GPUs, keeps each array on the device it was made on, and raises CuPy's peer-access error
on an operation whose arrays live on another device than the current one (GPU 0 outside any
`with Device(k)`), as a real machine without peer access does."""

from __future__ import annotations

import inspect
import sys
import types
import warnings

import numpy as np
import pytest

from backends import emulated_cupy as ce
from backends.cupy_backend import CupyBackend
from backprop import SGD, Adagrad, Adam, Dense, RMSprop, Sequential, load_model
from backprop.distributed import NCCL, MPICommunicator

GPU = 1  # not the default device: work that forgets to enter it lands on GPU 0


@pytest.fixture
def be(monkeypatch):
    """An emulated CuPy backend on GPU 1, where allocating anything on another GPU fails the
    test (the peer-access check catches operations that mix devices; this catches work that
    runs entirely on GPU 0)."""
    backend = ce.emulated_cupy_backend(device=GPU)
    allocate = ce._new

    def on_gpu_1_only(value):
        assert ce._Devices.current == GPU, f"an array allocated on GPU {ce._Devices.current}"
        return allocate(value)

    monkeypatch.setattr(ce, "_new", on_gpu_1_only)
    return backend


def _on_gpu_1(*arrays):
    for x in arrays:
        assert isinstance(x, ce.DeviceArray) and x.device_id == GPU, x
    assert ce._Devices.current == 0, "a method left its device current"


# ---------------------------------------------------------------- the emulation's own check
def test_emulation_refuses_an_operation_on_another_devices_array():
    """So the tests below cannot pass with the check silently off."""
    cp = ce.fake_cupy()
    assert cp.cuda.runtime.getDeviceCount() == 2
    with cp.cuda.Device(1):
        x = cp.ones((3, 3), dtype=np.float32)
        y = x + 1  # on its own device: fine
        assert cp.cuda.Device().id == 1
    assert x.device_id == y.device_id == 1 and x.T.device_id == 1  # views stay with the base
    assert cp.cuda.Device().id == 0
    kernel = cp.ElementwiseKernel("T x", "T y", "y = x + x", "twice")
    blas = ce.fake_cublas()
    handle = blas.create()  # on GPU 0
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    ptr = x.data.ptr  # x = x @ x, column-major 3 x 3
    gemm_args = (0, 0, 3, 3, 3, one.ctypes.data, ptr, 3, ptr, 3, zero.ctypes.data, ptr, 3)
    refused = {
        "ufunc": lambda: x + 1,
        "out=": lambda: cp.add(cp.ones(3, dtype=np.float32), 1, out=x[0]),
        "reduction": lambda: cp.sum(x, axis=0),
        "matmul": lambda: cp.matmul(x, x),
        "kernel": lambda: kernel(x),
        "gather": lambda: x[cp.arange(2)],
        "copy": lambda: x.copy(),
        "astype": lambda: x.astype(np.float64),
        "setitem": lambda: x.__setitem__(0, 2.0),
        "asarray copy": lambda: cp.asarray(x, dtype=np.float64),
        "cuBLAS": lambda: blas.sgemm(handle, *gemm_args),
    }
    for what, operation in refused.items():
        with pytest.raises(ce.PeerAccessError, match="Peer access is unavailable"):
            operation()
            pytest.fail(f"{what} on GPU 1's array ran on GPU 0")
    with cp.cuda.Device(1), pytest.raises(RuntimeError, match="handle 1 of device 0"):
        blas.sgemm(handle, *gemm_args)
    with cp.cuda.Device(0):
        z = cp.empty_like(x)  # CuPy allocates on the current device, not x's
    assert z.device_id == 0


# ---------------------------------------------------------------- the backend
def test_every_public_method_of_the_cupy_backend_enters_its_device():
    """Its own methods and the base class's (zeros_like, copy, ...) alike."""
    for name, method in inspect.getmembers(CupyBackend, inspect.isfunction):
        if not name.startswith("_") and name != "device_context":
            assert hasattr(method, "__wrapped__"), f"CupyBackend.{name} runs on any device"


def test_backend_methods_on_gpu_1_compute_there(be):
    """The methods the issue found on GPU 0: matmul, the arithmetic, take, sum, empty_like
    (inside the activations), zeros_like and copy (the base class's)."""
    rng = np.random.default_rng(0)
    a = be.asarray(rng.random((4, 3)), dtype="float32")
    W = be.asarray(rng.random((5, 3)), dtype="float32")
    _on_gpu_1(a, W)
    out = be.empty((4, 5))
    with be.device_context():  # an operator on its arrays, as a network writes one
        condition = a > 0.5
    results = [
        condition,
        be.matmul(a, W.T),
        be.matmul(a, W.T, out=out),
        be.add(a, a),
        be.subtract(a, 1.0),
        be.multiply(a, 2.0),
        be.divide(a, a),
        be.maximum(a, 0.5),
        be.minimum(a, 0.5),
        be.take(a, be.asarray(np.array([2, 0]))),
        be.sum(a, axis=0),
        be.mean(a),
        be.argmax(a, axis=1),
        be.zeros_like(a),
        be.copy(a),
        be.copy(a, out=be.empty((4, 3))),
        be.sigmoid(a),
        be.relu(be.copy(a), bias=be.zeros(3)),
        be.softmax(a),
        be.sigmoid_backward(a, a, bias_grad=be.zeros(3)),
        be.one_hot(be.asarray(np.array([0, 2])), 3),
        be.where(condition, a, 0.0),
        be.clip(a, 0.1, 0.9),
        be.all_finite(a),
    ]
    _on_gpu_1(*results)
    be.adam_step(be.copy(a), a, be.zeros_like(a), be.zeros_like(a), 0.1, 0.9, 0.999, 1e-7)
    assert be.with_dtype("float64").zeros(2).device_id == GPU
    np.testing.assert_allclose(be.to_numpy(results[1]), be.to_numpy(a) @ be.to_numpy(W).T)


# ---------------------------------------------------------------- a model on GPU 1
def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 12)).astype(np.float32), rng.integers(0, 3, n)


def _state(model):
    """The optimizer's state arrays (momentum's velocity, Adam's m and v, ...)."""
    state = [x for s in model.optimizer.state for x in s.values()]
    assert state
    return state


OPTIMIZERS = {
    "momentum": lambda: SGD(0.1, momentum=0.9),
    "adagrad": lambda: Adagrad(0.05),
    "rmsprop": lambda: RMSprop(0.01),
    "adam": lambda: Adam(0.01),
}


@pytest.mark.parametrize("capture", [False, True], ids=["eager", "captured"])
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_a_model_on_gpu_1_trains_evaluates_predicts_and_reloads_there(
    be, optimizer, capture, tmp_path
):
    x, y = _data()
    x_val, y_val = _data(20, seed=1)
    model = Sequential(
        [Dense(9, "tanh", l2=0.01), Dense(7, "relu"), Dense(3, "softmax")],
        input_dim=12,
        backend=be,
        seed=3,
    )
    model.compile(
        loss="sparse_categorical_crossentropy",
        optimizer=OPTIMIZERS[optimizer](),
        metrics=["accuracy"],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capture that fell back would warn
        history = model.fit(
            be.asarray(x),
            y,
            epochs=3,
            batch_size=16,
            validation_data=(x_val, y_val),
            verbose=0,
            capture=capture,
        )
    if capture:
        (replay,) = model.trainer.train_function.replays.values()
        assert replay.mode == "graph"
    assert np.isfinite(history.history["loss"]).all()
    _on_gpu_1(*model.params, *model.grads, *_state(model))
    loss, accuracy = model.evaluate(x_val, y_val, verbose=0)
    predicted = model.predict(x_val, verbose=0)
    assert predicted.shape == (20, 3) and np.isfinite(loss) and 0 <= accuracy <= 1
    model.train_on_batch(x[:16], y[:16])
    model.test_on_batch(x[:16], y[:16])

    model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz", backend=be)
    _on_gpu_1(*loaded.params, *_state(loaded))
    np.testing.assert_allclose(loaded.predict(x_val, verbose=0), model.predict(x_val, verbose=0))
    loaded.fit(x, y, epochs=1, batch_size=16, verbose=0, capture=capture)


# ---------------------------------------------------------------- data-parallel
class _OneRank:
    """An mpi4py communicator of one rank whose NCCL peer sits on another GPU."""

    def Get_rank(self):
        return 0

    def Get_size(self):
        return 2

    def Split_type(self, kind):
        return self

    def Free(self):
        pass

    def allgather(self, value):
        peer = (value[0], 0) if isinstance(value, tuple) else value  # the peer: GPU 0
        return [value, peer]


def test_the_nccl_all_reduce_is_queued_on_the_backends_gpu(be, monkeypatch):
    """The stream the all-reduce orders after is GPU 1's (where the gradient kernels ran),
    read on GPU 1: not GPU 0's current stream."""
    pytest.importorskip("mpi4py")
    issued = []

    class FakeNccl:
        def allReduce(self, send, recv, count, kind, op, stream):
            issued.append((stream, ce._Devices.current))

    nccl = types.SimpleNamespace(NCCL_FLOAT32=7, NCCL_FLOAT64=8, NCCL_SUM=0, available=True)
    cuda = types.ModuleType("cupy.cuda")
    cuda.nccl = nccl  # type: ignore[attr-defined]
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda  # type: ignore[attr-defined]
    for name, module in (("cupy", cupy), ("cupy.cuda", cuda), ("cupy.cuda.nccl", nccl)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(MPICommunicator, "_nccl_comm", lambda self, be: FakeNccl())

    comm = MPICommunicator(_OneRank())
    assert comm.prepare(be) == NCCL
    grads = be.zeros(10)
    comm.allreduce_sum(be, grads)  # called outside any device context
    ((stream, _),) = issued
    assert stream == ce._DEFAULT_STREAMS[GPU].ptr != ce._DEFAULT_STREAMS[0].ptr


def test_warnings_still_name_the_users_line(be):
    """The device wrappers put frames between the user and the library's code; a warning
    still points at the user's call."""
    model = Sequential([Dense(3, "softmax")], input_dim=12, backend=be)
    model.compile(loss="sparse_categorical_crossentropy", optimizer=SGD(0.1))
    x, y = _data(20)
    with pytest.warns(UserWarning, match="integers up to") as record:
        model.fit((x * 255).astype(np.int64), y, epochs=1, verbose=0)
    assert record[0].filename == __file__
