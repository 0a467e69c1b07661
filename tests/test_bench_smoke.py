"""The benchmark tools still run: the report (with the data-parallel section and the plot)
and the pytest-benchmark suite, on tiny settings. Their timings are not checked here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_report_runs(tmp_path, capsys):
    from bench import mpi_scaling, report

    argv = [
        "--networks",
        "784-16-16-10",
        "--batch-sizes",
        "128",
        "--samples",
        "1500",
        "--rounds",
        "1",
        "--json",
        str(tmp_path / "r.json"),
    ]
    has_plot = True
    try:
        import matplotlib  # noqa: F401

        argv += ["--plot", str(tmp_path / "r.png")]
    except ImportError:
        has_plot = False
    with_mpi = mpi_scaling.unavailable_reason() is None
    if with_mpi:
        argv.append("--mpi")
    assert report.main(argv) == 0
    out = capsys.readouterr().out
    assert "| 784-16-16-10 | 128 |" in out
    result = json.loads((tmp_path / "r.json").read_text())
    row = result["rows"][0]
    assert row["ratios"]["ours-numpy/gemm-floor-numpy"] > 0
    assert set(row["seconds_per_epoch"]) >= {"gemm-floor-numpy", "ours-numpy"}
    if has_plot:
        assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    if with_mpi:
        assert "2 MPI processes x 1 BLAS thread" in out
        assert result["mpi"]["allreduce_bytes"] > 0


def test_benchmark_suite_runs(tmp_path):
    pytest.importorskip("pytest_benchmark")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "bench/",
            "--bench-samples",
            "1000",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            "784-16-16-10 and 1024 and numpy",
            f"--benchmark-json={tmp_path / 'b.json'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    benchmarks = json.loads((tmp_path / "b.json").read_text())["benchmarks"]
    assert len(benchmarks) == 4  # epoch, step, predict, and the GEMM floor
    assert all(b["extra_info"]["device"].startswith("CPU") for b in benchmarks)


def test_gpu_table_pairs_the_gpu_methods():
    """The GPU table: per cell, ours captured and eager next to PyTorch eager and PyTorch with
    its step in a CUDA graph, as medians of ratios taken within each round."""
    from bench import report

    times = {
        "gemm-floor-numpy": [1.0, 1.0],
        "ours-numpy": [2.0, 2.0],
        "gemm-floor-cupy": [0.01, 0.02],
        "ours-cupy": [0.02, 0.03],
        "ours-cupy-eager": [0.4, 0.5],
        "torch-cuda": [0.5, 0.5],
        "torch-cuda-graph": [0.04, 0.06],
    }
    row = report.summarize("784-16-16-10", 128, 1000, {"times": times, "devices": {}})
    assert row["ratios"]["ours-cupy/torch-cuda-graph"] == pytest.approx(0.5)
    assert row["ratios"]["ours-cupy/ours-cupy-eager"] == pytest.approx((0.05 + 0.06) / 2)
    table = report.gpu_markdown([row])
    assert table is not None
    assert table.splitlines()[-1] == (
        "| 784-16-16-10 | 128 | 0.015 | 0.025 | 0.450 | 0.500 | 0.050 | 1.75x | 0.50x | 0.90x |"
    )
    cpu_only = {k: v for k, v in times.items() if "numpy" in k}
    row = report.summarize("784-16-16-10", 128, 1000, {"times": cpu_only, "devices": {}})
    assert report.gpu_markdown([row]) is None


def test_ours_captured_and_eager_methods():
    """The bench's captured and eager CuPy methods train, here on the emulated CuPy: the
    captured one replays its epoch (one graph launch instead of 16 kernels per step) with no
    fallback warning."""
    import warnings

    from bench import cupy_emulation, workloads

    x, labels, y = workloads.synthetic_mnist(128 * 6)
    be = cupy_emulation.emulated_cupy_backend()
    per_epoch = {}
    for capture in (True, False):
        method = workloads.Ours(
            workloads.NETWORKS["784-16-16-10"], 128, x, labels, y, backend=be, capture=capture
        )
        assert method.name == ("ours-cupy" if capture else "ours-cupy-eager")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(3):  # warm-up, record, replay
                method.epoch()
            before = cupy_emulation.launches()
            method.epoch()
        per_epoch[capture] = cupy_emulation.launches() - before
    # about the same per-epoch bookkeeping (some 25 launches) on both sides; the 6 steps'
    # 16 kernels each only when eager
    assert per_epoch[True] < 30
    assert per_epoch[False] - per_epoch[True] >= 6 * 16 - 5
