"""Neural networks whose backpropagation is written once against `backends.Backend`.

>>> from backprop import Sequential, Dense
>>> model = Sequential([Dense(30, "sigmoid"), Dense(10, "softmax")], input_dim=784,
...                    backend="numpy", seed=0)
>>> model
Sequential(784-30-10, backend='numpy', dtype='float32')
"""

from __future__ import annotations

from .activations import (
    ACTIVATIONS,
    ELU,
    Activation,
    LeakyReLU,
    Linear,
    Maxout,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
    get_activation,
)
from .gradcheck import check_gradients
from .layers import Dense
from .losses import (
    LOSSES,
    BinaryCrossentropy,
    CategoricalCrossentropy,
    Loss,
    MeanSquaredError,
    Quadratic,
    SparseCategoricalCrossentropy,
    get_loss,
)
from .model import Sequential

__all__ = [
    "ACTIVATIONS",
    "ELU",
    "LOSSES",
    "Activation",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "Dense",
    "LeakyReLU",
    "Linear",
    "Loss",
    "Maxout",
    "MeanSquaredError",
    "Quadratic",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "SparseCategoricalCrossentropy",
    "Tanh",
    "check_gradients",
    "get_activation",
    "get_loss",
]
