"""The README's figures, made by one seeded command (needs the plot extra):

    python examples/readme_figures.py                 # writes docs/figures/*.png

Two 784-500-500-10 networks train for 20 epochs on the bundled MNIST sample (4,000 training
images, the last 10% of them held out for validation; 1,000 test images), each with the
GradientNorms callback:

- the tutorials' first network: sigmoid hidden layers, softmax, the quadratic cost (MSE),
  plain SGD (learning_rate=0.1, batches of 100);
- the fix the tutorials go on to: ReLU hidden layers, softmax with cross-entropy, Adam.

It writes gradient-norms.png (the two runs side by side on shared log axes: the vanishing
gradient of the first), learning-curves.png and confusion-matrix.png (of the second), and
prints each run's test accuracy. The same seed gives the same pictures on one machine (the
last digits of the figures depend on the machine's BLAS).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import PIL.Image

from backprop import SGD, Adam, Dense, GradientNorms, Sequential
from backprop.datasets import load_mnist_sample
from backprop.plotting import compare_gradients, plot_confusion_matrix, plot_history

RUNS = {
    "sigmoid + MSE, SGD": ("sigmoid", "mse", lambda: SGD(learning_rate=0.1)),
    "ReLU + cross-entropy, Adam": ("relu", "categorical_crossentropy", lambda: Adam()),
}
EPOCHS, BATCH = 20, 100


def train(activation, loss, optimizer, data, seed, backend):
    """One run: the trained model, its History and its test accuracy."""
    (x_train, y_train), (x_test, y_test) = data
    init = "he_normal" if activation == "relu" else "glorot_uniform"
    model = Sequential(
        [Dense(500, activation, kernel_initializer=init) for _ in range(2)]
        + [Dense(10, "softmax")],
        input_dim=784,
        backend=backend,
        seed=seed,
    )
    model.compile(loss=loss, optimizer=optimizer, metrics=["accuracy"])
    history = model.fit(
        x_train,
        y_train,
        epochs=EPOCHS,
        batch_size=BATCH,
        validation_split=0.1,
        callbacks=[GradientNorms()],
        verbose=0,
    )
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return model, history, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="weights and shuffling (default 0)")
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "figures")
    )
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (x_train, labels_train), (x_test, labels_test) = load_mnist_sample()
    eye = np.eye(10, dtype=np.float32)
    data = (x_train, eye[labels_train]), (x_test, eye[labels_test])
    histories, last = {}, None
    for label, (activation, loss, optimizer) in RUNS.items():
        model, history, accuracy = train(
            activation, loss, optimizer(), data, args.seed, args.backend
        )
        histories[f"{label} ({accuracy:.1%})"] = history
        print(f"{label}: test accuracy {accuracy:.4f}")
        last = (label, model, history, accuracy)
    compare_gradients(
        histories,
        out / "gradient-norms.png",
        title=f"784-500-500-10 on the bundled MNIST sample, {EPOCHS} epochs, batches of {BATCH}",
    )
    label, model, history, accuracy = last
    title = f"784-500-500-10 {label}, {EPOCHS} epochs: test accuracy {accuracy:.2%}"
    plot_history(history, out / "learning-curves.png", title=title, log_loss=True)
    predicted = model.predict(x_test, verbose=0).argmax(axis=1)
    plot_confusion_matrix(
        labels_test,
        predicted,
        out / "confusion-matrix.png",
        title=f"{label}: {accuracy:.2%} correct",
    )
    written = sorted(out.glob("*.png"))
    for path in written:  # 256 colours are plenty for line plots: a third of the bytes
        with PIL.Image.open(path) as image:
            small = image.convert("RGB").quantize(256)
        small.save(path, optimize=True)
    print(f"wrote {', '.join(p.name for p in written)} to {out}")


if __name__ == "__main__":
    main()
