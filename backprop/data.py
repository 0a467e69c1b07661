"""Host-side checks and encoding of the data handed to a model, before it crosses to the
backend: shapes, dtypes, finiteness, label ranges. Each bad input is a clear error that names
the argument, what it got and what was expected. (Host-side data handling: NumPy is used
directly here, never on backend arrays.)
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import numpy as np

import backends
from backends import Array, Backend

from .checks import is_number
from .losses import Loss

# the library's own files: a warning names the first caller outside them
_LIBRARY = tuple(
    os.path.dirname(os.path.abspath(f)) + os.sep for f in (backends.__file__, __file__)
)


def warn_caller(message: str, category: type[Warning]) -> None:
    """warnings.warn attributed to the user's line that called into the library, however
    many library frames lie between (the device wrappers of backends.base add some)."""
    frame: Any = sys._getframe(1)
    level = 2  # 1 would be this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def _describe(x: Any) -> str:
    return f"{type(x).__module__}.{type(x).__qualname__}"


def is_foreign_array(be: Backend, x: Any) -> bool:
    """An array of some other array library or backend (not NumPy, not `be`'s)."""
    return (
        hasattr(x, "__array_namespace__") and not be.is_array(x) and not isinstance(x, np.ndarray)
    )


def sample_shape(x: Any, name: str = "x") -> tuple[int, ...]:
    """The shape of one sample of `x` (an array, or nested lists), for building a model from
    its first data: every sample dimension >= 1 (0 features would build a model no file
    can hold)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        try:
            shape = np.shape(x)
        except ValueError:  # ragged lists
            shape = None
    if shape is None or len(shape) < 2:
        hint = " (a single sample needs shape (1, n_features))" if shape and len(shape) == 1 else ""
        raise ValueError(
            f"{name} must have shape (n_samples, n_features), got "
            + ("ragged lists" if shape is None else f"shape {tuple(shape)}")
            + hint
        )
    if any(int(d) < 1 for d in shape[1:]):
        raise ValueError(f"{name} has shape {tuple(shape)}: each sample needs at least one feature")
    return tuple(int(d) for d in shape[1:])


def check_x(be: Backend, x: Any, n_in: int | tuple[int, ...] | None, name: str = "x") -> Array:
    """Validate inputs of shape (n, n_in) (or (n, *n_in) for a sample shape such as
    (28, 28)) and return them as a backend array of `be.dtype`.

    Host data is checked on the host; an array of the model's own backend is checked there
    (one device read for finiteness) and not copied unless its dtype differs.
    """
    if is_foreign_array(be, x):
        raise TypeError(
            f"{name} is a {_describe(x)}, an array of another backend than this model's "
            f"{be.name!r} backend; pass a NumPy array or call backend.asarray({name})"
        )
    if be.is_array(x) and type(x) is not np.ndarray:  # a device array (not host NumPy)
        shape = tuple(x.shape)
        _check_shape(shape, n_in, name)
        if not bool(be.to_numpy(be.all_finite(x))):
            raise ValueError(f"{name} contains NaN or infinite values")
        return x if x.dtype == be.dtype else be.astype(x, be.dtype)
    host = np.asarray(x)
    _check_real(host, name)
    _check_shape(host.shape, n_in, name)
    _hint_scale(host, name)
    with np.errstate(over="ignore"):  # values beyond float32: reported below, by name
        host = host.astype(be.dtype_name, copy=False)
    # one pass: a sum is finite when every entry is (a huge but finite sum that overflows
    # sends us to the exact check, which then finds nothing)
    with np.errstate(over="ignore"):
        total = np.add.reduce(host, axis=None)
    if not np.isfinite(total) and not np.all(np.isfinite(host)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(host))[0])
        where = f"row {bad[0]}, " + (f"column {bad[1]}" if len(bad) == 2 else f"position {bad[1:]}")
        given = np.asarray(x)[bad]
        if np.isfinite(given):  # finite as given: beyond the training dtype's range
            raise ValueError(
                f"{name} holds {float(given):.3g} (at {where}), beyond the range of "
                f"{be.dtype_name} (largest {float(np.finfo(be.dtype_name).max):.3g}); scale "
                f"the inputs to about [0, 1] (or train in float64)"
            )
        raise ValueError(f"{name} contains NaN or infinite values (first at {where})")
    return be.asarray(host)


def _check_real(host: np.ndarray, name: str) -> None:
    if host.dtype == object or not (np.issubdtype(host.dtype, np.number) or host.dtype == np.bool_):
        raise TypeError(f"{name} must hold numbers, got an array of dtype {host.dtype}")
    if np.issubdtype(host.dtype, np.complexfloating):
        raise TypeError(
            f"{name} holds complex numbers (dtype {host.dtype}); a network takes real numbers: "
            f"pass {name}.real or abs({name}) if that is what you mean"
        )


def _hint_scale(host: np.ndarray, name: str) -> None:
    """Integer inputs above 1 (8-bit pixels, 0-255) saturate sigmoids and train to chance
    with no other sign: say so, once per call (a warning, as they may be meant)."""
    if np.issubdtype(host.dtype, np.integer) and host.size and host.max() > 1:
        top = int(host.max())
        warn_caller(
            f"{name} holds integers up to {top} (dtype {host.dtype}); networks train best on "
            f"inputs scaled to about [0, 1] (for 8-bit pixels: {name} / 255)",
            UserWarning,
        )


def _check_shape(shape: tuple[int, ...], n_in: int | tuple[int, ...] | None, name: str) -> None:
    sample = (n_in,) if isinstance(n_in, int) else n_in
    if sample is None or len(sample) == 1:
        if len(shape) != 2:
            hint = " (a single sample needs shape (1, n_features): use x.reshape(1, -1))"
            raise ValueError(
                f"{name} must have shape (n_samples, n_features), got shape {shape}"
                + (hint if len(shape) == 1 else "")
            )
    elif tuple(shape[1:]) != tuple(sample):
        raise ValueError(
            f"{name} must have shape (n_samples, {', '.join(map(str, sample))}), the model's "
            f"input shape, got shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError(f"{name} is empty: shape {shape}")
    if sample is not None and len(sample) == 1 and shape[1] != sample[0]:
        raise ValueError(
            f"{name} has {shape[1]} features per sample but the model expects {sample[0]} "
            f"(input_dim={sample[0]}); got shape {shape}"
        )


def check_y(be: Backend, y: Any, loss: Loss, n_out: int, n: int, name: str = "y") -> Array:
    """Validate targets for `loss` and return them as (n, n_out) rows in `be.dtype`.

    Integer labels (sparse_categorical_crossentropy) become one-hot rows here, once.
    """
    if is_foreign_array(be, y):
        raise TypeError(
            f"{name} is a {_describe(y)}, an array of another backend than this model's "
            f"{be.name!r} backend; pass a NumPy array or call backend.asarray({name})"
        )
    if be.is_array(y) and type(y) is not np.ndarray:
        y = be.to_numpy(y)  # targets are validated on the host: one copy, at the boundary
    host = np.asarray(y)
    _check_real(host, name)
    if host.shape[:1] != (n,):
        raise ValueError(
            f"{name} has {host.shape[0] if host.ndim else 0} samples but x has {n}: "
            f"got {name} of shape {host.shape}"
        )
    if not np.all(np.isfinite(host)):
        raise ValueError(f"{name} contains NaN or infinite values")

    if loss.targets == "labels":
        if host.ndim == 2 and host.shape[1] == 1:
            host = host[:, 0]
        if host.ndim != 1:
            raise ValueError(
                f"{name} must be integer class labels of shape ({n},) for {loss.name}, got "
                f"shape {host.shape}; for one-hot rows use categorical_crossentropy"
            )
        if not np.all(host == np.round(host)):
            raise ValueError(f"{name} must hold integer class labels for {loss.name}")
        bad = (host < 0) | (host >= n_out)  # checked before the cast, which could wrap
        if np.any(bad):
            raise ValueError(
                f"{name} holds labels outside [0, {n_out - 1}] (the model has {n_out} "
                f"outputs): found {host[bad][0].item():g}"
            )
        labels = host.astype(np.int64)
        host = np.eye(n_out, dtype=be.dtype_name)[labels]
    elif host.shape == (n,) and n_out == 1:
        host = host[:, None]  # a single output's targets as a flat vector, as Keras takes them
    elif host.shape != (n, n_out):
        hint = ""
        if host.ndim == 1 and loss.targets == "one_hot":
            hint = "; for integer labels use sparse_categorical_crossentropy"
        raise ValueError(
            f"{name} must have shape ({n}, {n_out}) for {loss.name} (one row of {n_out} "
            f"targets per sample), got shape {host.shape}{hint}"
        )
    if loss.targets in ("one_hot", "binary") and (np.any(host < 0) or np.any(host > 1)):
        raise ValueError(f"{name} must hold values in [0, 1] for {loss.name}")
    return be.asarray(np.asarray(host, dtype=be.dtype_name))


def sample_weights(
    be: Backend, Y: Array, sample_weight: Any = None, class_weight: Any = None, name: str = ""
) -> Array | None:
    """The weight of each sample of the targets Y (n, n_out), as Keras forms it: the given
    `sample_weight` (n,) times `class_weight[c]` for each sample's class c (argmax of its
    row; with a single output, the target rounded), 1.0 for a class the dict leaves out.
    Returned as an (n, 1) column on the device, or None when neither is given."""
    n = int(Y.shape[0])
    if sample_weight is None and class_weight is None:
        return None
    weights = np.ones(n)
    if sample_weight is not None:
        given = be.to_numpy(sample_weight) if be.is_array(sample_weight) else sample_weight
        host = np.asarray(given)
        _check_real(host, f"{name}sample_weight")
        if host.shape not in ((n,), (n, 1)):
            raise ValueError(
                f"{name}sample_weight must have shape ({n},), one weight per sample, got "
                f"shape {host.shape}"
            )
        if not np.all(np.isfinite(host)) or np.any(host < 0):
            raise ValueError(f"{name}sample_weight must hold finite numbers >= 0")
        weights = weights * host.reshape(n)
    if class_weight is not None:
        weights = weights * _class_weights(be, Y, class_weight)
    return be.asarray(weights.reshape(n, 1), dtype=be.dtype)


def _class_weights(be: Backend, Y: Array, class_weight: Any) -> np.ndarray:
    if not isinstance(class_weight, dict):
        raise ValueError(
            "class_weight must be a dict {class index: weight}, got "
            f"{type(class_weight).__name__}"
        )
    table: dict[int, float] = {}
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or key < 0:
            raise ValueError(f"class_weight keys must be class indices >= 0, got {key!r}")
        if not (isinstance(value, (int, float, np.number)) and np.isfinite(value) and value >= 0):
            raise ValueError(f"class_weight[{key}] must be a finite number >= 0, got {value!r}")
        table[int(key)] = float(value)
    host = be.to_numpy(Y)  # host-side, once per fit: which class each target row is
    classes = np.argmax(host, axis=1) if host.shape[1] > 1 else np.round(host[:, 0])
    return np.array([table.get(int(c), 1.0) for c in classes])


def check_weight(be: Backend, w: Any, shape: tuple[int, ...], index: int) -> Array:
    """Validate one array handed to set_weights and return it on the backend."""
    name = f"weights[{index}]"
    if is_foreign_array(be, w):
        raise TypeError(f"{name} is a {_describe(w)}, an array of another backend")
    host = be.to_numpy(w) if be.is_array(w) else np.asarray(w)
    if not (np.issubdtype(host.dtype, np.floating) or np.issubdtype(host.dtype, np.integer)):
        raise ValueError(f"{name} must hold real numbers, got dtype {host.dtype}")
    if host.shape != shape:
        raise ValueError(f"{name} has shape {host.shape}, expected shape {shape}")
    if not np.all(np.isfinite(host)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return be.asarray(host.astype(be.dtype_name))


def hold_out(
    be: Backend,
    X: Array,
    Y: Array,
    validation_data: Any,
    validation_split: Any,
    loss: Loss,
    input_shape: tuple[int, ...] | None,
    weights: tuple[Array | None, Array | None] = (None, None),
) -> tuple[Array, Array, Array | None, tuple[Array, Array, Array | None] | None]:
    """fit's validation set: `validation_data` (x_val, y_val) or (x_val, y_val,
    val_sample_weight) checked and on the device, or the last `validation_split` fraction
    of (X, Y), before shuffling, as Keras takes it. `weights`: the training samples' weights
    (sample and class weights) and their sample weights alone (which a held-out part keeps,
    as in Keras: class weights apply to training only). Returns the training X, Y, their
    weights, and the validation triple (None without one)."""
    S, sample_only = weights
    if not (is_number(validation_split) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"validation_split must be a number in [0, 1), got {validation_split!r}")
    validation_split = float(validation_split)
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
            raise ValueError(
                "validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                "val_sample_weight)"
            )
        X_val = check_x(be, validation_data[0], input_shape, "validation_data x")
        n_out, n_val = int(Y.shape[1]), int(X_val.shape[0])
        Y_val = check_y(be, validation_data[1], loss, n_out, n_val, "validation_data y")
        given = validation_data[2] if len(validation_data) == 3 else None
        S_val = sample_weights(be, Y_val, given, None, "validation_data ")
        return X, Y, S, (X_val, Y_val, S_val)
    if not validation_split:
        return X, Y, S, None
    n = int(X.shape[0])
    n_val = int(n * validation_split)
    if n_val < 1 or n_val >= n:
        raise ValueError(
            f"validation_split={validation_split} of {n} samples leaves {n_val} for "
            f"validation and {n - n_val} for training; both need at least one"
        )
    train, held = slice(0, n - n_val), slice(n - n_val, n)
    S_train = None if S is None else S[train, ...]
    S_val = None if sample_only is None else sample_only[held, ...]
    return X[train, ...], Y[train, ...], S_train, (X[held, ...], Y[held, ...], S_val)
