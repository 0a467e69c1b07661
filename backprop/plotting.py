"""Pictures of a training run: learning curves, per-layer gradient norms, a confusion matrix,
and a grid of misclassified test digits.

matplotlib is an optional extra (`pip install -e ".[plot]"` in a checkout); it is imported
only here, and only when a picture is asked for. Everything drawn is host data. Each function
draws on its own `matplotlib.figure.Figure` and returns it (shown inline in a notebook), saving it
too when given a path; pyplot is never used, so the user's matplotlib backend and open
figures are left as they were.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

PLOT_EXTRA = 'pip install -e ".[plot]" in a checkout of xpbackprop'
DPI = 150  # saved figures: sharp on a laptop screen, a few tens of KB as PNG


def require_matplotlib() -> Any:
    """The matplotlib package (its figure and image modules loaded), or a RuntimeError that
    names the extra. Nothing global is changed: no backend is selected."""
    try:
        import matplotlib
        import matplotlib.figure
        import matplotlib.image  # loaded for callers: matplotlib.image.imread
        import matplotlib.ticker
    except ImportError as exc:
        raise RuntimeError(
            f"plotting needs matplotlib, which is not installed: {PLOT_EXTRA}"
        ) from exc
    return matplotlib


def supported_formats() -> list[str]:
    """The file extensions matplotlib can save a figure as ("png", "pdf", "svg", ...)."""
    require_matplotlib()
    from matplotlib.backend_bases import FigureCanvasBase

    return sorted(FigureCanvasBase.get_supported_filetypes())


def _figure(**kwargs: Any) -> Any:
    """A new Figure with constrained layout (tight spacing that also fits a suptitle)."""
    return require_matplotlib().figure.Figure(layout="constrained", **kwargs)


def _save(fig: Any, path: str | os.PathLike[str] | None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=DPI)
    return fig


def _figures(history: Any) -> dict[str, list[float]]:
    """The per-epoch figures of a History or of its `.history` dict."""
    figures = getattr(history, "history", history)
    if not isinstance(figures, Mapping):
        raise TypeError(
            f"history must be a History or its .history dict, got {type(history).__name__}"
        )
    return dict(figures)


def _integer_epochs(ax: Any) -> None:
    ax.xaxis.set_major_locator(require_matplotlib().ticker.MaxNLocator(integer=True))


def plot_history(
    history: Any,
    path: str | os.PathLike[str] | None = None,
    title: str = "",
    log_loss: bool = False,
) -> Any:
    """Train and validation loss (left) and accuracy (right) per epoch, as a Figure, saved to
    `path` when given (the format from its extension, PNGs at 150 dpi). `history`: a History
    or its `.history` dict. Epochs are numbered from 1 on integer ticks; `log_loss` puts the
    loss on a log axis (a loss that falls by orders of magnitude, or an MSE near zero)."""
    figures = _figures(history)
    kinds = [k for k in ("loss", "accuracy") if figures.get(k) or figures.get("val_" + k)]
    fig = _figure(figsize=(5 * max(len(kinds), 1), 4))
    for ax, key in zip(np.atleast_1d(fig.subplots(1, max(len(kinds), 1))), kinds, strict=False):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = figures.get(prefix + key)
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, label=("validation " if prefix else "train ") + key)
        if key == "loss" and log_loss:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key + (" (log scale)" if key == "loss" and log_loss else ""))
        ax.set_title(key)
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_misclassified(
    images: Any,
    true: Any,
    predicted: Any,
    path: str | os.PathLike[str] | None = None,
    limit: int = 36,
    title: str = "",
    probabilities: Any = None,
) -> Any:
    """A grid of up to `limit` misclassified 28x28 digits as a Figure (saved to `path` when
    given); `figure.misclassified` is how many were wrong and `figure.shown` the indices
    drawn. With `probabilities` (n, classes), the model's outputs, the most confident
    mistakes come first, each captioned "7 (p=0.93), true 2"; without, in order, "7, true 2"."""
    true, predicted = np.asarray(true).astype(int), np.asarray(predicted).astype(int)
    wrong = np.flatnonzero(true != predicted)
    confidence = None
    if probabilities is not None:
        p = np.asarray(probabilities)
        if p.ndim != 2 or p.shape[0] != len(true):
            raise ValueError(f"probabilities must have shape ({len(true)}, classes), got {p.shape}")
        confidence = p[np.arange(len(true)), predicted]
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    shown = wrong[:limit]
    cols = 6
    rows = max(1, -(-len(shown) // cols))
    height = rows * 1.3 + 0.55
    fig = require_matplotlib().figure.Figure(figsize=(cols * 1.3, height))
    fig.subplots_adjust(  # tight: the captions need the only space between the digits
        left=0.01, right=0.99, bottom=0.01, top=1 - 0.55 / height, wspace=0.04, hspace=0.28
    )
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown, strict=False):
        ax.imshow(np.asarray(images[i]).reshape(28, 28), cmap="gray_r", vmin=0.0, vmax=1.0)
        p_text = "" if confidence is None else f" (p={confidence[i]:.2f})"
        ax.set_title(f"{predicted[i]}{p_text}, true {true[i]}", fontsize=8, color="firebrick")
    heading = title or "Misclassified test digits"
    order = ", most confident first" if confidence is not None else ""
    fig.suptitle(
        f"{heading}: {len(wrong)} of {len(true)} wrong"
        + (f", {len(shown)} shown{order}" if len(wrong) > len(shown) else order)
    )
    fig.misclassified = len(wrong)
    fig.shown = [int(i) for i in shown]
    return _save(fig, path)


def confusion_matrix(true: Any, predicted: Any, classes: int | None = None) -> Any:
    """counts[t, p]: how many samples of true class t were predicted as p (host NumPy)."""
    true, predicted = np.asarray(true).astype(int), np.asarray(predicted).astype(int)
    if true.shape != predicted.shape or true.ndim != 1:
        raise ValueError(
            f"true and predicted must be 1-D label arrays of one length, got shapes "
            f"{true.shape} and {predicted.shape}"
        )
    n = (
        classes
        if classes is not None
        else int(max(true.max(initial=0), predicted.max(initial=0))) + 1
    )
    counts = np.zeros((n, n), dtype=np.int64)
    np.add.at(counts, (true, predicted), 1)
    return counts


def plot_confusion_matrix(
    true: Any,
    predicted: Any,
    path: str | os.PathLike[str] | None = None,
    title: str = "",
    classes: int | None = None,
) -> Any:
    """The confusion matrix of integer labels `true` against `predicted` as a Figure: rows
    the true class, columns the predicted one, each cell's count written in it, the diagonal
    (correct) in the colour scale and the mistakes outlined in red. `figure.matrix` holds
    the counts. Saved to `path` when given."""
    counts = confusion_matrix(true, predicted, classes)
    n = counts.shape[0]
    fig = _figure(figsize=(5.6, 5))
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="samples")
    top = counts.max() if counts.size else 0
    for t, p in np.ndindex(counts.shape):
        if counts[t, p]:
            dark = counts[t, p] > top / 2
            color = "white" if dark else ("firebrick" if t != p else "black")
            ax.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=8, color=color)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set_title(title or f"Confusion matrix: {accuracy:.2%} correct")
    fig.matrix = counts
    return _save(fig, path)


def _layer_curves(figures: dict[str, list[float]], kind: str) -> dict[str, list[float]]:
    return {k.split("/", 1)[1]: v for k, v in figures.items() if k.startswith(kind + "/")}


def compare_gradients(
    histories: Mapping[str, Any], path: str | os.PathLike[str] | None = None, title: str = ""
) -> Any:
    """The per-layer figures of GradientNorms for several runs side by side, one column per
    run (labelled by its key), on log axes shared across the runs: top, mean ||dC/dW^l||;
    bottom, mean |delta^l|. Saved to `path` when given."""
    runs = {label: _figures(h) for label, h in histories.items()}
    for label, figures in runs.items():
        if not _layer_curves(figures, "grad_norm"):
            raise ValueError(
                f"history {label!r} has no grad_norm/<layer> figures: train with "
                "callbacks=[backprop.GradientNorms()]"
            )
    fig = _figure(figsize=(max(7.0, 5.0 * len(runs)), 6.5))
    axes = fig.subplots(2, len(runs), squeeze=False, sharey="row")
    rows = (("grad_norm", "mean ||dC/dW^l||"), ("delta", "mean |delta^l|"))
    for col, (label, figures) in enumerate(runs.items()):
        for row, (kind, what) in enumerate(rows):
            ax = axes[row, col]
            for layer, values in _layer_curves(figures, kind).items():
                ax.plot(range(1, len(values) + 1), values, "o-", ms=3, label=layer)
            ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_ylabel(what if col == 0 else "")
            ax.set_title(f"{label}: {what}" if label else what, fontsize=10)
            _integer_epochs(ax)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, title="layer, input first", title_fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_gradients(
    history: Any, path: str | os.PathLike[str] | None = None, title: str = ""
) -> Any:
    """GradientNorms' figures of one run per layer on log axes (mean ||dC/dW^l|| per epoch
    above, mean |delta^l| below), as a Figure saved to `path` when given: vanishing
    gradients show as the lower layers' curves far below the output layer's."""
    return compare_gradients({"": history}, path, title)
