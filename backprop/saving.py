"""Saving and loading whole models as one .npz file, without pickle.

The file holds: a format tag and version; the architecture, loss, metrics, optimizer
configuration, epoch count and the shuffling generator's state as JSON; the weights; and the
optimizer's state arrays. Arrays are written from host copies (this is host-side file work,
so NumPy is used directly), and read back with allow_pickle=False.

Writes are atomic: the file is written under a temporary name in the same directory, flushed
to disk, then renamed over the target, so an interrupted save never destroys the previous
file.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

from backends import Backend

if TYPE_CHECKING:
    from .model import Sequential

FORMAT = "xpbackprop-model"
FORMAT_VERSION = 1


def _write_arrays(f: Any, arrays: dict[str, np.ndarray]) -> None:
    np.savez(f, **arrays)  # type: ignore[arg-type]


def save_model(model: Sequential, path: str | os.PathLike[str]) -> None:
    """Write `model` to `path` (exactly that name; no suffix is added), atomically."""
    model._require_built()
    path = os.fspath(path)
    config: dict[str, Any] = {
        "layers": [layer.config() for layer in model.layers],
        "input_dim": model.input_dim,
        "dtype": model.dtype,
        "seed": model.seed,
        "epochs_done": model.epochs_done,
        "shuffle_rng": model.shuffle_rng.bit_generator.state,
        "loss": model.loss.name if model.loss is not None else None,
        "metrics": list(model.metrics),
        "optimizer": None,
    }
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION),
    }
    for i, w in enumerate(model.get_weights()):
        arrays[f"weight_{i}"] = w
    optimizer = model.optimizer
    if optimizer is not None:
        config["optimizer"] = {
            "config": optimizer.config(),
            "iterations": optimizer.iterations,
            "slots": list(optimizer.slots),
        }
        be = model.backend
        for i, state in enumerate(optimizer.state):
            for slot, value in state.items():
                arrays[f"optimizer_{i}_{slot}"] = be.to_numpy(value).copy()
    arrays["config"] = np.array(json.dumps(config))

    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_arrays(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _invalid(path: str, why: str) -> ValueError:
    return ValueError(f"{path} is not a valid {FORMAT} file: {why}")


def load_model(path: str | os.PathLike[str], backend: str | Backend = "numpy") -> Sequential:
    """Rebuild a model saved by `Sequential.save` on `backend` (any backend, whichever saved it):
    architecture, weights, loss, optimizer and its state, and the shuffling generator, so
    training resumes exactly where it stopped."""
    from .layers import Dense
    from .model import Sequential
    from .optimizers import get_optimizer

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise _invalid(path, f"it is corrupted or truncated ({type(exc).__name__}: {exc})") from exc
    if "format" not in arrays or str(arrays["format"]) != FORMAT:
        raise _invalid(path, "it has no xpbackprop format tag (was it written by model.save?)")
    version = int(arrays.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise _invalid(
            path,
            f"format version {version}, but this version of xpbackprop reads version "
            f"{FORMAT_VERSION}",
        )
    try:
        config = json.loads(str(arrays["config"]))
        model = Sequential(
            [Dense(**layer) for layer in config["layers"]],
            input_dim=config["input_dim"],
            backend=backend,
            dtype=config["dtype"],
            seed=config["seed"],
        )
        weights = [arrays[f"weight_{i}"] for i in range(2 * len(config["layers"]))]
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise _invalid(
            path, f"its contents are inconsistent ({type(exc).__name__}: {exc})"
        ) from exc
    model.set_weights(weights)
    model.epochs_done = int(config["epochs_done"])
    model.shuffle_rng.bit_generator.state = config["shuffle_rng"]
    if config["loss"] is not None:
        opt = config["optimizer"]
        optimizer = get_optimizer(opt["config"]) if opt is not None else "sgd"
        model.compile(loss=config["loss"], optimizer=optimizer, metrics=config["metrics"])
        if opt is not None:
            be, (_, restored) = model.backend, model._require_compiled()
            restored.iterations = int(opt["iterations"])
            for i, state in enumerate(restored.state):
                for slot in state:
                    key = f"optimizer_{i}_{slot}"
                    if key not in arrays or arrays[key].shape != tuple(state[slot].shape):
                        raise _invalid(path, f"optimizer state {key} is missing or misshapen")
                    be.copy(be.asarray(arrays[key], dtype=be.dtype), out=state[slot])
    return model
