"""Datasets: the bundled sample's split, the IDX parser, and the MNIST cache and download
logic, on files the tests write themselves (no network)."""

from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.error

import numpy as np
import pytest

from backprop import datasets
from backprop.datasets import load_mnist, load_mnist_sample, parse_idx, read_idx


def test_sample_split_is_stratified_and_fixed():
    (x_train, y_train), (x_test, y_test) = load_mnist_sample()
    assert x_train.shape == (4000, 784) and x_test.shape == (1000, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert np.bincount(y_train).tolist() == [400] * 10
    assert np.bincount(y_test).tolist() == [100] * 10
    assert len(set(y_train[:20].tolist())) > 3  # shuffled, not sorted by label
    (x2, _y2), (_xt2, yt2) = load_mnist_sample()
    np.testing.assert_array_equal(x2, x_train)
    np.testing.assert_array_equal(yt2, y_test)
    # no image is in both parts
    train_rows = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_rows for row in x_test)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def fake_mnist(n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }


def write_files(directory, arrays, gzipped):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gzipped:
            (directory / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (directory / stem).write_bytes(raw)


def test_parse_idx_round_trip():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(parse_idx(idx_bytes(a)), a)
    np.testing.assert_array_equal(parse_idx(idx_bytes(np.array([3, 1, 4]))), [3, 1, 4])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b[:2], "truncated: 2 bytes"),
        (
            lambda b: b"\x00\x00\x0d\x03" + b[4:],
            "not an unsigned-byte IDX file: magic number 00000d03",
        ),
        (lambda b: b"\x01" + b[1:], "magic number 01000803"),
        (lambda b: b[:10], "truncated inside its header"),
        (lambda b: b[:-1], r"truncated: dimensions \(2, 3, 4\) need 24 data bytes, found 23"),
        (lambda b: b + b"\x00", "longer than its header says"),
        (lambda b: b"\x00\x00\x08\x09" + b[4:], "declares 9 dimensions"),
    ],
)
def test_parse_idx_rejects_bad_files(mutate, message):
    good = idx_bytes(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=message):
        parse_idx(mutate(good))


def test_read_idx_corrupted_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 2))))[:-6])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        read_idx(path)


@pytest.mark.parametrize("gzipped", [True, False])
def test_load_mnist_from_a_directory(tmp_path, gzipped):
    arrays = fake_mnist()
    write_files(tmp_path, arrays, gzipped)
    (x, _y), (xt, yt) = load_mnist(tmp_path, download=False)
    assert x.shape == (6, 784) and xt.shape == (4, 784) and x.dtype == np.float32
    np.testing.assert_allclose(x, arrays["train-images-idx3-ubyte"].reshape(6, 784) / 255.0)
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte"])


def test_load_mnist_uses_the_cache_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKPROP_DATA", str(tmp_path / "cache"))
    assert datasets.default_data_dir() == tmp_path / "cache"
    arrays = fake_mnist()
    write_files(tmp_path / "cache", arrays, gzipped=True)
    (x, y), _ = load_mnist(download=False)  # read from the cache, nothing downloaded
    np.testing.assert_allclose(x, arrays["train-images-idx3-ubyte"].reshape(6, 784) / 255.0)
    np.testing.assert_array_equal(y, arrays["train-labels-idx1-ubyte"])
    monkeypatch.delenv("BACKPROP_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.default_data_dir() == tmp_path / "xdg" / "xpbackprop" / "mnist"


def test_missing_files_without_download(tmp_path):
    with pytest.raises(
        FileNotFoundError,
        match=r"train-images-idx3-ubyte \(or .*\.gz\) not "
        r"found in .*; put the four files",
    ):
        load_mnist(tmp_path, download=False)


def test_no_network_fails_at_once_saying_where_to_put_the_files(tmp_path, monkeypatch):
    def offline(url):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "_fetch", offline)
    with pytest.raises(
        RuntimeError,
        match=r"could not download the MNIST train images(.|\n)*"
        r"Without a network, put the four MNIST files",
    ):
        load_mnist(tmp_path / "empty")


def test_download_verifies_checksums_and_caches(tmp_path, monkeypatch):
    arrays = fake_mnist()
    payloads = {stem: gzip.compress(idx_bytes(a)) for stem, a in arrays.items()}
    checksums = {
        stem: (what, hashlib.md5(payloads[stem]).hexdigest())
        for stem, (what, _) in datasets.MNIST_FILES.items()
    }
    monkeypatch.setattr(datasets, "MNIST_FILES", checksums)
    fetched = []

    def fake_fetch(url):
        fetched.append(url)
        stem = url.rsplit("/", 1)[1].removesuffix(".gz")
        return payloads[stem]

    monkeypatch.setattr(datasets, "_fetch", fake_fetch)
    (x, _), _ = load_mnist(tmp_path / "dl")
    assert len(fetched) == 4 and len(x) == 6
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(
        f"{s}.gz" for s in checksums
    )
    load_mnist(tmp_path / "dl")  # the second call reads the cache
    assert len(fetched) == 4

    # a payload whose checksum does not match is rejected, and nothing is cached
    payloads["t10k-labels-idx1-ubyte"] = gzip.compress(b"tampered")
    (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(RuntimeError, match="does not match the published"):
        load_mnist(tmp_path / "dl")
    assert not (tmp_path / "dl" / "t10k-labels-idx1-ubyte.gz").exists()


def test_images_and_labels_must_agree(tmp_path):
    arrays = fake_mnist()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:5]
    write_files(tmp_path, arrays, gzipped=False)
    with pytest.raises(ValueError, match="MNIST train files disagree"):
        load_mnist(tmp_path, download=False)


def test_one_hot():
    np.testing.assert_array_equal(datasets.one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])
    assert datasets.one_hot(np.array([9])).dtype == np.float32


def test_load_digit_image(tmp_path):
    digit = np.zeros((28, 28), dtype=np.uint8)
    digit[10:18, 12:15] = 255
    np.save(tmp_path / "light_on_dark.npy", digit)
    np.save(tmp_path / "dark_on_light.npy", 255 - digit)
    a = datasets.load_digit_image(tmp_path / "light_on_dark.npy")
    b = datasets.load_digit_image(tmp_path / "dark_on_light.npy")
    np.testing.assert_array_equal(a, b)  # inverted to MNIST's light digit on dark
    assert a.dtype == np.float32 and a.max() == 1.0 and a[0, 0] == 0.0
    np.save(tmp_path / "wrong.npy", np.zeros((10, 10)))
    with pytest.raises(ValueError, match=r"has shape \(10, 10\); expected a 28x28 image"):
        datasets.load_digit_image(tmp_path / "wrong.npy")
    with pytest.raises(FileNotFoundError, match="no image file at"):
        datasets.load_digit_image(tmp_path / "missing.npy")


def test_keras_mnist_load_data(tmp_path, monkeypatch):
    """`from backprop.datasets import mnist; mnist.load_data()` as Keras's: uint8 images
    (n, 28, 28) with pixels 0-255 and uint8 labels."""
    from backprop.datasets import mnist

    arrays = fake_mnist()
    write_files(tmp_path, arrays, gzipped=True)
    monkeypatch.setenv("BACKPROP_DATA", str(tmp_path))
    (x, y), (_, yt) = mnist.load_data()
    assert x.dtype == np.uint8 and x.shape[1:] == (28, 28) and y.dtype == np.uint8
    np.testing.assert_array_equal(x, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(yt, arrays["t10k-labels-idx1-ubyte"])
