"""What only a GPU can show: the probes `python -m bench.gpu_check` runs after its bench cells.

Each probe returns a dict of figures (or {"error": ...}), one line each in gpu-check.md:
- graphs: the nodes and the memory (alloc/free) nodes of every graph a captured fit records
  (from CUDA's own dump of the graph); memory nodes must be 0: a captured step allocates
  nothing;
- captured_vs_eager: the largest weight difference after 3 epochs captured and 3 eager from
  the same start (different cuBLAS handles: equal to float32 rounding, not bit for bit);
- bias_grad: the fused backward + bias-gradient job against the same job unfused followed by
  `cupy.sum(axis=0)`, at tall-narrow, square and tall-narrower shapes;
- refits: 12 fits in a row, each after compile() (which drops the recorded graphs), so each
  records anew: device memory in use after the first and the last, and whether the weights
  stayed finite;
- device_1: with two or more GPUs, a model on device 1 trained captured: every array it
  holds must be on device 1.

They take the backend as an argument, so the smoke tests run them on the emulated CuPy.
"""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from backprop import SGD, Dense, Sequential

BIAS_GRAD_SHAPES = ((60_000, 10), (1024, 1024), (8192, 16))


def _model(be: Any, hidden: tuple[int, ...] = (500, 500), seed: int = 0) -> Sequential:
    model = Sequential(
        [Dense(h, "relu") for h in hidden] + [Dense(10, "softmax")],
        input_dim=784,
        backend=be,
        seed=seed,
    )
    model.compile(loss="categorical_crossentropy", optimizer=SGD(0.05, momentum=0.9))
    return model


def _data(be: Any, samples: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(0)
    x = be.asarray(rng.random((samples, 784), dtype=np.float32))
    y = be.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, samples)])
    return x, y


