"""What the benchmarks train: the networks, the batch sizes, synthetic MNIST-shaped data, and
one object per method ("how this method runs one epoch"), shared by the pytest-benchmark
suite and the comparison report.

Every method trains the same network (hidden layers with the named activation, a softmax
output, cross-entropy, SGD with momentum 0.9 and learning rate 0.01) on the same data, and
every timed call ends with the device synchronized.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends import Backend, backend_unavailable_reason, get_backend


@dataclass(frozen=True)
class Network:
    name: str
    hidden: tuple[int, ...]
    activation: str  # of the hidden layers; the output is softmax

    @property
    def sizes(self) -> tuple[int, ...]:
        return (784, *self.hidden, 10)


NETWORKS = {
    n.name: n
    for n in (
        Network("784-16-16-10", (16, 16), "sigmoid"),
        Network("784-30-10", (30,), "sigmoid"),
        Network("784-500-500-10", (500, 500), "sigmoid"),
        Network("784-1024-1024-10", (1024, 1024), "relu"),
    )
}
BATCH_SIZES = (32, 128, 1024)
SAMPLES = 60_000
LEARNING_RATE, MOMENTUM = 0.01, 0.9


def synthetic_mnist(n: int = SAMPLES, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-shaped random data: x (n, 784) float32 in [0, 1), labels (n,), one-hot (n, 10)."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 784), dtype=np.float32)
    labels = rng.integers(0, 10, n)
    return x, labels, np.eye(10, dtype=np.float32)[labels]


class Method:
    """One way of training `network` with `batch_size`: set up once, then timed per epoch."""

    name = "method"
    device = "cpu"

    def __init__(
        self, network: Network, batch_size: int, x: np.ndarray, labels: np.ndarray, y: np.ndarray
    ) -> None:
        self.network, self.batch_size = network, batch_size

    def epoch(self) -> None:
        raise NotImplementedError

    def warm_up(self) -> None:
        """What must run before timing, beyond one untimed epoch (nothing by default)."""

    def step(self) -> None:
        raise NotImplementedError

    def predict(self) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- the GEMM floor
class GemmFloor(Method):
    """Only the matrix products one epoch needs, into preallocated outputs: per batch, a @ W
    for every layer, then a_prev.T @ delta for every layer and delta @ W.T for every layer
    but the first (whose input gradient nobody needs). No activations, loss or updates: what
    no implementation of this network can go below on this device."""

    name = "gemm-floor"

    def __init__(self, network, batch_size, x, labels, y, backend: str = "numpy") -> None:
        super().__init__(network, batch_size, x, labels, y)
        be = self.be = get_backend(backend)
        self.device = be.device_name
        self.name = f"gemm-floor-{be.name}"
        rng = np.random.default_rng(0)
        sizes = network.sizes
        self.X = be.asarray(x)
        self.n = len(x)
        b = batch_size
        self.W = [
            be.asarray((rng.standard_normal((i, o)) / np.sqrt(i)).astype(np.float32))
            for i, o in itertools.pairwise(sizes)
        ]
        self.dW = [be.zeros(W.shape) for W in self.W]
        self.z = [be.zeros((b, o)) for o in sizes[1:]]
        self.delta = [
            be.asarray(rng.standard_normal((b, o)).astype(np.float32) * 0.01) for o in sizes[1:]
        ]
        self.da = [be.zeros((b, i)) for i in sizes[:-1]]

    def _batch(self, start: int) -> None:
        be = self.be
        a = self.X[start : start + self.batch_size]
        b = a.shape[0]
        if b != self.batch_size:  # the last, shorter batch: views of the buffers
            z, delta, da = ([t[:b] for t in bufs] for bufs in (self.z, self.delta, self.da))
        else:
            z, delta, da = self.z, self.delta, self.da
        acts = [a]
        for W, zl in zip(self.W, z, strict=True):
            acts.append(be.matmul(acts[-1], W, out=zl))
        for layer in range(len(self.W) - 1, -1, -1):
            be.matmul(acts[layer].T, delta[layer], out=self.dW[layer])
            if layer > 0:
                be.matmul(delta[layer], self.W[layer].T, out=da[layer])

    def epoch(self) -> None:
        for start in range(0, self.n, self.batch_size):
            self._batch(start)
        self.be.synchronize()

    def step(self) -> None:
        self._batch(0)
        self.be.synchronize()


# --------------------------------------------------------------------------- this library
class Ours(Method):
    """This library's Sequential.fit, one epoch per call, on `backend`; with `capture=False`
    the epoch runs eagerly where the backend would capture it (named "ours-cupy-eager")."""

    def __init__(
        self,
        network,
        batch_size,
        x,
        labels,
        y,
        backend: str | Backend = "numpy",
        metrics: tuple[str, ...] = ("accuracy",),
        capture: bool = True,
    ) -> None:
        from backprop import SGD, Dense, Sequential

        super().__init__(network, batch_size, x, labels, y)
        be: Backend = get_backend(backend)
        self.name, self.device = f"ours-{be.name}" + ("" if capture else "-eager"), be.device_name
        self.be, self.capture = be, capture
        self.model = Sequential(
            [Dense(h, network.activation) for h in network.hidden] + [Dense(10, "softmax")],
            input_dim=784,
            backend=be,
            seed=0,
        )
        self.model.compile(
            loss="categorical_crossentropy",
            optimizer=SGD(LEARNING_RATE, momentum=MOMENTUM),
            metrics=list(metrics),
        )
        # the data cross to the device once, as they would for a user's repeated fit calls
        self.X, self.Y = be.asarray(x), be.asarray(y)
        self.Xb, self.Yb = self.X[:batch_size], self.Y[:batch_size]

    def epoch(self) -> None:
        self.model.fit(
            self.X, self.Y, epochs=1, batch_size=self.batch_size, verbose=0, capture=self.capture
        )
        self.be.synchronize()

    def warm_up(self) -> None:
        """Where the backend records a step's calls (the CPU's recording, backends/tape.py),
        two epochs before the untimed one: the first two record the step (the first also
        makes its workspaces), the third checks and adopts the recording; every later epoch
        replays it, as all but the first few epochs of a user's fit do."""
        if self.capture and self.be.capture_records == "calls":
            for _ in range(2):
                self.epoch()

    def step(self) -> None:
        self.model.train_on_batch(self.Xb, self.Yb)  # forward, backward, update (Keras's)
        self.be.synchronize()

    def predict(self) -> None:
        self.model.predict(self.X, batch_size=self.batch_size)
        self.be.synchronize()


