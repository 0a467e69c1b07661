"""A Keras MLP program with its import lines pointed at backprop, and nothing else changed.

    python examples/keras_mlp.py [EPOCHS [SEED]]          # NumPy; 30 epochs, seed 0
    BACKPROP_BACKEND=cupy python examples/keras_mlp.py    # the same program on a GPU

With `keras` in place of `backprop` in the five import lines below (and KERAS_BACKEND set as
usual) the same file runs under Keras 3. It trains on the bundled sample of real MNIST digits
(data/README: 4,000 for training, 1,000 for testing), as Keras's MNIST MLP example does on the
full set: Input, two ReLU layers with Dropout, softmax and cross-entropy, Adam, early
stopping that restores the best weights, and the best model kept on disk and loaded back.
The run is seeded (set_random_seed, as in Keras): the same seed prints the same figures on
one machine.
"""

import os
import sys
import tempfile

import numpy as np

from backprop import Input
from backprop.callbacks import EarlyStopping, ModelCheckpoint
from backprop.layers import Dense, Dropout
from backprop.models import Sequential, load_model
from backprop.utils import set_random_seed, to_categorical

# ---- the data: the bundled sample (xpbackprop's; a Keras run reads the same file) ------
sample = np.load(
    os.environ.get(
        "MNIST_SAMPLE",
        os.path.join(os.path.dirname(__file__), "..", "backprop", "_data", "mnist_5k.npz"),
    )
)
images, labels = sample["images"], sample["labels"]
order = np.random.default_rng(0).permutation(len(labels))  # sorted by label: shuffle
images, labels = images[order], labels[order]
x_train, y_train = images[:4000], labels[:4000]
x_test, y_test = images[4000:], labels[4000:]
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0

# ---- from here on, a Keras program -----------------------------------------------------
set_random_seed(seed)  # weights, Dropout masks and shuffling
x_train = x_train.reshape(-1, 784).astype("float32") / 255
x_test = x_test.reshape(-1, 784).astype("float32") / 255
y_train = to_categorical(y_train, 10)
y_test = to_categorical(y_test, 10)

model = Sequential(
    [
        Input(shape=(784,)),
        Dense(256, activation="relu"),
        Dropout(0.2),
        Dense(256, activation="relu"),
        Dropout(0.2),
        Dense(10, activation="softmax"),
    ]
)
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])

best_path = os.path.join(tempfile.mkdtemp(), "best.keras")
callbacks = [
    EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
    ModelCheckpoint(best_path, monitor="val_loss", save_best_only=True),
]
history = model.fit(
    x_train,
    y_train,
    batch_size=128,
    epochs=epochs,
    validation_split=0.1,
    callbacks=callbacks,
    verbose=0,
)
best = load_model(best_path)
loss, accuracy = best.evaluate(x_test, y_test, verbose=0)
print(f"epochs run: {len(history.history['loss'])}")
print(f"test loss: {loss:.4f}")
print(f"test accuracy: {accuracy:.4f}")