def _probe(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except Exception as exc:  # one failing probe must not lose the others
        return {"error": f"{type(exc).__name__}: {exc}"}


def graphs(be: Any, samples: int = 10_000, hidden: tuple[int, ...] = (500, 500)) -> dict:
    """Nodes and memory nodes of each graph a 3-epoch captured fit records."""
    model = _model(be, hidden)
    x, y = _data(be, samples)
    model.fit(x, y, epochs=3, batch_size=128, verbose=0)
    function = model.trainer.train_function if model.trainer is not None else None
    found = []
    for shape, replay in sorted((function.replays if function else {}).items()):
        graph = getattr(replay, "graph", None)
        dump = getattr(graph, "debug_dot_str", None)
        if dump is None:
            found.append({"steps": shape[0], "mode": replay.mode, "nodes": None})
            continue
        text = dump()
        nodes = len(re.findall(r"^\s*\"?graph_\d+_node_\d+\"?\s*\[", text, re.MULTILINE))
        memory = len(re.findall(r"MEM_ALLOC|MEM_FREE|MEMALLOC|MEMFREE", text))
        found.append({"steps": shape[0], "mode": replay.mode, "nodes": nodes, "memory": memory})
    return {"graphs": found}


def captured_vs_eager(be: Any, samples: int = 10_000, hidden: tuple[int, ...] = (500, 500)):
    x, y = _data(be, samples)
    weights = []
    for capture in (True, False):
        model = _model(be, hidden)
        model.fit(x, y, epochs=3, batch_size=128, verbose=0, capture=capture)
        weights.append(model.get_weights())
    diff = max(float(np.abs(a - b).max()) for a, b in zip(*weights, strict=True))
    return {"max_abs_difference": diff, "within_float32_tolerance": diff < 1e-3}


def _seconds(be: Any, job: Callable[[], Any], repeats: int = 20) -> float:
    job()  # compile, warm up
    be.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        job()
    be.synchronize()
    return (time.perf_counter() - started) / repeats


def bias_grad(be: Any, shapes: tuple[tuple[int, int], ...] = BIAS_GRAD_SHAPES) -> dict:
    """ms per call: the fused job (delta and db in one kernel where CuPy has it) and the
    unfused one followed by a column sum."""
    return {"shapes": [_bias_grad_shape(be, n, m) for n, m in shapes]}


def _bias_grad_shape(be: Any, n: int, m: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    a = be.asarray(rng.random((n, m), dtype=np.float32))
    da = be.asarray(rng.random((n, m), dtype=np.float32))
    out, db = be.empty((n, m)), be.empty((m,))

    def separate() -> None:
        be.sigmoid_backward(a, da, out=out)
        be.xp.sum(out, axis=0, out=db)

    fused = _seconds(be, lambda: be.sigmoid_backward(a, da, out=out, bias_grad=db))
    return {
        "shape": f"{n}x{m}",
        "fused_ms": round(fused * 1e3, 4),
        "with_sum_ms": round(_seconds(be, separate) * 1e3, 4),
    }


def refits(be: Any, fits: int = 12, samples: int = 10_000, hidden=(500, 500)) -> dict:
    """`fits` compile + fit pairs in a row: memory in use after the first and the last."""
    x, y = _data(be, samples)
    model = _model(be, hidden)
    used = []
    for _ in range(fits):
        model.compile(loss="categorical_crossentropy", optimizer=SGD(0.05, momentum=0.9))
        model.fit(x, y, epochs=2, batch_size=128, verbose=0)
        be.synchronize()
        used.append(_memory_in_use(be))
    finite = all(bool(np.isfinite(w).all()) for w in model.get_weights())
    return {"fits": fits, "first_bytes": used[0], "last_bytes": used[-1], "finite": finite}


def _memory_in_use(be: Any) -> int | None:
    runtime = getattr(getattr(be.xp, "cuda", None), "runtime", None)
    if runtime is None or not hasattr(runtime, "memGetInfo"):
        return None
    with be.device:
        free, total = runtime.memGetInfo()
    return int(total - free)


def device_1(be_for: Callable[[int], Any], gpus: int, samples: int = 4_096) -> dict:
    """A model on device 1 trained captured: the devices its arrays are on."""
    if gpus < 2:
        return {"skipped": f"{gpus} GPU: needs two"}
    be = be_for(1)
    model = _model(be, (64, 64))
    x, y = _data(be, samples)
    model.fit(x, y, epochs=3, batch_size=128, verbose=0)
    arrays = [model.flat_params, model.flat_grads, *model.states]
    arrays += [v for s in model.optimizer.state for v in s.values()] if model.optimizer else []
    devices = sorted({int(a.device.id) for a in arrays})
    return {"devices": devices, "ok": devices == [1]}


def run(be: Any, be_for: Callable[[int], Any], gpus: int, small: bool = False) -> dict:
    """Every probe; `small`: tiny sizes, for the smoke tests."""
    samples, hidden = (600, (16, 16)) if small else (10_000, (500, 500))
    shapes = ((600, 10), (64, 64)) if small else BIAS_GRAD_SHAPES
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result: dict[str, Any] = {
            "graphs": _probe(lambda: graphs(be, samples, hidden)),
            "captured_vs_eager": _probe(lambda: captured_vs_eager(be, samples, hidden)),
            "bias_grad": _probe(lambda: bias_grad(be, shapes)),
            "refits": _probe(lambda: refits(be, 3 if small else 12, samples, hidden)),
            "device_1": _probe(lambda: device_1(be_for, gpus)),
        }
    result["warnings"] = sorted({str(w.message) for w in caught})
    return result


def markdown_lines(probes: dict[str, Any]) -> list[str]:
    """One line per probe for gpu-check.md."""
    lines = []
    for name, figures in probes.items():
        if name == "warnings":
            lines += [f"- warning during the probes: {w}" for w in figures]
            continue
        lines.append(f"- {name.replace('_', ' ')}: {_describe(figures)}")
    return lines


def _describe(figures: Any) -> str:
    if isinstance(figures, dict) and len(figures) == 1:
        (figures,) = figures.values()
    if isinstance(figures, list):
        return "; ".join(_describe(f) for f in figures)
    if isinstance(figures, dict):
        return ", ".join(f"{k} {v}" for k, v in figures.items())
    return str(figures)
