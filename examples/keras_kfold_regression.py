"""A Keras regression with K-fold validation (Deep Learning with Python, chapter 4's Boston
housing model, with L2 weight regularization) with its import lines pointed at backprop,
and nothing else changed.

    python examples/keras_kfold_regression.py [epochs] [seed]
    BACKPROP_BACKEND=cupy python examples/keras_kfold_regression.py

With `keras` in place of `backprop` in the import lines below (and KERAS_BACKEND set as
usual) the same file runs under Keras 3. The houses are synthetic and seeded (the same on
both): 506 of them, 13 features each, as in the Boston set, split 404 / 102; the price (in
thousands, 1-D targets) is a smooth nonlinear function of the features plus noise.
Idioms: 1-D targets with Dense(1) and mse, metrics=["mae"], kernel_regularizer=
regularizers.l2(...), a build_model function called once per fold, K-fold by hand with
np.concatenate, evaluate returning [mse, mae], keras.utils.set_random_seed.
"""

import sys

import numpy as np

from backprop import layers, models, regularizers, utils

# ---- the data: synthetic houses, seeded (a Keras run draws the same) --------------------
num_epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 80
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
data_rng = np.random.default_rng(1978)  # the data never changes with the run's seed
features = data_rng.normal(size=(506, 13)) * data_rng.uniform(0.5, 20.0, 13)
features += data_rng.uniform(0.0, 100.0, 13)  # raw scales differ, as Boston's do
unit = (features - features.mean(axis=0)) / features.std(axis=0)
prices = (
    22.0
    + 4.0 * np.tanh(unit[:, 0])
    - 3.0 * unit[:, 1] * (unit[:, 1] > 0)
    + 2.0 * unit[:, 2] * unit[:, 3]
    + 1.5 * np.sin(2.0 * unit[:, 4])
    + unit[:, 5:9] @ np.array([1.0, -1.0, 0.5, 0.8])
    + data_rng.normal(scale=1.5, size=506)
)
train_data, train_targets = features[:404], prices[:404]
test_data, test_targets = features[404:], prices[404:]

# ---- from here on, a Keras program -----------------------------------------------------
utils.set_random_seed(seed)

mean = train_data.mean(axis=0)
train_data -= mean
std = train_data.std(axis=0)
train_data /= std
test_data -= mean
test_data /= std


def build_model():
    model = models.Sequential(
        [
            layers.Dense(64, activation="relu", kernel_regularizer=regularizers.l2(1e-3)),
            layers.Dense(64, activation="relu", kernel_regularizer=regularizers.l2(1e-3)),
            layers.Dense(1),
        ]
    )
    model.compile(optimizer="rmsprop", loss="mse", metrics=["mae"])
    return model


k = 4
num_val_samples = len(train_data) // k
all_scores = []
for i in range(k):
    val_data = train_data[i * num_val_samples : (i + 1) * num_val_samples]
    val_targets = train_targets[i * num_val_samples : (i + 1) * num_val_samples]
    partial_train_data = np.concatenate(
        [train_data[: i * num_val_samples], train_data[(i + 1) * num_val_samples :]], axis=0
    )
    partial_train_targets = np.concatenate(
        [train_targets[: i * num_val_samples], train_targets[(i + 1) * num_val_samples :]],
        axis=0,
    )
    model = build_model()
    model.fit(
        partial_train_data, partial_train_targets, epochs=num_epochs, batch_size=16, verbose=0
    )
    val_mse, val_mae = model.evaluate(val_data, val_targets, verbose=0)
    all_scores.append(val_mae)

model = build_model()
model.fit(train_data, train_targets, epochs=num_epochs, batch_size=16, verbose=0)
test_mse_score, test_mae_score = model.evaluate(test_data, test_targets, verbose=0)
print(f"fold MAEs: {' '.join(f'{s:.3f}' for s in all_scores)}")
print(f"mean validation MAE: {np.mean(all_scores):.3f}")
print(f"test MAE: {test_mae_score:.3f}")
