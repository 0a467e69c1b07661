"""Saving and loading whole models as one .npz file, without pickle.

The file holds: a format tag and version; the architecture, loss, metrics, optimizer
configuration, epoch count and the shuffling generator's state as JSON; the weights; and the
optimizer's state arrays. Arrays are written from host copies (this is host-side file work,
so NumPy is used directly), and read back with allow_pickle=False.

Writes are atomic: the file is written under a temporary name in the same directory, flushed
to disk, then renamed over the target, so an interrupted save never destroys the previous
file. The file is an ordinary one: it gets the permissions the umask gives a new file (or
keeps those of the file it replaces), and temporary files left by a writer that was killed
are removed by the next save to the same path.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

import numpy as np

from .layers import Dense, Layer, layer_from_config
from .network import Network

FORMAT = "xpbackprop-model"
# 2: each layer saved as its class and config, the input as a sample shape; version 1 files
# (Dense layers only, an input_dim) still load.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


def _write_arrays(f: Any, arrays: dict[str, np.ndarray]) -> None:
    np.savez(f, **arrays)  # type: ignore[arg-type]


def save_model(
    path: str | os.PathLike[str], network: Network, optimizer: Any, config: dict[str, Any]
) -> None:
    """Write a built `network`, its `optimizer` (None if not compiled) with its state, and
    the model's `config` (name, dtype, seed, epochs_done, shuffle_rng, loss, metrics: JSON
    values) to `path` (exactly that name; no suffix is added), atomically."""
    path = os.fspath(path)
    config = {
        **config,
        "layers": [
            {"class_name": type(layer).__name__, "config": layer.get_config()}
            for layer in network.layers
        ],
        "input_shape": list(network.input_shape or ()),
        "optimizer": None,
    }
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "format_version": np.array(FORMAT_VERSION),
    }
    for i, w in enumerate(network.get_weights()):
        arrays[f"weight_{i}"] = w
    be = network.backend
    for i, state in enumerate(network.states):  # Dropout's random-number key: exact resume
        arrays[f"state_{i}"] = be.to_numpy(state).copy()
    if optimizer is not None:
        config["optimizer"] = {
            "config": optimizer.config(),
            "iterations": optimizer.iterations,
            "slots": list(optimizer.slots),
        }
        for i, state in enumerate(optimizer.state):
            for slot, value in state.items():
                arrays[f"optimizer_{i}_{slot}"] = be.to_numpy(value).copy()
    arrays["config"] = np.array(json.dumps(config))

    write_atomically(path, arrays)


def write_atomically(path: str, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` as an .npz file at `path`: under a temporary name in the same
    directory, flushed to disk, then renamed over the target, so an interrupted write never
    destroys the previous file; with the permissions of an ordinary new file (or of the one
    replaced), after removing temporaries of earlier writers that are gone."""
    directory = check_writable(path)
    _remove_stale_temporaries(path)
    mode = _file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            _write_arrays(f, arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def check_writable(path: str | os.PathLike[str], create: bool = False) -> str:
    """Check that a file can be written at `path` before any work depends on it: a file name
    (not a directory, nor a name ending in a separator), its directory present (made, with
    `create`) and writable, proved by creating and removing a file there (permission bits
    and os.access do not see read-only file systems, /proc, or root's rights), and no
    existing file without any write permission bit (such a file says "keep me", and root may
    replace anything). Returns the directory; raises OSError subclasses with messages that
    name `path`."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(tuple(filter(None, (os.sep, os.altsep)))):
        raise IsADirectoryError(f"cannot write to {path}: it is a directory; give a file name")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise NotADirectoryError(
                f"cannot write to {path}: {directory} is a file, not a directory"
            )
        if not create:
            raise FileNotFoundError(
                f"cannot write to {path}: the directory {directory} does not exist"
            )
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise PermissionError(
                f"cannot write to {path}: cannot create the directory {directory} "
                f"({exc.strerror or exc})"
            ) from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {path}: the directory {directory} is read-only")
    _probe(path, directory)
    if os.path.exists(path) and not os.stat(path).st_mode & 0o222:
        # replacing needs only the directory, but a file nobody may write says "keep me"
        raise PermissionError(
            f"cannot write to {path}: the file is read-only (no write permission); "
            "remove it or make it writable to replace it"
        )
    return directory


def _probe(path: str, directory: str) -> None:
    """Create and remove a file in `directory`: the one sure test that it takes new files."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=directory)
    except OSError as exc:
        reason = "it is read-only" if isinstance(exc, PermissionError) else exc.strerror or exc
        raise PermissionError(
            f"cannot write to {path}: cannot create a file in the directory {directory} ({reason})"
        ) from exc
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass  # made but not removable: the directory still takes files


def _temp_prefix(path: str) -> str:
    """Temporary files for `path` are named after it and the writing process."""
    return f".tmp-{os.path.basename(path)}-{os.getpid()}-"


def _file_mode(path: str) -> int:
    """The permissions the saved file gets: those of the file it replaces, else what the
    umask gives a new file (mkstemp's own 0600 would make every saved model private)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _remove_stale_temporaries(path: str) -> None:
    """Delete the temporary files of earlier saves to `path` whose writer is gone (killed
    mid-save: nothing else would ever remove them)."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(f".tmp-{os.path.basename(path)}-") + r"(\d+)-\w+\.npz$")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        try:
            os.unlink(os.path.join(directory, name))
        except OSError:
            pass  # another process removed it, or it is not ours to remove


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to someone else
        return True
    return True


class ModelFileError(ValueError):
    """A file that load_model cannot read as a saved model; the message says why."""


def _invalid(path: str, why: str) -> ModelFileError:
    return ModelFileError(f"{path} is not a valid {FORMAT} file: {why}")


class SavedModel:
    """A model file read and checked: its JSON `config` and its `arrays`. Sequential's
    load_model builds the model from `layers()`, then puts back the network's and the
    optimizer's arrays with `restore_network` and `restore_optimizer`."""

    def __init__(self, path: str, config: dict[str, Any], arrays: dict[str, np.ndarray]):
        self.path, self.config, self.arrays = path, config, arrays

    def invalid(self, why: str) -> ModelFileError:
        return _invalid(self.path, why)

    def layers(self) -> tuple[tuple[int, ...], list[Layer]]:
        """The input sample shape and the layers, unbuilt."""
        config = self.config
        if int(self.arrays["format_version"]) == 1:  # Dense layers only, keyword arguments
            return (int(config["input_dim"]),), [Dense.from_config(c) for c in config["layers"]]
        layers = [layer_from_config(c["class_name"], c["config"]) for c in config["layers"]]
        return tuple(config["input_shape"]), layers

    def restore_network(self, network: Network) -> None:
        """The weights and the layers' states, each checked before use."""
        arrays, be = self.arrays, network.backend
        network.set_weights([arrays[f"weight_{i}"] for i in range(len(network.params))])
        for i, state in enumerate(network.states):
            saved = arrays.get(f"state_{i}")
            if saved is None or saved.shape != tuple(state.shape):
                raise ValueError(f"layer state state_{i} is missing or misshapen")
            be.copy(be.asarray(saved, dtype=saved.dtype.name), out=state)

    def restore_optimizer(self, optimizer: Any, be: Any) -> None:
        """The optimizer's step count and state arrays, as saved."""
        record = self.config["optimizer"]
        optimizer.iterations = int(record["iterations"])
        for i, state in enumerate(optimizer.state):
            for slot in state:
                key = f"optimizer_{i}_{slot}"
                if key not in self.arrays or self.arrays[key].shape != tuple(state[slot].shape):
                    raise self.invalid(f"optimizer state {key} is missing or misshapen")
                be.copy(be.asarray(self.arrays[key], dtype=be.dtype), out=state[slot])


def read_model(path: str | os.PathLike[str]) -> SavedModel:
    """Read the file of a saved model and check its format; raises ModelFileError (a
    ValueError) saying why a file is not one, FileNotFoundError where there is none."""
    path = os.fspath(path)
    arrays = _read_npz(path)
    if "format" in arrays and str(arrays["format"]) == WEIGHTS_FORMAT:
        raise _invalid(
            path,
            "it holds weights only (written by save_weights); build the same model and call "
            "model.load_weights(path)",
        )
    if "format" not in arrays or str(arrays["format"]) != FORMAT:
        raise _invalid(path, "it has no xpbackprop format tag (was it written by model.save?)")
    try:
        version = int(arrays.get("format_version", -1))
    except (TypeError, ValueError) as exc:
        raise _invalid(path, "its format version is not a number") from exc
    if version not in READABLE_VERSIONS:
        raise _invalid(
            path,
            f"format version {version}, but this version of xpbackprop reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}",
        )
    try:
        config = json.loads(str(arrays["config"]))
    except (KeyError, ValueError) as exc:
        raise _invalid(
            path, f"its contents are inconsistent ({type(exc).__name__}: {exc})"
        ) from exc
    return SavedModel(path, config, arrays)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"no model file at {path}")
    if os.path.isdir(path):
        raise _invalid(path, "it is a directory")
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as exc:  # NumPy's "pickled data" advice must not reach the user
        raise _invalid(path, "it is neither an .npz archive nor a NumPy array file") from exc
    except Exception as exc:  # a damaged file can fail in any part of zipfile or NumPy
        raise _corrupt(path, exc) from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _invalid(path, "it holds one NumPy array (a .npy file), not a saved model")
    try:
        with loaded as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as exc:  # zipfile's "encrypted" RuntimeError, NotImplementedError for
        # an unknown zip version, zlib.error, tokenize.TokenError in an array header, ...
        raise _corrupt(path, exc) from exc


