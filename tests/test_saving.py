"""save / load_model: round trips across backends, exact resume, atomic writes, bad files."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import make_backend

import backprop.saving
from backprop import SGD, AdamW, CosineDecay, Dense, Dropout, Sequential, load_model
from backprop.datasets import load_mnist_sample


@pytest.fixture(scope="module")
def digits():
    (x, y), _ = load_mnist_sample()
    return x[:400], y[:400]


def make_model(backend, optimizer=None):
    model = Sequential(
        [Dense(16, "tanh"), Dense(16, "relu", l2=1e-4), Dense(10, "softmax")],
        input_dim=784,
        backend=backend,
        seed=11,
    )
    model.compile(
        loss="categorical_crossentropy",
        optimizer=optimizer or AdamW(learning_rate=CosineDecay(0.01, 40)),
    )
    return model


def test_resume_equals_uninterrupted(backend_name, digits, tmp_path):
    """2 epochs, save, load, 2 more == 4 epochs straight: weights, optimizer state, schedule
    step and shuffling order all carry over."""
    x, y = digits
    y1 = np.eye(10)[y]
    be = make_backend(backend_name)
    straight = make_model(be)
    full = straight.fit(x, y1, epochs=4, batch_size=32, verbose=0).history

    first = make_model(be)
    part1 = first.fit(x, y1, epochs=2, batch_size=32, verbose=0).history
    first.save(tmp_path / "ckpt.npz")
    resumed = load_model(tmp_path / "ckpt.npz", backend=be)
    part2 = resumed.fit(x, y1, epochs=2, batch_size=32, verbose=0)
    assert part2.epoch == [2, 3]
    for got, expected in zip(resumed.get_weights(), straight.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)
    assert part1["loss"] + part2.history["loss"] == full["loss"]


def test_save_on_one_backend_load_on_another(backend_name, digits, tmp_path):
    x, y = digits
    source = make_model("numpy")
    source.fit(x, np.eye(10)[y], epochs=1, verbose=0)
    source.save(tmp_path / "m.npz")
    be = make_backend(backend_name)
    loaded = load_model(tmp_path / "m.npz", backend=be)
    assert loaded.backend is be
    for got, expected in zip(loaded.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(loaded.predict(x[:50]), source.predict(x[:50]), rtol=1e-5, atol=1e-7)
    assert loaded.loss.name == "categorical_crossentropy"
    assert loaded.optimizer.config() == source.optimizer.config()
    assert loaded.optimizer.iterations == source.optimizer.iterations == 13


def test_uncompiled_model_round_trip(tmp_path):
    model = Sequential(
        [Dense(3, "maxout"), Dense(2, {"name": "leaky_relu", "alpha": 0.2})],
        input_dim=4,
        dtype="float64",
        seed=1,
    )
    model.save(tmp_path / "plain.npz")
    loaded = load_model(tmp_path / "plain.npz")
    assert loaded.dtype == "float64" and loaded.loss is None
    assert loaded.layers[1].activation.alpha == 0.2 and loaded.layers[0].activation.pieces == 2
    x = np.random.default_rng(0).standard_normal((5, 4))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_file_holds_no_pickle(tmp_path, digits):
    x, y = digits
    model = make_model("numpy")
    model.fit(x[:64], np.eye(10)[y[:64]], verbose=0)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as npz:  # would raise on pickles
        assert all(npz[k].dtype != object for k in npz.files)
        assert int(npz["format_version"]) == backprop.saving.FORMAT_VERSION
        config = json.loads(str(npz["config"]))
    assert config["optimizer"]["config"]["name"] == "adamw"


def test_atomic_save_keeps_the_old_file(tmp_path, digits, monkeypatch):
    x, y = digits
    model = make_model("numpy")
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    model.fit(x[:64], np.eye(10)[y[:64]], verbose=0)

    def interrupted(f, arrays):
        f.write(b"PK\x03\x04 partial")  # half a zip file, then the failure
        raise KeyboardInterrupt

    monkeypatch.setattr(backprop.saving, "_write_arrays", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left
    load_model(path)  # still a valid model


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    make_model("numpy").save(path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(
        ValueError, match="is not a valid xpbackprop-model file: it is corrupted or truncated"
    ):
        load_model(path)


def test_corrupted_file(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match=r"neither an \.npz archive nor a NumPy array file"):
        load_model(path)


def test_random_bytes_do_not_quote_numpys_pickle_advice(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError) as caught:
        load_model(path)
    assert "pickle" not in str(caught.value) and "unsafe" not in str(caught.value)


def test_npy_array_file_is_reported_not_a_type_error(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.ones(3))
    with pytest.raises(
        ValueError,
        match=r"a.npy is not a valid xpbackprop-model file: it "
        r"holds one NumPy array \(a .npy file\), not a saved model",
    ):
        load_model(path)


def _rewrite_config(path, change):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    config = json.loads(str(arrays["config"]))
    change(config)
    arrays["config"] = np.array(json.dumps(config))
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(epochs_done="three"),
        lambda c: c.update(epochs_done=-1),
        lambda c: c.update(shuffle_rng={"bit_generator": "PCG64", "state": "garbage"}),
        lambda c: c.update(shuffle_rng=None),
        lambda c: c["optimizer"].update(iterations="x"),
        lambda c: c["optimizer"].update(config={"name": "nonsense"}),
        lambda c: c.update(layers=[{"units": -3}]),
    ],
)
def test_corrupted_checkpoint_fields_give_one_clear_error(tmp_path, change):
    path = tmp_path / "m.npz"
    make_model("numpy").save(path)
    _rewrite_config(path, change)
    with pytest.raises(ValueError, match=r"m.npz is not a valid xpbackprop-model file: its "):
        load_model(path)


def test_saved_file_gets_the_umask_permissions(tmp_path):
    path = tmp_path / "m.npz"
    old = os.umask(0o022)
    try:
        make_model("numpy").save(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_overwriting_keeps_the_files_permissions(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"old")
    path.chmod(0o640)
    make_model("numpy").save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    load_model(path)


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    """A save killed with -9 leaves its temporary file; the next save to the path removes
    it (its writer is gone), and leaves other files, and live writers' files, alone."""
    path = tmp_path / "m.npz"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".tmp-m.npz-{dead.stdout.strip()}-abc123.npz"
    stale.write_bytes(b"x" * 1000)
    live = tmp_path / f".tmp-m.npz-{os.getppid()}-def456.npz"
    live.write_bytes(b"y")
    other = tmp_path / f".tmp-other.npz-{dead.stdout.strip()}-abc123.npz"
    other.write_bytes(b"z")
    make_model("numpy").save(path)
    assert not stale.exists()
    assert live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")) == sorted(
        [live.name, other.name]
    )