# --------------------------------------------------------------------------- peers
def torch_unavailable_reason(device: str = "cpu") -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install torch)"
    if device == "cuda" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA device"
    return None


class TorchLoop(Method):
    """PyTorch with the same network: nn.Sequential, CrossEntropyLoss, SGD with momentum, and
    a plain loop over shuffled batches on `device`."""

    def __init__(self, network, batch_size, x, labels, y, device: str = "cpu") -> None:
        import torch

        super().__init__(network, batch_size, x, labels, y)
        self.torch, self.name = torch, f"torch-{device}"
        self.device = device if device == "cpu" else torch.cuda.get_device_name()
        self.dev = torch.device(device)
        torch.manual_seed(0)
        act = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU}[network.activation]
        layers: list[Any] = []
        sizes = network.sizes
        for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(torch.nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(act())
        self.model = torch.nn.Sequential(*layers).to(self.dev)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
        self.loss = torch.nn.CrossEntropyLoss()
        self.X = torch.from_numpy(x).to(self.dev)
        self.labels = torch.from_numpy(labels).to(self.dev)

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def _train(self, xb: Any, yb: Any) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.model(xb), yb).backward()
        self.opt.step()

    def epoch(self) -> None:
        n, b = self.X.shape[0], self.batch_size
        order = self.torch.randperm(n, device=self.dev)
        for start in range(0, n, b):
            idx = order[start : start + b]
            self._train(self.X[idx], self.labels[idx])
        self._sync()

    def step(self) -> None:
        self._train(self.X[: self.batch_size], self.labels[: self.batch_size])
        self._sync()

    def predict(self) -> None:
        with self.torch.no_grad():
            for start in range(0, self.X.shape[0], self.batch_size):
                self.model(self.X[start : start + self.batch_size])
        self._sync()