def _corrupt(path: str, exc: BaseException) -> ModelFileError:
    return _invalid(path, f"it is corrupted or truncated ({type(exc).__name__}: {exc})")


WEIGHTS_FORMAT = "xpbackprop-weights"


def save_weights(path: str | os.PathLike[str], network: Network) -> None:
    """Write only the weights (get_weights' arrays) to `path`, atomically, as an .npz file
    (whatever the name: Keras's ".weights.h5" names work)."""
    path = os.fspath(path)
    arrays: dict[str, np.ndarray] = {"format": np.array(WEIGHTS_FORMAT)}
    for i, w in enumerate(network.get_weights()):
        arrays[f"weight_{i}"] = w
    write_atomically(path, arrays)


def load_weights(path: str | os.PathLike[str], network: Network) -> None:
    """Set the network's weights from a file of save_weights (or a whole saved model),
    checking every array before any is written."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # not an .npz, or damaged anywhere (see _read_npz)
        raise _invalid(path, "it is not an .npz file of weights, or it is damaged") from exc
    if str(arrays.get("format", "")) not in (WEIGHTS_FORMAT, FORMAT):
        raise _invalid(path, "it has no xpbackprop format tag")
    count = len([k for k in arrays if k.startswith("weight_")])
    if count != len(network.params):
        raise _invalid(
            path, f"it holds {count} weight arrays, but the model has {len(network.params)}"
        )
    network.set_weights([arrays[f"weight_{i}"] for i in range(count)])
