"""The command line: `python -m backprop train | evaluate | predict`.

    python -m backprop train                          # 784-500-500-10 ReLU/softmax on the
                                                      # bundled MNIST sample, numpy backend
    python -m backprop train --activation sigmoid --loss mse    # the seeds' Keras example
    python -m backprop train --backend cupy --save model.npz --plot curves.png
    python -m backprop evaluate model.npz
    python -m backprop predict model.npz --index 7

User mistakes (bad arguments, missing files, a backend that cannot run here, a missing extra)
print a message and exit with code 2, never a traceback. Results go to stdout and are the
same for the same seed; times go to stderr. Output piped into a reader that stops early
(`| head -1`) ends the program quietly, as Unix tools end.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import backends

from . import __version__, activations, datasets, distributed, losses, optimizers
from .callbacks import GradientNorms
from .datasets import load_digit_image, one_hot
from .distributed import DistributedError
from .layers import Dense
from .model import Sequential, default_backend, load_model
from .saving import check_writable
from .training import TrainingDivergedError

RELU_FAMILY = ("relu", "leaky_relu", "elu")
# the advice of load_mnist's errors, in the command line's words
CLI_HINTS = {"path": "pass --data-dir DIR", "download": "drop --no-download"}
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left
# training needs about this many copies of the weights: themselves, their gradients and up
# to two optimizer slots (Adam's m and v)
WEIGHT_COPIES = 4


class UserError(Exception):
    """A mistake the user can fix: reported as 'error: ...' with exit code 2 (`quiet`: the
    exit code only, for the other ranks of a data-parallel run, where rank 0 reports)."""

    def __init__(self, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.quiet = quiet


def _layer_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated hidden layer sizes such as 500,500, got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be >= 1, got {text!r}")
    return sizes


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported as its one-line error and one hint (not the whole
    usage, which buries the error)."""

    commands: dict[str, _Parser]  # the top level's: name -> its parser

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message}\n(see: {self.prog} --help)\n")

    def parse_args(self, args: Any = None, namespace: Any = None) -> Any:
        """As argparse's, but an unknown option is reported by the command it was given to,
        so that the hint names that command's help."""
        parsed, extra = self.parse_known_args(args, namespace)
        if extra:
            owner = getattr(self, "commands", {}).get(getattr(parsed, "command", None), self)
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
        return parsed


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        choices=["mnist-sample", "mnist"],
        default="mnist-sample",
        help="mnist-sample: the bundled 5,000 real MNIST digits, split 4,000/1,000 "
        "(default); mnist: the full 60,000/10,000 set from IDX files",
    )
    p.add_argument(
        "--data-dir",
        metavar="PATH",
        help="where the full MNIST IDX files are (default: $BACKPROP_DATA or the "
        "user cache directory; missing files are downloaded there)",
    )
    p.add_argument(
        "--no-download",
        action="store_true",
        help="never download MNIST; fail if the files are not in --data-dir",
    )
    p.add_argument(
        "--backend",
        default=None,
        help="numpy, cupy (an NVIDIA GPU) or strict (the test backend); default: "
        "$BACKPROP_BACKEND, else numpy",
    )
    p.add_argument(
        "--device",
        type=int,
        metavar="N",
        help="with --backend cupy: the GPU to use (default GPU 0; data-parallel, each rank "
        "takes the GPU of its local rank on its machine)",
    )


