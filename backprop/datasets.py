"""Datasets: the bundled MNIST sample, and full MNIST from the four standard IDX files.

Host-side data loading: NumPy is used directly here, and the arrays returned are host
arrays, which `fit` moves to the model's backend once.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from .checks import is_integer

Split = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]

SAMPLE_SEED = 0  # the fixed seed of the bundled sample's train/test split

MNIST_FILES = {
    # name: (what it holds, MD5 of the gzipped file as published)
    "train-images-idx3-ubyte": ("train images", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte": ("train labels", "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte": ("test images", "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte": ("test labels", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
DOWNLOAD_TIMEOUT_S = 10


def _images_to_float(images: np.ndarray) -> np.ndarray:
    """uint8 images (n, 28, 28) -> float32 rows (n, 784) in [0, 1]."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)


def load_mnist_sample(test_per_class: int = 100) -> Split:
    """The bundled 5,000-image MNIST sample, split per class with a fixed seed.

    Returns (x_train, y_train), (x_test, y_test): 4,000 / 1,000 images by default, 400 / 100
    of each digit, pixels as float32 rows of 784 values in [0, 1], labels as int64 digits. The
    split and the order within each part are the same on every call and every machine.
    """
    if not is_integer(test_per_class) or not 0 < test_per_class < 500:
        raise ValueError(f"test_per_class must be an integer in [1, 499], got {test_per_class!r}")
    with resources.files("backprop").joinpath("_data/mnist_5k.npz").open("rb") as f:
        with np.load(f, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"].astype(np.int64)
    rng = np.random.default_rng(SAMPLE_SEED)
    train_idx, test_idx = [], []
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        test_idx.append(members[:test_per_class])
        train_idx.append(members[test_per_class:])
    train, test = (
        rng.permutation(np.concatenate(train_idx)),
        rng.permutation(np.concatenate(test_idx)),
    )
    return (
        (_images_to_float(images[train]), labels[train]),
        (_images_to_float(images[test]), labels[test]),
    )


# --------------------------------------------------------------------------- IDX files
def parse_idx(raw: bytes, name: str = "IDX file") -> np.ndarray:
    """Parse the bytes of an unsigned-byte IDX file (the MNIST format) into an array.

    Layout: two zero bytes, the type code 0x08 (unsigned byte), the number of dimensions,
    each dimension as a big-endian uint32, then the data. Anything else, or a data length
    that does not match the dimensions, is a ValueError: never a silently short array.
    """
    if len(raw) < 4:
        raise ValueError(f"{name} is truncated: {len(raw)} bytes, shorter than an IDX header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(
            f"{name} is not an unsigned-byte IDX file: magic number {raw[:4].hex()} "
            "(expected 0000080N)"
        )
    ndim = raw[3]
    if not 1 <= ndim <= 4:
        raise ValueError(f"{name} declares {ndim} dimensions; MNIST files have 1 or 3")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{name} is truncated inside its header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise ValueError(
            f"{name} is {state}: dimensions {dims} need {expected} data bytes, "
            f"found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file, gzipped (by its .gz suffix) or not."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path} is corrupted or truncated: {exc}") from exc
    return parse_idx(raw, str(path))


def default_data_dir() -> Path:
    """$BACKPROP_DATA if set, else the user's cache directory ($XDG_CACHE_HOME or ~/.cache)
    under xpbackprop/."""
    if os.environ.get("BACKPROP_DATA"):
        return Path(os.environ["BACKPROP_DATA"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "xpbackprop" / "mnist"


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
        return bytes(response.read())


# How an error tells the user to point at the files or allow the download: in Python's
# words by default; the command line passes its flags (CLI_HINTS in backprop.cli).
PYTHON_HINTS = {"path": "pass load_mnist(path=...)", "download": "call load_mnist(download=True)"}


def _download(directory: Path, stem: str, hints: Mapping[str, str] = PYTHON_HINTS) -> Path:
    """Download stem.gz into `directory`, verify its MD5, and move it into place atomically."""
    what, md5 = MNIST_FILES[stem]
    errors = []
    for mirror in MNIST_MIRRORS:
        url = f"{mirror}{stem}.gz"
        try:
            payload = _fetch(url)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            errors.append(f"{url}: {exc}")
            continue
        digest = hashlib.md5(payload).hexdigest()
        if digest != md5:
            errors.append(f"{url}: checksum {digest} does not match the published {md5}")
            continue
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        target = directory / f"{stem}.gz"
        os.replace(tmp, target)
        return target
    raise RuntimeError(
        f"could not download the MNIST {what} ({stem}.gz):\n  "
        + "\n  ".join(errors)
        + f"\nWithout a network, put the four MNIST files ({', '.join(MNIST_FILES)}; each "
        f"gzipped or not) in {directory}, or {hints['path']}, or set BACKPROP_DATA."
    )


def load_mnist(
    path: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    hints: Mapping[str, str] = PYTHON_HINTS,
) -> Split:
    """Full MNIST: (x_train, y_train), (x_test, y_test), 60,000 and 10,000 images.

    Reads the four standard IDX files (each gzipped or not) from `path`, else from
    default_data_dir(); files missing there are downloaded into it when `download` is true,
    each checked against its published MD5. Pixels come back as float32 rows of 784 values in
    [0, 1], labels as int64. `hints` words the errors' advice ("path": how to name the
    directory, "download": how to allow downloading; the command line names its flags).
    """
    (x_train, y_train), (x_test, y_test) = _read_mnist(path, download, hints)
    return (
        (_images_to_float(x_train), y_train.astype(np.int64)),
        (_images_to_float(x_test), y_test.astype(np.int64)),
    )


class _KerasMNIST:
    """Keras's `keras.datasets.mnist`, so that `from backprop.datasets import mnist` then
    `(x_train, y_train), (x_test, y_test) = mnist.load_data()` runs as a Keras program does:
    uint8 images (n, 28, 28) with pixels 0-255 and uint8 labels, from the four IDX files in
    `path` (a directory; default: load_mnist's), downloaded there when missing."""

    @staticmethod
    def load_data(path: str | os.PathLike[str] | None = None) -> Split:
        return _read_mnist(path, download=True)


mnist = _KerasMNIST()


def _read_mnist(
    path: str | os.PathLike[str] | None, download: bool, hints: Mapping[str, str] = PYTHON_HINTS
) -> Split:
    """The four IDX files as they are: uint8 images (n, 28, 28) and uint8 labels."""
    directory = Path(path) if path is not None else default_data_dir()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"{directory} is a file, not a directory; MNIST is read from a directory holding "
            f"the four files ({', '.join(MNIST_FILES)})"
        )
    found: dict[str, Path] = {}
    for stem in MNIST_FILES:
        file = _find(directory, stem)
        if file is None:
            if not download:
                raise FileNotFoundError(
                    f"MNIST file {stem} (or {stem}.gz) not found in {directory}; put the four "
                    f"files ({', '.join(MNIST_FILES)}) there, or {hints['download']}"
                )
            file = _download(directory, stem, hints)
        found[stem] = file
    x_train, y_train, x_test, y_test = (read_idx(found[stem]) for stem in MNIST_FILES)
    for images, labels, part in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"MNIST {part} files disagree: images {images.shape}, labels {labels.shape}"
            )
        if len(images) == 0:
            raise ValueError(f"MNIST {part} files hold no images (dimensions {images.shape})")
        if images.shape[1:] != (28, 28):
            raise ValueError(
                f"MNIST {part} images are {images.shape[1]}x{images.shape[2]}, not 28x28: "
                "these are not the MNIST files"
            )
        if labels.max(initial=0) > 9:
            raise ValueError(f"MNIST {part} labels hold {labels.max()}, outside 0-9")
    return (x_train, y_train), (x_test, y_test)


# --------------------------------------------------------------------------- helpers
def one_hot(labels: np.ndarray, num_classes: int = 10) -> np.ndarray:
    """Integer labels (n,) -> float32 one-hot rows (n, num_classes) (Keras's to_categorical)."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, dtype=np.int64)]


def _read_npy(path: str) -> np.ndarray:
    """One NumPy array from a .npy file, as float32; anything else is a ValueError that says
    what the file is (never NumPy's advice to load it unsafely)."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if not magic:
        raise ValueError(f"{path} is empty (0 bytes); expected an image saved with numpy.save")
    if magic != b"\x93NUMPY":
        raise ValueError(
            f"{path} is not a NumPy .npy file (it lacks NumPy's header); save the image with "
            "numpy.save, or pass a .png or .jpg"
        )
    try:
        image = np.load(path, allow_pickle=False)
        return np.asarray(image, dtype=np.float32)
    except Exception as exc:  # a damaged header or data, or values that are not numbers
        raise ValueError(f"{path} is a damaged or unreadable .npy file ({exc})") from exc


def load_digit_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A 28x28 grayscale digit as float32 in [0, 1], light on dark like MNIST.

    Reads .npy (values 0-1 or 0-255) or, with matplotlib (the plot extra), PNG/JPEG; color
    is averaged to gray, and a dark digit on light paper (a bright border) is inverted.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no image file at {path}")
    if path.lower().endswith(".npy"):
        image = _read_npy(path)
    else:
        from .plotting import require_matplotlib

        image = np.asarray(require_matplotlib().image.imread(path), dtype=np.float32)
        if image.ndim == 3:  # RGB(A) -> gray
            image = image[..., :3].mean(axis=2)
    if not np.isfinite(image).all():
        raise ValueError(f"{path} holds NaN or infinite values; expected pixel values")
    if image.max() > 1.0:
        image = image / 255.0
    if image.size != 784:
        raise ValueError(f"{path} has shape {image.shape}; expected a 28x28 image")
    image = image.reshape(28, 28)
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    if border.mean() > 0.5:  # dark digit on light paper: invert to MNIST's light on dark
        image = 1.0 - image
    return image
