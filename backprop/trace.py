"""`trace(model, x, y)`: one forward and backward pass laid out layer by layer, for the reader
of a backprop derivation who wants to see it happen.

For each layer l the result holds host copies of what the pass computed, a^{l-1}, z^l, a^l,
delta^l = dC/dz^l, dC/dW^l and dC/db^l, with the formulas they follow written as the README's
mathematics section writes them (FORMULAS), l replaced by the layer's number:

    z^l     = a^{l-1} W^l + b^l        a^l = f(z^l)
    delta^L = dC/dz^L                  (a^L - y) / batch for softmax + cross-entropy
    delta^l = f'(z^l) * (delta^{l+1} (W^{l+1})^T)
    dC/dW^l = (a^{l-1})^T delta^l
    dC/db^l = sum over the batch of delta^l

Nothing is updated: the pass is `model.gradients(x, y)`'s (inference-mode forward, so
Dropout keeps everything), and the arrays are the ones the layers kept for their backward pass.
`print(trace(...))` is a table of the layers with mean |delta^l| and ||dC/dW^l||.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .data import check_x
from .losses import Loss, SigmoidBinaryCrossentropy, SoftmaxCrossentropy, get_loss

#: The derivation as the README's mathematics section writes it, for a generic layer l (L: the
#: output layer). trace() fills in the numbers; tests/test_trace.py holds the README to these.
FORMULAS = {
    "z": "z^l     = a^{l-1} W^l + b^l",
    "a": "a^l = f(z^l)",
    "delta_output": "delta^L = dC/dz^L",
    "delta": "delta^l = f'(z^l) * (delta^{l+1} (W^{l+1})^T)",
    "dW": "dC/dW^l = (a^{l-1})^T delta^l",
    "db": "dC/db^l = sum over the batch of delta^l",
}
#: delta^L's closed form for the pairings that have one (losses.py), and the general path
CLOSED_FORMS = {
    SoftmaxCrossentropy: "(a^L - y) / batch",
    SigmoidBinaryCrossentropy: "(a^L - y) / (batch * n_out)",
}
GENERAL_OUTPUT = "f'(z^L) * dC/da^L"
SOFTMAX_OUTPUT = "a^L * (g - sum(g * a^L, axis=-1)), g = dC/da^L"
HIDDEN_DELTA_THROUGH = "delta^l = f'(z^l) * dC/da^l"  # when layer l+1 has no W


def at_layer(template: str, l: int) -> str:
    """A formula of FORMULAS for layer number `l`: ^l, ^L, ^{l-1}, ^{l+1} become numbers, and
    the alignment spaces of the README's table go."""
    offsets = {"l": 0, "L": 0, "l-1": -1, "l+1": 1}

    def number(match: re.Match[str]) -> str:
        return f"^{l + offsets[match.group(1) or match.group(2)]}"

    text = re.sub(r"\^(?:\{(l[+-]1)\}|([lL])\b)", number, template)
    return re.sub(r" {2,}", " ", text)


@dataclass
class LayerTrace:
    """One layer of a trace: `l` (1-based: a^0 is the input x), its name and activation, host
    copies of its arrays (None where the layer has none: Dropout has no z, delta or dW), and
    the formulas they follow, by array name."""

    l: int
    name: str
    activation: str | None
    a_prev: np.ndarray
    z: np.ndarray | None
    a: np.ndarray
    delta: np.ndarray | None
    dW: np.ndarray | None
    db: np.ndarray | None
    formulas: dict[str, str] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, tuple[int, ...] | None]:
        """Each array's shape (batch first), None where the layer has no such array."""
        names = ("a_prev", "z", "a", "delta", "dW", "db")
        return {
            n: None if getattr(self, n) is None else tuple(getattr(self, n).shape) for n in names
        }

    @property
    def mean_abs_delta(self) -> float | None:
        """mean |delta^l| over the batch and the units (None without a delta)."""
        return None if self.delta is None else float(np.mean(np.abs(self.delta)))

    @property
    def dW_norm(self) -> float | None:
        """||dC/dW^l||, the Frobenius norm (None without a W)."""
        return None if self.dW is None else float(np.linalg.norm(self.dW))