def _prog() -> str:
    """How the user started us: the `xpbackprop` console script, or python -m backprop."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return "xpbackprop" if name.startswith("xpbackprop") else "python -m backprop"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=_prog(),
        description="Train, evaluate and use digit-recognition networks on MNIST.",
    )
    parser.add_argument("--version", action="version", version=f"xpbackprop {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parser.commands = sub.choices

    train = sub.add_parser(
        "train",
        help="train a network and report its test accuracy",
        description="Train a network on MNIST and report its test accuracy.",
    )
    _add_data_options(train)
    train.add_argument(
        "--layers",
        type=_layer_sizes,
        default=[500, 500],
        metavar="N,N,...",
        help="hidden layer sizes (default 500,500: the 784-500-500-10 network)",
    )
    train.add_argument(
        "--activation",
        choices=sorted(activations.ACTIVATIONS),
        default="relu",
        help="hidden-layer activation (default relu)",
    )
    train.add_argument(
        "--output-activation",
        choices=sorted(activations.ACTIVATIONS),
        default="softmax",
        help="output activation (default softmax)",
    )
    train.add_argument(
        "--loss",
        choices=sorted(losses.LOSSES),
        default="categorical_crossentropy",
        help="loss (default categorical_crossentropy)",
    )
    train.add_argument(
        "--init",
        choices=["auto", "glorot_uniform", "he_normal", "normal"],
        default="auto",
        help="weight initializer; auto: he_normal for the ReLU family, glorot_uniform otherwise",
    )
    train.add_argument(
        "--optimizer",
        choices=sorted(optimizers.OPTIMIZERS),
        default="sgd",
        help="optimizer (default sgd, with momentum 0.9)",
    )
    train.add_argument(
        "--learning-rate",
        "--lr",
        type=float,
        default=None,
        help="learning rate (default 0.05 for sgd, 0.001 otherwise)",
    )
    train.add_argument(
        "--momentum", type=float, default=0.9, help="sgd momentum (default 0.9; 0 for plain SGD)"
    )
    train.add_argument("--nesterov", action="store_true", help="sgd: Nesterov momentum")
    train.add_argument(
        "--weight-decay",
        type=float,
        default=0.004,
        help="adamw: decoupled weight decay (default 0.004)",
    )
    train.add_argument("--epochs", type=_positive_int, default=15, help="default 15")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="default 32")
    train.add_argument(
        "--validation-split",
        type=_fraction,
        default=0.1,
        help="fraction of the training images held out to report validation "
        "figures each epoch (default 0.1; 0 for none)",
    )
    train.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds weights and shuffling: the same seed prints the same results",
    )
    train.add_argument("--save", metavar="PATH", help="save the trained model (.npz)")
    train.add_argument(
        "--plot",
        metavar="PATH",
        help="write learning curves to PATH (PNG), and beside it, with -misclassified, "
        "-gradients and -confusion added to its name, the misclassified test digits, each "
        "layer's gradient norms per epoch and the confusion matrix; needs the plot extra",
    )
    train.add_argument(
        "--gradient-norms",
        action="store_true",
        help="record each layer's mean ||dC/dW|| and mean |delta| per epoch on the device "
        "(the GradientNorms callback; --plot implies it) and print the last epoch's",
    )
    train.add_argument(
        "--quiet", action="store_true", help="no progress bar or per-epoch lines: only the results"
    )
    train.add_argument(
        "--distributed",
        action="store_true",
        help="train data-parallel over MPI (implied when started by mpiexec with several "
        "processes); needs the mpi extra",
    )

    evaluate = sub.add_parser("evaluate", help="a saved model's loss and metrics on the test split")
    evaluate.add_argument("model", metavar="PATH", help="a model saved with --save")
    _add_data_options(evaluate)

    predict = sub.add_parser("predict", help="classify one digit with a saved model")
    predict.add_argument("model", metavar="PATH", help="a model saved with --save")
    which = predict.add_mutually_exclusive_group(required=True)
    which.add_argument("--index", type=int, help="an index into the test split")
    which.add_argument(
        "--image",
        metavar="FILE",
        help="a 28x28 grayscale image: .npy (values 0-1 or 0-255), or .png/.jpg "
        "(needs the plot extra); a dark digit on a light background is "
        "inverted to MNIST's light-on-dark",
    )
    _add_data_options(predict)
    return parser


# --------------------------------------------------------------------------- helpers
def _backend(
    name: str | None, dtype: str = "float32", device: int | None = None, comm: Any = None
) -> Any:
    """The backend `name` (None: $BACKPROP_BACKEND, else numpy, as the Python API takes it);
    data-parallel on GPUs without --device, each rank takes the GPU of its local rank on its
    machine (ranks beyond the GPUs share them, round robin)."""
    from_environment = name is None and bool(os.environ.get("BACKPROP_BACKEND", "").strip())
    name = default_backend() if name is None else name
    try:
        return _get_backend(name, dtype, device, comm)
    except UserError as exc:
        if from_environment:  # say where the name came from
            raise UserError(f"$BACKPROP_BACKEND is {name!r}: {exc}") from exc
        raise


def _get_backend(name: str, dtype: str, device: int | None, comm: Any) -> Any:
    try:
        if device is not None and name.lower() != "cupy":
            raise ValueError(f"--device selects a GPU of --backend cupy, not of {name}")
        if device is None and comm is not None and name.lower() == "cupy":
            device = comm.local_rank % backends.device_count("cupy")
        return backends.get_backend(name, dtype=dtype, device=device)
    except (ValueError, RuntimeError) as exc:
        raise UserError(str(exc)) from exc


def _communicator(args: argparse.Namespace) -> Any:
    """MPI's COMM_WORLD when asked for (--distributed) or launched by mpiexec, else None."""

    if not (args.distributed or distributed.launched_under_mpi()):
        return None
    try:
        comm = distributed.MPICommunicator()
    except RuntimeError as exc:
        raise UserError(str(exc)) from exc
    if comm.size > 1:  # ranks share the machine's cores instead of each taking all of them
        distributed.limit_blas_threads(comm.local_size)
    return comm


