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
