"""A Keras binary classifier (Deep Learning with Python, chapter 4's IMDB model, written as
TensorFlow's text-classification tutorial writes its loss: a linear last layer and
`from_logits=True`) with its import line pointed at backprop, and nothing else changed.

    python examples/keras_binary_logits.py [epochs] [seed]
    BACKPROP_BACKEND=cupy python examples/keras_binary_logits.py

With `keras` in place of `backprop` in the import line below (and KERAS_BACKEND set as
usual) the same file runs under Keras 3. The reviews are synthetic and seeded (the same on
both): 10,000 bag-of-words reviews (8,000 to train on) over a 1,000-word vocabulary, each a
multi-hot row, whose label (1-D, 0 or 1) follows the sentiment of the 40 telling words it
holds, with 10% of the labels flipped. Idioms: `import backprop as keras`,
keras.utils.set_random_seed, 1-D targets, BinaryCrossentropy(from_logits=True),
BinaryAccuracy(threshold=0.0), AUC(from_logits=True), EarlyStopping(verbose=1),
validation_data, predict on logits, keras.backend.clear_session.
"""

import sys

import numpy as np

import backprop as keras

# ---- the data: synthetic reviews, seeded (a Keras run draws the same) -------------------
epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
data_rng = np.random.default_rng(2024)  # the data never changes with the run's seed
vocabulary, n_reviews = 1000, 10000
sentiment = np.zeros(vocabulary)  # 40 telling words among the 300 most frequent
sentiment[data_rng.choice(300, 40, replace=False)] = data_rng.choice([-1.0, 1.0], 40)
frequency = 1.0 / np.arange(1, vocabulary + 1) ** 0.8  # Zipf-like: a few words are common
frequency /= frequency.sum()
reviews = np.zeros((n_reviews, vocabulary), dtype="float32")
for i in range(n_reviews):
    words = data_rng.choice(vocabulary, size=data_rng.integers(100, 300), p=frequency)
    reviews[i, words] = 1.0
score = reviews @ sentiment
labels = (score > np.median(score)).astype("float32")
flip = data_rng.random(n_reviews) < 0.1
labels[flip] = 1 - labels[flip]
x_train, y_train = reviews[:8000], labels[:8000]
x_test, y_test = reviews[8000:], labels[8000:]

# ---- from here on, a Keras program -----------------------------------------------------
keras.backend.clear_session()
keras.utils.set_random_seed(seed)

x_val, partial_x_train = x_train[:1000], x_train[1000:]
y_val, partial_y_train = y_train[:1000], y_train[1000:]

model = keras.Sequential(
    [
        keras.Input(shape=(vocabulary,)),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(1),
    ]
)
model.compile(
    optimizer=keras.optimizers.RMSprop(learning_rate=1e-3),
    loss=keras.losses.BinaryCrossentropy(from_logits=True),
    metrics=[keras.metrics.BinaryAccuracy(threshold=0.0), keras.metrics.AUC(from_logits=True)],
)
history = model.fit(
    partial_x_train,
    partial_y_train,
    epochs=epochs,
    batch_size=128,
    validation_data=(x_val, y_val),
    callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=3, verbose=1)],
    verbose=0,
)
results = model.evaluate(x_test, y_test, verbose=0)
logits = model.predict(x_test, verbose=0)
predicted = (logits[:, 0] > 0).astype("float32")
print(f"epochs run: {len(history.history['loss'])}")
print(f"history keys: {sorted(history.history)}")
print(f"test loss: {results[0]:.4f}")
print(f"test auc: {results[2]:.4f}")
print(f"test accuracy: {np.mean(predicted == y_test):.4f}")