def _load_data(args: argparse.Namespace) -> Any:

    if args.dataset == "mnist-sample":
        return datasets.load_mnist_sample()
    try:
        return datasets.load_mnist(args.data_dir, download=not args.no_download, hints=CLI_HINTS)
    except (OSError, RuntimeError, ValueError) as exc:  # missing, offline, corrupt, a file
        raise UserError(str(exc)) from exc


def _shaped(model: Sequential, x: Any) -> Any:
    """Rows of 784 pixels in the model's sample shape: (n, 28, 28) for Input(shape=(28, 28))."""
    return x.reshape((len(x), *(model.sample_shape or (784,))))


def _figures(logs: dict[str, float]) -> str:
    """The test figures, one line each, named as the model was compiled."""
    return "\n".join(f"test {name}: {value:.4f}" for name, value in logs.items())


def _check_memory(args: argparse.Namespace, input_dim: int) -> None:
    """Refuse a network whose training cannot fit in this machine's memory, saying how much
    it would need, before allocating any of it."""
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the build will tell
        return
    if _memory_need(args, input_dim) > have:
        raise UserError(
            _memory_message(args, input_dim) + f", more than this machine's {have / 2**30:.1f} GiB"
        )


def _memory_need(args: argparse.Namespace, input_dim: int) -> int:
    return _parameters(args, input_dim) * np.dtype(args.dtype).itemsize * WEIGHT_COPIES


def _parameters(args: argparse.Namespace, input_dim: int) -> int:
    sizes = [input_dim, *args.layers, 10]
    return sum((n_in + 1) * n_out for n_in, n_out in itertools.pairwise(sizes))


def _memory_message(args: argparse.Namespace, input_dim: int) -> str:
    params, need = _parameters(args, input_dim), _memory_need(args, input_dim)
    return (
        f"--layers {','.join(map(str, args.layers))}: the network has {params:,} parameters; "
        f"training it needs about {need / 2**30:,.1f} GiB (weights, gradients and optimizer "
        f"state in {args.dtype})"
    )


def _targets(loss_name: str, labels: Any) -> Any:
    """Integer labels for sparse_categorical_crossentropy, one-hot rows for every other loss."""

    return labels if losses.get_loss(loss_name).targets == "labels" else one_hot(labels)


