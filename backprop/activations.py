"""Activations: each a small object with its forward f(z) and its backward delta = da * f'(z)
side by side, computed by the backend's fused kernels where it has them.

`forward(be, z, out, bias)` returns a = f(z), with the layer's bias added into z first when
given (z += b, fused with f into one kernel where the backend can); `backward(be, z, a, da,
out, bias_grad)` returns delta = dC/dz from the values the forward pass kept, and writes its
column sums (the layer's db) into `bias_grad` when given (in the same kernel where the backend
can). Shapes are (batch, units) unless stated.
"""

from __future__ import annotations

from typing import Any

from backends import Array, Backend, get_backend

from .registry import lookup


class ActivationFunction:
    """An activation function f applied to a layer's pre-activations z."""

    name = "activation"
    #: linear pieces per unit: Dense computes units * pieces pre-activations (maxout's k)
    pieces = 1

    def forward(
        self, be: Backend, z: Array, out: Array | None = None, bias: Array | None = None
    ) -> Array:
        raise NotImplementedError

    def backward(
        self,
        be: Backend,
        z: Array,
        a: Array,
        da: Array,
        out: Array | None = None,
        bias_grad: Array | None = None,
    ) -> Array:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """What `get_activation` needs to rebuild this activation (saved with a model)."""
        return {"name": self.name}

    def serialize(self) -> str | dict[str, Any]:
        """Keras's form in a layer's config: the name alone ("relu") where there are no
        arguments, else the config dict."""
        config = self.config()
        return self.name if list(config) == ["name"] else config

    def __call__(self, x: Any) -> Any:
        """f(x) for a host array (Keras's `activations.relu(x)`), computed on the NumPy backend
        in x's float dtype (float32 for other dtypes); returns a host array."""
        dtype = getattr(x, "dtype", None)
        be = get_backend("numpy", dtype="float64" if str(dtype) == "float64" else "float32")
        z = be.asarray(x)
        if len(z.shape) != 2:  # the kernels take (batch, units)
            z = be.reshape(z, (1, -1) if len(z.shape) < 2 else (-1, int(z.shape[-1])))
        a = self.forward(be, be.copy(z), out=be.empty(tuple(z.shape)))
        shape = getattr(x, "shape", ())
        return be.to_numpy(a).reshape((*tuple(shape)[:-1], -1) if shape else ())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActivationFunction) and self.config() == other.config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.config().items())))


class Linear(ActivationFunction):
    """a = z; delta = da (no copies: the same arrays are passed through)."""

    name = "linear"

    def forward(self, be, z, out=None, bias=None):
        return z if bias is None else be.add(z, bias, out=z)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        if bias_grad is not None:
            be.sum(da, axis=0, out=bias_grad)
        return da