@dataclass
class Trace:
    """What `trace` returns: `layers` in order (index or name them: `t[0]`, `t["dense_1"]`),
    the batch's `cost` and the `loss`'s name. print() gives the table."""

    layers: list[LayerTrace]
    cost: float
    loss: str

    def __getitem__(self, key: int | str) -> LayerTrace:
        if isinstance(key, str):
            for layer in self.layers:
                if layer.name == key:
                    return layer
            raise KeyError(f"no layer named {key!r}; the layers are {[t.name for t in self]}")
        return self.layers[key]

    def __iter__(self) -> Any:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __str__(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.3e}"

        def shape(value: tuple[int, ...] | None) -> str:
            return "-" if value is None else "x".join(map(str, value))

        head = ("l", "layer", "f", "z, a, delta", "W", "mean |delta|", "||dC/dW||")
        rows = [
            (
                str(t.l),
                t.name,
                t.activation or "-",
                shape(t.shapes["a"]),
                shape(t.shapes["dW"]),
                fmt(t.mean_abs_delta),
                fmt(t.dW_norm),
            )
            for t in self.layers
        ]
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        x = "x".join(map(str, self.layers[0].a_prev.shape)) if self.layers else "-"
        title = f"backprop trace: {self.loss}, cost {self.cost:.6g}; a^0 = x: {x}"
        return "\n".join([title, *lines])

    def formulas(self) -> str:
        """Every layer's formulas, one per line, from the output layer down (the order of the
        backward pass)."""
        out = []
        for t in reversed(self.layers):
            out.append(f"layer {t.l} ({t.name}):")
            out.extend(f"    {text}" for text in t.formulas.values())
        return "\n".join(out)


def _output_delta(layer: Any, loss: Loss, L: int) -> str:
    fused = loss.shortcut(layer.activation)
    closed = CLOSED_FORMS.get(type(fused)) if fused is not None else None
    if closed is None:
        closed = SOFTMAX_OUTPUT if layer.activation.name == "softmax" else GENERAL_OUTPUT
    return at_layer(f"{FORMULAS['delta_output']} = {closed}", L)


def _formulas(layers: list[Any], i: int, loss: Loss) -> dict[str, str]:
    """The formulas layer i (0-based) of `layers` follows, numbered l = i + 1."""
    layer, l, L = layers[i], i + 1, len(layers)
    if getattr(layer, "activation", None) is None:  # Dropout, Flatten: no z, no delta
        return {"a": f"a^{l} = {type(layer).__name__.lower()}(a^{l - 1})"}
    has_W = bool(layer.grads)
    z = at_layer(FORMULAS["z"], l) if has_W else f"z^{l} = a^{l - 1}"
    out = {"z": z, "a": at_layer(FORMULAS["a"], l) + f", f = {layer.activation.name}"}
    if l == L:
        out["delta"] = _output_delta(layer, loss, L)
    elif layers[i + 1].grads:
        out["delta"] = at_layer(FORMULAS["delta"], l)
    else:
        out["delta"] = at_layer(HIDDEN_DELTA_THROUGH, l)
    if has_W:
        out["dW"] = at_layer(FORMULAS["dW"], l)
        out["db"] = at_layer(FORMULAS["db"], l)
    return out


def trace(model: Any, x: Any, y: Any, loss: str | Loss | None = None) -> Trace:
    """One forward and backward pass of `model` (a built Sequential) on the batch (x, y),
    without an update, layer by layer: see LayerTrace. `loss` defaults to the compiled one.
    Works on every backend; the arrays come back as host NumPy copies."""
    model.gradients(x, y, loss=loss)  # checks x and y, fills every layer's caches
    chosen = get_loss(loss) if loss is not None else model.loss
    be, layers = model.backend, list(model.layers)

    def host(array: Any) -> np.ndarray | None:
        return None if array is None else be.to_numpy(array).copy()

    a_prev = host(check_x(be, x, model.sample_shape))
    traces = []
    for i, layer in enumerate(layers):
        grads = [host(g) for g in layer.grads] or [None, None]
        a = host(layer.a)
        assert a is not None and a_prev is not None
        traces.append(
            LayerTrace(
                l=i + 1,
                name=str(layer.name),
                activation=getattr(getattr(layer, "activation", None), "name", None),
                a_prev=a_prev,
                z=host(getattr(layer, "z", None)),
                a=a,
                delta=host(getattr(layer, "delta", None)),
                dW=grads[0],
                db=grads[1] if len(grads) > 1 else None,
                formulas=_formulas(layers, i, chosen),
            )
        )
        a_prev = a
    cost = model.cost(x, y, loss=loss)
    return Trace(traces, cost, chosen.name)