PLOT_KINDS = ("misclassified", "gradients", "confusion")  # the files beside the curves


def _plot_paths(path: str) -> tuple[Path, ...]:
    """The learning curves' file (PATH, or PATH.png without an extension), then the files
    of PLOT_KINDS beside it, in the same format: curves-misclassified.png, ..."""
    curves = Path(path)
    if not curves.suffix:
        curves = curves.with_name(curves.name + ".png")
    return curves, *(curves.with_name(f"{curves.stem}-{k}{curves.suffix}") for k in PLOT_KINDS)


def _check_outputs(args: argparse.Namespace) -> None:
    """--save and --plot, checked before any training: a path that cannot be written (a
    directory, a read-only place) or a picture format matplotlib lacks is found now, not
    after the work. Missing directories are made."""

    if args.save:
        try:
            check_writable(args.save, create=True)
        except OSError as exc:
            raise UserError(f"--save: {exc}") from exc
    if args.plot:
        from .plotting import supported_formats

        try:
            formats = supported_formats()
        except RuntimeError as exc:  # matplotlib missing
            raise UserError(f"--plot: {exc}") from exc
        paths = _plot_paths(args.plot)
        kind = paths[0].suffix[1:].lower()
        if kind not in formats:
            raise UserError(
                f"--plot: matplotlib cannot write .{kind} files; use one of "
                + ", ".join(f".{f}" for f in formats)
            )
        try:
            for path in paths:
                check_writable(path, create=True)
        except OSError as exc:
            raise UserError(f"--plot: {exc}") from exc


def _save(model: Any, path: str) -> str | None:
    """Save the trained model to `path`; if that fails now (the disk filled up, the place
    became read-only), save it to a fallback file in the working directory instead, so the
    work is not lost. Returns the error to report, or None."""
    try:
        model.save(path)
    except OSError as exc:
        reason = str(exc)
    else:
        print(f"saved model to {path}")
        return None
    fallback = Path.cwd() / f"xpbackprop-model-{time.strftime('%Y%m%d-%H%M%S')}.npz"
    try:
        model.save(fallback)
    except OSError as exc:
        return f"--save: {reason}; saving to {fallback} instead failed too: {exc}"
    print(f"saved model to {fallback} (not {path})")
    return f"--save: {reason}; the trained model was saved to {fallback} instead"


def _optimizer(args: argparse.Namespace) -> Any:
    lr = (
        args.learning_rate
        if args.learning_rate is not None
        else (0.05 if args.optimizer == "sgd" else 0.001)
    )
    if args.optimizer == "sgd":
        return optimizers.SGD(lr, momentum=args.momentum, nesterov=args.nesterov)
    if args.optimizer == "adamw":
        return optimizers.AdamW(lr, weight_decay=args.weight_decay)
    return optimizers.OPTIMIZERS[args.optimizer](lr)