class Sigmoid(ActivationFunction):
    """a = 1 / (1 + e^-z); delta = da * a (1 - a)."""

    name = "sigmoid"

    def forward(self, be, z, out=None, bias=None):
        return be.sigmoid(z, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        return be.sigmoid_backward(a, da, out=out, bias_grad=bias_grad)


class Tanh(ActivationFunction):
    """a = tanh z; delta = da * (1 - a^2)."""

    name = "tanh"

    def forward(self, be, z, out=None, bias=None):
        return be.tanh(z, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        return be.tanh_backward(a, da, out=out, bias_grad=bias_grad)


class ReLU(ActivationFunction):
    """a = max(z, 0); delta = da where a > 0, else 0."""

    name = "relu"

    def forward(self, be, z, out=None, bias=None):
        return be.relu(z, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        return be.relu_backward(a, da, out=out, bias_grad=bias_grad)


class LeakyReLU(ActivationFunction):
    """a = z where z > 0 else alpha z; delta = da where z > 0 else alpha da."""

    name = "leaky_relu"

    def __init__(self, alpha: float = 0.01) -> None:
        if not alpha >= 0.0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, be, z, out=None, bias=None):
        return be.leaky_relu(z, self.alpha, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        return be.leaky_relu_backward(z, da, self.alpha, out=out, bias_grad=bias_grad)

    def config(self):
        return {"name": self.name, "alpha": self.alpha}


class ELU(ActivationFunction):
    """a = z where z > 0 else alpha (e^z - 1); delta = da where z > 0 else da (a + alpha)."""

    name = "elu"

    def __init__(self, alpha: float = 1.0) -> None:
        if not alpha > 0.0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, be, z, out=None, bias=None):
        return be.elu(z, self.alpha, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        return be.elu_backward(z, a, da, self.alpha, out=out, bias_grad=bias_grad)

    def config(self):
        return {"name": self.name, "alpha": self.alpha}


class SELU(ActivationFunction):
    """a = scale z where z > 0 else scale alpha (e^z - 1), with Klambauer et al.'s constants
    (alpha 1.6733, scale 1.0507); use it with the lecun_normal initializer.
    delta = scale da where z > 0 else da (a + scale alpha)."""

    name = "selu"

    def forward(self, be, z, out=None, bias=None):
        return be.selu(z, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        return be.selu_backward(z, a, da, out=out, bias_grad=bias_grad)


class Softplus(ActivationFunction):
    """a = log(1 + e^z); delta = da * sigmoid(z)."""

    name = "softplus"

    def forward(self, be, z, out=None, bias=None):
        return be.softplus(z, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        return be.softplus_backward(z, da, out=out, bias_grad=bias_grad)


class Softmax(ActivationFunction):
    """a_j = e^{z_j} / sum_k e^{z_k} along the units.

    Not elementwise: its backward pass is the Jacobian-vector product
    delta = a * (da - sum(da * a, axis=-1)). With cross-entropy the loss takes a shortcut
    instead (see losses.py).
    """

    name = "softmax"

    def forward(self, be, z, out=None, bias=None):
        return be.softmax(z, out=out, bias=bias)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        delta = be.softmax_backward(a, da, out=out)
        if bias_grad is not None:
            be.sum(delta, axis=0, out=bias_grad)
        return delta


class Maxout(ActivationFunction):
    """k linear pieces per unit, the largest taken: a_j = max_p z_{j,p}.

    z has shape (batch, units * k), viewed as (batch, units, k); the gradient flows only to the
    winning piece of each unit (the first one on a tie).
    """

    name = "maxout"

    def __init__(self, pieces: int = 2) -> None:
        if not isinstance(pieces, int) or pieces < 1:
            raise ValueError(f"pieces must be an integer >= 1, got {pieces!r}")
        self.pieces = pieces

    def forward(self, be, z, out=None, bias=None):
        batch, width = z.shape
        if bias is not None:
            z = be.add(z, bias, out=z)
        return be.maxout(be.reshape(z, (batch, width // self.pieces, self.pieces)), out=out)

    def backward(self, be, z, a, da, out=None, bias_grad=None):
        batch, width = z.shape
        z3 = be.reshape(z, (batch, width // self.pieces, self.pieces))
        delta = be.reshape(be.maxout_backward(z3, da), (batch, width))
        if out is not None:
            delta = be.copy(delta, out=out)
        if bias_grad is not None:
            be.sum(delta, axis=0, out=bias_grad)
        return delta

    def config(self):
        return {"name": self.name, "pieces": self.pieces}


ACTIVATIONS: dict[str, type[ActivationFunction]] = {
    cls.name: cls
    for cls in (Linear, Sigmoid, Tanh, ReLU, LeakyReLU, ELU, SELU, Softplus, Softmax, Maxout)
}

# Keras's `keras.activations.relu` and friends: objects that Dense takes as its activation and
# that compute f(x) on a host array when called
linear = Linear()
sigmoid = Sigmoid()
tanh = Tanh()
relu = ReLU()
leaky_relu = LeakyReLU()
elu = ELU()
selu = SELU()
softplus = Softplus()
softmax = Softmax()


def get_activation(spec: str | dict[str, Any] | ActivationFunction | None) -> ActivationFunction:
    """An ActivationFunction from a name ("relu"), a config dict, an instance, or None (linear)."""
    if spec is None:
        return Linear()
    if isinstance(spec, ActivationFunction):
        return spec
    if isinstance(getattr(spec, "activation", None), ActivationFunction):  # a layer: Softmax()
        return spec.activation  # type: ignore[union-attr]
    if isinstance(spec, dict):
        kwargs = dict(spec)
        return lookup(ACTIVATIONS, "activation", kwargs.pop("name", None))(**kwargs)
    if isinstance(spec, str):
        return lookup(ACTIVATIONS, "activation", spec)()
    raise TypeError(
        "activation must be a name, a config dict, an ActivationFunction (such as "
        f"backprop.activations.relu) or an activation layer, got {type(spec).__name__}"
    )