@pytest.mark.parametrize("where", ["missing-directory", "directory", "read-only", "read-only-file"])
def test_save_errors_name_the_path_not_a_temporary_file(tmp_path, where, monkeypatch):
    model = make_model("numpy")
    if where == "missing-directory":
        target, expected = tmp_path / "nodir" / "m.npz", "the directory .*nodir does not exist"
    elif where == "directory":
        target, expected = tmp_path, "it is a directory"
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        target = folder / "m.npz"
        locked = folder if where == "read-only" else target
        if where == "read-only-file":
            model.save(target)
        locked.chmod(0o500 if locked == folder else 0o400)
        real_access = os.access
        # root may write anyway: the check is what is tested, so it sees what a user would
        # (no write permission; asked for anything else, the real answer)
        monkeypatch.setattr(
            backprop.saving.os,
            "access",
            lambda p, mode: not mode & os.W_OK if str(p) == str(locked) else real_access(p, mode),
        )
        why = (
            "the directory .* is read-only"
            if locked == folder
            else r"the file is read-only \(no write permission\); remove it or make it "
            "writable to replace it"
        )
        expected = f"^cannot write to {re.escape(str(target))}: {why}$"
    with pytest.raises(OSError, match=expected) as caught:
        model.save(target)
    assert ".tmp" not in str(caught.value)


def test_wrong_version(tmp_path):
    path = tmp_path / "m.npz"
    make_model("numpy").save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["format_version"] = np.array(99)
    np.savez(path, **arrays)
    with pytest.raises(
        ValueError, match="format version 99, but this version of xpbackprop reads versions 1, 2"
    ):
        load_model(path)


def test_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(ValueError, match="has no xpbackprop format tag"):
        load_model(path)