# --------------------------------------------------------------------------- commands
def train(args: argparse.Namespace) -> None:
    _check_outputs(args)  # before training, not after
    started = time.perf_counter()
    comm = _communicator(args)
    chief = comm is None or comm.rank == 0  # the process that prints and writes files
    backend = _backend(args.backend, args.dtype, args.device, comm)
    (x_train, y_train), (x_test, y_test) = _load_data(args)
    model, optimizer = _build_model(args, backend, x_train.shape[1])
    if not args.quiet and chief:
        model.summary()
        held = int(len(x_train) * args.validation_split)
        print(
            f"Training on {len(x_train) - held} {args.dataset} images"
            + (f" ({held} held out for validation)" if held else "")
            + f", testing on {len(x_test)}; optimizer {optimizer!r}, "
            f"learning rate {optimizer.current_learning_rate():g}"
        )
    _start_ranks(comm, backend, chief)
    try:
        history = model.fit(
            x_train,
            _targets(args.loss, y_train),
            epochs=args.epochs,
            batch_size=args.batch_size,
            validation_split=args.validation_split,
            verbose=0 if args.quiet else 1,
            distributed=comm if comm is not None else False,
            callbacks=[GradientNorms()] if args.gradient_norms or args.plot else None,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except (TrainingDivergedError, DistributedError) as exc:  # every rank: rank 0 says it
        raise UserError(str(exc), quiet=not chief) from exc
    trained = time.perf_counter()
    logs = model.evaluate(x_test, _targets(args.loss, y_test), return_dict=True)
    if not chief:
        return
    print(_figures(logs))
    if args.gradient_norms:
        _print_gradient_norms(history.history)
    failures = _write_outputs(args, model, history, (x_test, y_test), logs["accuracy"])
    ended = time.perf_counter()
    print(
        f"wall time: {ended - started:.1f} s (training {trained - started:.1f} s, "
        f"{sum(history.seconds) / len(history.seconds):.2f} s per epoch)",
        file=sys.stderr,
    )
    if failures:
        raise UserError("; ".join(failures))


def _build_model(
    args: argparse.Namespace, backend: Any, input_dim: int
) -> tuple[Sequential, optimizers.Optimizer]:
    """The command line's network, compiled; a bad choice is a UserError, and so is a
    network too big for the machine's memory."""
    _check_memory(args, input_dim)
    init = (
        args.init
        if args.init != "auto"
        else ("he_normal" if args.activation in RELU_FAMILY else "glorot_uniform")
    )
    try:
        model = Sequential(
            [Dense(n, args.activation, kernel_initializer=init) for n in args.layers]
            + [Dense(10, args.output_activation)],
            input_dim=input_dim,
            backend=backend,
            dtype=args.dtype,
            seed=args.seed,
        )
        optimizer = _optimizer(args)
        model.compile(loss=args.loss, optimizer=optimizer, metrics=["accuracy"])
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    except MemoryError:
        raise UserError(_memory_message(args, input_dim) + ", more than is free") from None
    return model, optimizer


def _start_ranks(comm: Any, backend: Any, chief: bool) -> None:
    """Data-parallel: choose the all-reduce path with every rank, and say which."""
    if comm is None or comm.size == 1:
        return
    try:
        path = comm.prepare(backend)  # every rank together
    except RuntimeError as exc:  # DistributedError: the same message on every rank
        raise UserError(str(exc)) from exc
    if chief:
        print(f"data-parallel over {comm.size} ranks ({path})", flush=True)


def _print_gradient_norms(figures: dict[str, list[float]]) -> None:
    """The last epoch's GradientNorms figures, one line per layer."""
    print("gradient norms, last epoch (mean over its steps):")
    for key, values in figures.items():
        if key.startswith("grad_norm/"):
            layer = key.split("/", 1)[1]
            delta = figures[f"delta/{layer}"][-1]
            print(f"  {layer}: ||dC/dW|| {values[-1]:.4e}, |delta| {delta:.4e}")


def _write_outputs(
    args: argparse.Namespace, model: Sequential, history: Any, test: Any, accuracy: float
) -> list[str]:
    """--save and --plot; returns what could not be written (the rest still is)."""
    failures = []
    if args.save:
        failure = _save(model, args.save)
        if failure:
            failures.append(failure)
    if args.plot:
        try:
            _write_plots(args, model, history, test, accuracy)
        except (OSError, ValueError) as exc:
            failures.append(f"--plot: could not write the pictures: {exc}")
    return failures


def _write_plots(
    args: argparse.Namespace, model: Sequential, history: Any, test: Any, accuracy: float
) -> None:
    """The four pictures of --plot, titled with the network, the optimizer, the learning
    rate and the test accuracy."""
    from .plotting import (
        plot_confusion_matrix,
        plot_gradients,
        plot_history,
        plot_misclassified,
    )

    x_test, y_test = test
    curves, grid, gradients, confusion = _plot_paths(args.plot)
    network = "-".join(map(str, [x_test.shape[1], *args.layers, 10]))
    optimizer = model.optimizer
    assert optimizer is not None
    title = (
        f"{network} {args.activation}/{args.output_activation}, {args.loss}\n"
        f"{type(optimizer).__name__}, learning rate {optimizer.current_learning_rate():g}, "
        f"{len(history.epoch)} epochs, batch {args.batch_size}: test accuracy {accuracy:.2%}"
    )
    plot_history(history.history, curves, title=title)
    probabilities = model.predict(x_test)
    predicted = probabilities.argmax(axis=1)
    wrong = plot_misclassified(
        x_test, y_test, predicted, grid, probabilities=probabilities
    ).misclassified
    plot_gradients(history.history, gradients, title=title)
    plot_confusion_matrix(
        y_test, predicted, confusion, title=f"Confusion matrix, {network}: {accuracy:.2%} correct"
    )
    print(f"wrote {curves} (learning curves) and {grid} ({wrong} misclassified digits)")
    print(f"wrote {gradients} (gradient norms per layer) and {confusion} (confusion matrix)")


def _load(path: str, backend_name: str | None, device: int | None = None) -> Any:

    backend = _backend(backend_name, device=device)
    try:
        model = load_model(path, backend=backend)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if model.input_dim != 784 or model.output_dim != 10:
        raise UserError(
            f"{path} holds a {model.input_dim}-input, {model.output_dim}-output "
            "network; MNIST needs 784 inputs and 10 outputs"
        )
    return model


def evaluate(args: argparse.Namespace) -> None:
    model = _load(args.model, args.backend, args.device)
    if model.loss is None:
        raise UserError(f"{args.model} holds an uncompiled model: it has no loss to evaluate")
    _, (x_test, y_test) = _load_data(args)
    logs = model.evaluate(
        _shaped(model, x_test), _targets(model.loss.name, y_test), return_dict=True
    )
    print(f"test images: {len(x_test)} ({args.dataset})")
    print(_figures(logs))


def _read_image(path: str) -> Any:

    try:
        return load_digit_image(path).reshape(1, 784)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from exc
    except RuntimeError as exc:  # matplotlib missing for a PNG or JPEG
        raise UserError(f"--image {path}: {exc} (or pass a .npy file)") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc


def predict(args: argparse.Namespace) -> None:
    model = _load(args.model, args.backend, args.device)
    if args.image is not None:
        x, truth = _read_image(args.image), None
        source = args.image
    else:
        _, (x_test, y_test) = _load_data(args)
        if not 0 <= args.index < len(x_test):
            raise UserError(f"--index must be in [0, {len(x_test) - 1}], got {args.index}")
        x, truth = x_test[args.index : args.index + 1], int(y_test[args.index])
        source = f"test image {args.index} of {args.dataset}"
    probabilities = model.predict(_shaped(model, x))[0]
    digit = int(probabilities.argmax())
    print(f"{source}: digit {digit}" + (f" (true label {truth})" if truth is not None else ""))
    for d, p in enumerate(probabilities):
        print(f"  {d}: {p:.4f}" + ("  <-" if d == digit else ""))


COMMANDS = {"train": train, "evaluate": evaluate, "predict": predict}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        try:
            # a diverging run overflows: the training loop reports that in one line (NaN or
            # an exploded loss), so NumPy's per-operation warnings would only bury the message
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                COMMANDS[args.command](args)
        except UserError as exc:
            sys.stdout.flush()
            parser.exit(2, None if exc.quiet else f"{parser.prog} {args.command}: error: {exc}\n")
        sys.stdout.flush()  # here, where a reader that left is caught, not at exit
    except BrokenPipeError:
        _drop_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")
    return 0


def _drop_stdout() -> None:
    """The reader of stdout has gone (`| head -1`): send what is still buffered to /dev/null,
    so that Python's flush at exit does not complain about the pipe either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured in tests)
        pass
