"""Pictures of a training run: learning curves, and a grid of misclassified test digits.

matplotlib is an optional extra (`pip install "xpbackprop[plot]"`); it is imported only here,
and only when a picture is asked for. Everything drawn is host data.
"""

from __future__ import annotations

import os
from typing import Any

PLOT_EXTRA = "pip install 'xpbackprop[plot]'"


def require_matplotlib() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend, or a RuntimeError naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError(
            f"plotting needs matplotlib, which is not installed: {PLOT_EXTRA}"
        ) from exc
    return plt


def plot_history(
    history: dict[str, list[float]], path: str | os.PathLike[str], title: str = ""
) -> None:
    """Train and validation loss (left) and accuracy (right) per epoch, saved as a PNG."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_misclassified(
    images: Any,
    true: Any,
    predicted: Any,
    path: str | os.PathLike[str],
    limit: int = 36,
    title: str = "",
) -> int:
    """A grid of up to `limit` misclassified 28x28 digits, each titled "pred P / true T".
    Returns how many were misclassified in all."""
    plt = require_matplotlib()
    wrong = [i for i in range(len(true)) if int(true[i]) != int(predicted[i])]
    shown = wrong[:limit]
    cols = 6
    rows = max(1, -(-len(shown) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.8 + 0.6), squeeze=False)
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
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return len(wrong)