class TorchGraph(TorchLoop):
    """PyTorch on CUDA with its training step (zero the gradients, forward, loss, backward,
    SGD step) captured once per batch shape in a CUDA graph (`torch.cuda.graph`) and replayed
    for every batch, each batch gathered by `index_select` into the graph's static inputs
    outside it: PyTorch's documented whole-network capture, its fastest plain training loop.
    The last, shorter batch of an epoch has its own graph."""

    def __init__(self, network, batch_size, x, labels, y, device: str = "cuda") -> None:
        super().__init__(network, batch_size, x, labels, y, device=device)
        self.name = "torch-cuda-graph"
        self.graphs: dict[int, tuple[Any, Any, Any]] = {}

    def _graph(self, size: int) -> tuple[Any, Any, Any]:
        """(graph, static x, static labels) for batches of `size` rows."""
        found = self.graphs.get(size)
        if found is not None:
            return found
        torch = self.torch
        static_x = self.X[:size].clone()
        static_y = self.labels[:size].clone()
        # warm up on a side stream (creates the gradients and momentum buffers, which then
        # stay where they are), as the PyTorch documentation prescribes before a capture
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step_in_place(static_x, static_y)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):  # its own memory pool: no ordering rules between graphs
            self._step_in_place(static_x, static_y)
        self.graphs[size] = (graph, static_x, static_y)
        return self.graphs[size]

    def _step_in_place(self, xb: Any, yb: Any) -> None:
        # gradients zeroed in place (not set to None), so every graph reads and writes the
        # same gradient tensors
        self.opt.zero_grad(set_to_none=False)
        self.loss(self.model(xb), yb).backward()
        self.opt.step()

    def epoch(self) -> None:
        torch = self.torch
        n, b = self.X.shape[0], self.batch_size
        order = torch.randperm(n, device=self.dev)
        for start in range(0, n, b):
            idx = order[start : start + b]
            graph, static_x, static_y = self._graph(int(idx.shape[0]))
            torch.index_select(self.X, 0, idx, out=static_x)
            torch.index_select(self.labels, 0, idx, out=static_y)
            graph.replay()
        self._sync()

    def step(self) -> None:
        graph, static_x, static_y = self._graph(self.batch_size)
        static_x.copy_(self.X[: self.batch_size])
        static_y.copy_(self.labels[: self.batch_size])
        graph.replay()
        self._sync()


def sklearn_unavailable_reason() -> str | None:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "scikit-learn is not installed (pip install scikit-learn)"
    return None


class SklearnMLP(Method):
    """scikit-learn's MLPClassifier with the same shape, solver="sgd", momentum 0.9, one
    epoch (max_iter=1, warm_start) per call."""

    name = "sklearn"

    def __init__(self, network, batch_size, x, labels, y) -> None:
        from sklearn.neural_network import MLPClassifier

        super().__init__(network, batch_size, x, labels, y)
        activation = {"sigmoid": "logistic", "relu": "relu"}[network.activation]
        self.clf = MLPClassifier(
            hidden_layer_sizes=network.hidden,
            activation=activation,
            solver="sgd",
            batch_size=batch_size,
            learning_rate_init=LEARNING_RATE,
            momentum=MOMENTUM,
            nesterovs_momentum=False,
            max_iter=1,
            warm_start=True,
            shuffle=True,
            random_state=0,
            tol=0.0,
            n_iter_no_change=10**9,
        )
        self.x, self.labels = x, labels

    def epoch(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning after each single epoch
            self.clf.fit(self.x, self.labels)


def available_methods(include_strict: bool = False) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, class, keyword arguments) for every method that can run here."""
    methods: list[tuple[str, Any, dict[str, Any]]] = [
        ("gemm-floor-numpy", GemmFloor, {"backend": "numpy"}),
        ("ours-numpy", Ours, {"backend": "numpy"}),
    ]
    if backend_unavailable_reason("cupy") is None:
        methods += [
            ("gemm-floor-cupy", GemmFloor, {"backend": "cupy"}),
            ("ours-cupy", Ours, {"backend": "cupy"}),  # the epoch captured in a CUDA graph
            ("ours-cupy-eager", Ours, {"backend": "cupy", "capture": False}),
        ]
    if include_strict:
        methods.append(("ours-strict", Ours, {"backend": "strict"}))
    if torch_unavailable_reason("cpu") is None:
        methods.append(("torch-cpu", TorchLoop, {"device": "cpu"}))
    if torch_unavailable_reason("cuda") is None:
        methods.append(("torch-cuda", TorchLoop, {"device": "cuda"}))
        methods.append(("torch-cuda-graph", TorchGraph, {"device": "cuda"}))
    if sklearn_unavailable_reason() is None:
        methods.append(("sklearn", SklearnMLP, {}))
    return methods
