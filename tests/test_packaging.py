"""What a release carries: the license and the data notice in the wheel and the sdist, the
test helpers in the sdist (so its tests run), a version, type information, a console
script, and dependency floors that are true."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import backprop

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = (ROOT / "pyproject.toml").read_text()


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The sdist and the wheel, built from this tree with setuptools' own build backend."""
    setuptools = pytest.importorskip("setuptools")
    major, minor, patch = (int(p) for p in setuptools.__version__.split(".")[:3])
    if (major, minor, patch) < (77, 0, 1):
        pytest.skip(
            f"building needs setuptools >= 77.0.1 (the test extra), not {setuptools.__version__}"
        )
    out = tmp_path_factory.mktemp("dist")
    code = (
        "import sys; from setuptools import build_meta as b; out = sys.argv[1]; "
        "b.build_sdist(out); b.build_wheel(out)"  # (setuptools rewrites sys.argv)
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(out)], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.fail(done.stderr[-3000:])
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return sdist, wheel


def test_wheel_carries_license_notice_data_and_type_markers(dist):
    _, wheel = dist
    names = zipfile.ZipFile(wheel).namelist()
    info = f"xpbackprop-{backprop.__version__}.dist-info"
    assert f"{info}/licenses/LICENSE" in names
    assert f"{info}/licenses/NOTICE" in names
    for name in ("backprop/_data/mnist_5k.npz", "backprop/py.typed", "backends/py.typed"):
        assert name in names
    metadata = zipfile.ZipFile(wheel).read(f"{info}/METADATA").decode()
    assert "License-Expression: BSD-3-Clause" in metadata
    assert "Classifier: Typing :: Typed" in metadata
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "xpbackprop = backprop.cli:main" in entry_points


def test_notice_keeps_the_mnist_terms():
    notice = (ROOT / "NOTICE").read_text()
    assert "CC BY-SA 3.0" in notice and "mnist_5k.npz" in notice
    assert "BSD 3-Clause License" in (ROOT / "LICENSE").read_text()


def test_sdist_carries_what_its_tests_need_and_they_run(dist, tmp_path):
    sdist, _ = dist
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        for needed in (
            "LICENSE",
            "NOTICE",
            "tests/conftest.py",
            "tests/mpi_worker.py",
            "backends/emulated_cupy.py",
            "backprop/_data/mnist_5k.npz",
            "examples/keras_mlp.py",  # tests/test_keras.py runs it
            ".ci/run",  # tests/test_packaging.py reads its floors
        ):
            assert needed in names, needed
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path, **safe)
    unpacked = next(tmp_path.iterdir())
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_backend_registry.py",
            "tests/test_capture.py::test_launch_counts",
            "tests/test_keras.py::test_keras_mlp_program_runs_unchanged_but_its_imports[numpy]",
            "tests/test_packaging.py::test_declared_floors_are_the_ones_ci_installs",
        ],
        cwd=unpacked,
        # the unpacked tree's packages, also for the example it starts in its own process
        env={**os.environ, "PYTHONPATH": str(unpacked)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]


def test_version_is_one_and_the_same():
    assert re.fullmatch(r"\d+\.\d+\.\d+", backprop.__version__)
    assert 'dynamic = ["version"]' in PYPROJECT
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("xpbackprop")
    except PackageNotFoundError:
        pytest.skip("xpbackprop is not installed here (tests run from the source tree)")
    assert installed == backprop.__version__


def test_console_script_runs():
    script = shutil.which("xpbackprop", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("xpbackprop is not installed in this environment (pip install -e .)")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("usage: xpbackprop")


def test_declared_floors_are_the_ones_ci_installs():
    """The floors are true because .ci/run installs exactly them and runs the tests; it
    reads them from here, so the two cannot drift apart."""
    assert '"numpy>=2.1"' in PYPROJECT and '"setuptools>=77.0.1"' in PYPROJECT
    ci = (ROOT / ".ci" / "run").read_text()
    assert "minimum versions" in ci and "pyproject.toml" in ci
