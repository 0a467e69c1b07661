"""Neural networks whose backpropagation is written once against `backends.Backend`.

>>> from backprop import Sequential, Dense
>>> model = Sequential([Dense(30, "sigmoid"), Dense(10, "softmax")], input_dim=784,
...                    backend="numpy", seed=0)
>>> model
Sequential(784-30-10, backend='numpy', dtype='float32')
"""

from __future__ import annotations

__version__ = "0.1.0"

# Keras's submodules, attributes after `import backprop as keras` (keras.utils.to_categorical,
# keras.layers.Dense, keras.backend.clear_session, ...), as after `import keras`
from . import (
    backend,
    callbacks,
    layers,
    losses,
    metrics,
    models,
    optimizers,
    regularizers,
    utils,
)
from .activations import (
    ACTIVATIONS,
    ELU,
    ActivationFunction,
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
from .activations import SELU as SELU
from .callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    GradientNorms,
    History,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
)
from .gradcheck import check_gradients
from .initializers import GlorotNormal, GlorotUniform, HeNormal, HeUniform, LecunNormal
from .layers import (
    Activation,
    BatchNormalization,
    Dense,
    Dropout,
    Flatten,
    Input,
    InputLayer,
    Layer,
    Normalization,
)
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
from .model import Sequential, load_model
from .network import Network
from .optimizers import (
    SGD,
    Adagrad,
    Adam,
    AdamW,
    CosineDecay,
    ExponentialDecay,
    Optimizer,
    RMSprop,
    StepDecay,
    get_optimizer,
)
from .trace import Trace, trace
from .training import Trainer, TrainingDivergedError

__all__ = [
    "ACTIVATIONS",
    "ELU",
    "LOSSES",
    "SELU",
    "SGD",
    "Activation",
    "ActivationFunction",
    "Adagrad",
    "Adam",
    "AdamW",
    "BatchNormalization",
    "BinaryCrossentropy",
    "CSVLogger",
    "Callback",
    "CategoricalCrossentropy",
    "CosineDecay",
    "Dense",
    "Dropout",
    "EarlyStopping",
    "ExponentialDecay",
    "Flatten",
    "GlorotNormal",
    "GlorotUniform",
    "GradientNorms",
    "HeNormal",
    "HeUniform",
    "History",
    "Input",
    "InputLayer",
    "LambdaCallback",
    "Layer",
    "LeakyReLU",
    "LearningRateScheduler",
    "LecunNormal",
    "Linear",
    "Loss",
    "Maxout",
    "MeanSquaredError",
    "ModelCheckpoint",
    "Network",
    "Normalization",
    "Optimizer",
    "Quadratic",
    "RMSprop",
    "ReLU",
    "ReduceLROnPlateau",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "SparseCategoricalCrossentropy",
    "StepDecay",
    "Tanh",
    "Trace",
    "Trainer",
    "TrainingDivergedError",
    "backend",
    "callbacks",
    "check_gradients",
    "get_activation",
    "get_loss",
    "get_optimizer",
    "layers",
    "load_model",
    "losses",
    "metrics",
    "models",
    "optimizers",
    "regularizers",
    "trace",
    "utils",
]