def test_missing_weight(tmp_path):
    path = tmp_path / "m.npz"
    make_model("numpy").save(path)
    with zipfile.ZipFile(path) as zf:
        kept = {n: zf.read(n) for n in zf.namelist() if n != "weight_3.npy"}
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in kept.items():
            zf.writestr(n, data)
    with pytest.raises(ValueError, match="contents are inconsistent"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file at"):
        load_model(tmp_path / "nope.npz")


def test_unsavable_learning_rate(tmp_path):
    model = make_model("numpy", optimizer=SGD(learning_rate=lambda step: 0.1))
    with pytest.raises(ValueError, match="cannot be saved without pickle"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_version_1_checkpoints_still_load(tmp_path):
    """Files written before the Layer protocol (format 1: Dense keyword arguments and an
    input_dim) load with their weights, optimizer state and epoch count."""
    path = tmp_path / "v1.npz"
    model = make_model("numpy")
    model.save(path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    config = json.loads(str(arrays["config"]))
    config["layers"] = [
        {k: v for k, v in layer["config"].items() if k not in ("name", "input_shape")}
        for layer in config["layers"]
    ]
    config["input_dim"] = config.pop("input_shape")[0]
    config.pop("name")
    arrays["config"] = np.array(json.dumps(config))
    arrays["format_version"] = np.array(1)
    np.savez(path, **arrays)
    loaded = load_model(path)
    for got, want in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert loaded.epochs_done == model.epochs_done


def test_load_weights_puts_the_saved_weights_back(backend_name, digits, tmp_path):
    """save_weights, then load_weights into a model with other weights: its weights and its
    predictions become the saved model's (from a weights file and from a whole saved model),
    and the file's arrays are not changed."""
    x, y = digits
    be = make_backend(backend_name)
    source = make_model(be)
    source.fit(x, np.eye(10)[y], epochs=1, verbose=0)
    source.save_weights(tmp_path / "w.weights.h5")
    source.save(tmp_path / "m.npz")
    expected = source.predict(x[:50])
    for path in (tmp_path / "w.weights.h5", tmp_path / "m.npz"):
        target = make_model(be)  # seed 11, untrained: other weights
        assert not np.allclose(target.predict(x[:50]), expected, atol=1e-3)
        target.load_weights(path)
        for got, want in zip(target.get_weights(), source.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(target.predict(x[:50]), expected)


def _rewrite_arrays(path, change):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("write", "error", "why"),
    [
        (None, FileNotFoundError, None),
        (
            lambda p: p.write_bytes(b"not a zip"),
            ValueError,
            "it is not an .npz file of weights, or it is damaged",
        ),
        (lambda p: np.savez(p, a=np.ones(2)), ValueError, "it has no xpbackprop format tag"),
        (
            lambda p: np.savez(p, format=np.array("xpbackprop-weights"), weight_0=np.ones(2)),
            ValueError,
            "it holds 1 weight arrays, but the model has 6",
        ),
    ],
)
def test_load_weights_errors_name_the_file_and_keep_the_weights(tmp_path, write, error, why):
    path = tmp_path / "w.npz"
    if write is not None:
        write(path)
    model = make_model("numpy")
    before = model.get_weights()
    expected = (
        f"no weights file at {path}"
        if why is None
        else (f"{path} is not a valid xpbackprop-model file: {why}")
    )
    with pytest.raises(error) as caught:
        model.load_weights(path)
    assert str(caught.value) == expected
    for got, want in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(got, want)


def _dropout_model():
    model = Sequential(
        [Dense(8, "relu"), Dropout(0.5, seed=3), Dense(10, "softmax")], input_dim=784, seed=2
    )
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam")
    return model


def test_layer_state_and_optimizer_state_round_trip(tmp_path, digits):
    """Dropout's (seed, counter) key is a layer state: saved after 3 steps, loaded back as
    it was, not as a fresh layer's; the optimizer's slots likewise."""
    x, y = digits
    model = _dropout_model()
    model.fit(x[:96], y[:96], batch_size=32, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = load_model(tmp_path / "m.npz")
    key = loaded.network.states[0]
    np.testing.assert_array_equal(loaded.backend.to_numpy(key), [3, 3])
    assert key.dtype == np.uint32
    for got, want in zip(loaded.optimizer.state, model.optimizer.state, strict=True):
        assert got.keys() == want.keys() == {"m", "v"}
        for slot in got:
            np.testing.assert_array_equal(got[slot], want[slot])
            assert np.any(got[slot] != 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.pop("state_0"), "layer state state_0 is missing or misshapen"),
        (lambda a: a.update(state_0=np.zeros(3, "uint32")), "state_0 is missing or misshapen"),
        (lambda a: a.pop("optimizer_0_v"), "optimizer state optimizer_0_v is missing or "),
        (lambda a: a.update(optimizer_0_m=np.zeros(2)), "optimizer_0_m is missing or misshapen"),
        (lambda a: a.update(format_version=np.array("x")), "its format version is not a number"),
        (lambda a: a.pop("config"), "its contents are inconsistent"),
    ],
)
def test_missing_or_misshapen_arrays_are_named(tmp_path, digits, change, message):
    x, y = digits
    model = _dropout_model()
    model.fit(x[:32], y[:32], verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite_arrays(path, change)
    with pytest.raises(ValueError, match=message):
        load_model(path)


def test_a_directory_is_not_a_model_file(tmp_path):
    with pytest.raises(
        ValueError, match=f"^{tmp_path} is not a valid xpbackprop-model file: it is a directory$"
    ):
        load_model(tmp_path)


def _corrupt_a_member(path):
    """Flip bytes inside weight_0's data: the archive's directory is intact, the member's
    CRC is not."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("weight_0.npy")
        offset = info.header_offset + 30 + len(info.filename) + len(info.extra) + 200
    data = bytearray(path.read_bytes())
    data[offset : offset + 8] = bytes(255 - b for b in data[offset : offset + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda p: p.write_bytes(b"not a zip"),
            "it is neither an .npz archive nor a NumPy array file",
        ),
        (
            lambda p: p.write_bytes(p.read_bytes()[:1000]),
            r"it is corrupted or truncated \(BadZipFile: .+\)",
        ),
        (_corrupt_a_member, r"it is corrupted or truncated \(BadZipFile: .+\)"),
        (
            lambda p: np.savez(p, a=np.ones(3)),
            r"it has no xpbackprop format tag \(was it written by model.save\?\)",
        ),
        (
            lambda p: _rewrite_arrays(p, lambda a: a.update(format_version=np.array("x"))),
            "its format version is not a number",
        ),
        (
            lambda p: _rewrite_arrays(p, lambda a: a.pop("format_version")),
            "format version -1, but this version of xpbackprop reads versions 1, 2",
        ),
        (
            lambda p: _rewrite_arrays(p, lambda a: a.pop("config")),
            r"its contents are inconsistent \(KeyError: 'config'\)",
        ),
    ],
)
def test_load_model_errors_say_which_file_and_why(tmp_path, change, why):
    path = tmp_path / "m.npz"
    make_model("numpy").save(path)
    change(path)
    with pytest.raises(
        ValueError, match=f"^{re.escape(str(path))} is not a valid xpbackprop-model file: {why}$"
    ):
        load_model(path)


def test_a_save_writes_a_named_temporary_beside_the_file_then_renames_it(tmp_path, monkeypatch):
    """The temporary is `.tmp-<name>-<pid>-XXXX.npz` in the target's directory (so the
    rename is atomic, and a later save can tell whose it is)."""
    renames = []
    real = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst: (renames.append((src, dst)), real(src, dst))
    )
    path = tmp_path / "m.npz"
    make_model("numpy").save(path)
    ((src, dst),) = renames
    assert os.path.dirname(src) == str(tmp_path) and dst == str(path)
    assert re.fullmatch(rf"\.tmp-m\.npz-{os.getpid()}-\w+\.npz", os.path.basename(src)), src


def test_temporaries_of_live_writers_are_kept(tmp_path):
    """A temporary of this process or of another live one is a save in progress: kept, and
    the other process is left alone (it is only asked whether it exists)."""
    path = tmp_path / "m.npz"
    child = "import signal, time; signal.signal(signal.SIGHUP, signal.SIG_DFL); time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", child])  # dies of any signal but 0
    try:
        mine = tmp_path / f".tmp-m.npz-{os.getpid()}-abc123.npz"
        theirs = tmp_path / f".tmp-m.npz-{other.pid}-def456.npz"
        mine.write_bytes(b"x")
        theirs.write_bytes(b"x")
        make_model("numpy").save(path)
        assert mine.exists() and theirs.exists()
        with pytest.raises(subprocess.TimeoutExpired):  # still alive
            other.wait(timeout=1)
    finally:
        other.kill()
        other.wait()


def test_check_writable_makes_missing_directories_or_says_why_not(tmp_path):
    from backprop.saving import check_writable

    nested = tmp_path / "a" / "b" / "m.npz"
    assert check_writable(nested, create=True) == str(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    blocked = tmp_path / "file" / "sub" / "m.npz"
    expected = (
        f"cannot write to {blocked}: cannot create the directory {blocked.parent} (Not a directory)"
    )
    with pytest.raises(PermissionError, match=f"^{re.escape(expected)}$"):
        check_writable(blocked, create=True)


def test_a_large_dropout_seed_survives_the_round_trip(tmp_path):
    """Layer states keep their own dtype through the file: a uint32 seed above 2**24 would
    not survive a trip through float32."""
    model = Sequential([Dense(4), Dropout(0.5, seed=4_000_000_001)], input_dim=3, seed=0)
    model.save(tmp_path / "m.npz")
    key = load_model(tmp_path / "m.npz").network.states[0]
    np.testing.assert_array_equal(key, np.array([4_000_000_001, 0], dtype=np.uint32))


def test_the_files_config_names_the_optimizer_and_its_slots(tmp_path):
    """The config's keys are the file format (older and newer versions read them): an
    uncompiled model records "optimizer": null, a compiled one its optimizer's slots."""

    def config_of(model):
        model.save(tmp_path / "m.npz")
        with np.load(tmp_path / "m.npz") as npz:
            return json.loads(str(npz["config"]))

    assert config_of(Sequential([Dense(2)], input_dim=3))["optimizer"] is None
    record = config_of(make_model("numpy"))["optimizer"]
    assert record["slots"] == ["m", "v"] and record["iterations"] == 0
    assert record["config"]["name"] == "adamw"
