"""Pictures of a training run: learning curves, and a grid of misclassified test digits.

matplotlib is an optional extra (`pip install -e ".[plot]"` in a checkout); it is imported
only here, and only when a picture is asked for. Everything drawn is host data. Each function
draws on its own `matplotlib.figure.Figure` and returns it (shown inline in a notebook), saving it
too when given a path; pyplot is never used, so the user's matplotlib backend and open
figures are left as they were.
"""

from __future__ import annotations

import os
from typing import Any

PLOT_EXTRA = 'pip install -e ".[plot]" in a checkout of xpbackprop'


def require_matplotlib() -> Any:
    """The matplotlib package (its figure and image modules loaded), or a RuntimeError that
    names the extra. Nothing global is changed: no backend is selected."""
    try:
        import matplotlib
        import matplotlib.figure
        import matplotlib.image  # loaded for callers: matplotlib.image.imread
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


def plot_history(
    history: dict[str, list[float]], path: str | os.PathLike[str] | None = None, title: str = ""
) -> Any:
    """Train and validation loss (left) and accuracy (right) per epoch, as a Figure, saved to
    `path` when given (the format from its extension)."""
    fig = require_matplotlib().figure.Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        for prefix, style in (("", "o-"), ("val_", "s--")):
            values = history.get(prefix + key)
            if values:
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, label=("validation " if prefix else "train ") + key)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig


def plot_misclassified(
    images: Any,
    true: Any,
    predicted: Any,
    path: str | os.PathLike[str] | None = None,
    limit: int = 36,
    title: str = "",
) -> Any:
    """A grid of up to `limit` misclassified 28x28 digits, each titled "pred P / true T", as
    a Figure (saved to `path` when given); `figure.misclassified` is how many were wrong."""
    wrong = [i for i in range(len(true)) if int(true[i]) != int(predicted[i])]
    shown = wrong[:limit]
    cols = 6
    rows = max(1, -(-len(shown) // cols))
    fig = require_matplotlib().figure.Figure(figsize=(cols * 1.6, rows * 1.8 + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), shown, strict=False):
        ax.imshow(images[i].reshape(28, 28), cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_title(
            f"pred {int(predicted[i])} / true {int(true[i])}", fontsize=9, color="firebrick"
        )
    heading = title or "Misclassified test digits"
    fig.suptitle(
        f"{heading}: {len(wrong)} of {len(true)} wrong"
        + (f", first {len(shown)} shown" if len(wrong) > len(shown) else "")
    )
    fig.tight_layout()
    fig.misclassified = len(wrong)
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
