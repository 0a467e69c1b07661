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
    captured one replays its epoch (one graph launch instead of 15 kernels per step) with no
    fallback warning."""
    import warnings

    from backends import emulated_cupy
    from bench import workloads

    x, labels, y = workloads.synthetic_mnist(128 * 6)
    be = emulated_cupy.emulated_cupy_backend()
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
            before = emulated_cupy.launches()
            method.epoch()
        per_epoch[capture] = emulated_cupy.launches() - before
    # about the same per-epoch bookkeeping (some 30 launches, with the chunk's staging: x,
    # y and step values in, outputs out) on both sides; the 6 steps' 15 kernels each only
    # when eager
    assert per_epoch[True] < 35
    assert per_epoch[False] - per_epoch[True] >= 6 * 15 - 5


def test_gpu_check_without_a_gpu_exits_2_and_says_why(tmp_path):
    from backends import backend_unavailable_reason

    reason = backend_unavailable_reason("cupy")
    if reason is None:
        pytest.skip("this machine has a usable GPU")
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"gpu_check: no usable GPU on this machine: {reason}" in done.stderr
    assert not (tmp_path / "gpu-check.json").exists()


@pytest.mark.parametrize("tests_ok", [True, False])
def test_gpu_check_writes_json_and_summary(tmp_path, monkeypatch, capsys, tests_ok):
    """With the GPU work stubbed: one JSON and one markdown summary, exit 0 only when the
    tests and the main job passed."""
    from bench import gpu_check

    monkeypatch.setattr(gpu_check, "gpu_unavailable_reason", lambda: None)
    facts = dict(device="GPU 0: NVIDIA H200", gpus=1, cupy="14.2.0", cuda_runtime=13000)
    facts.update(cuda_driver=13000, python="3.12.3", platform="Linux", cpu_cores=16)
    monkeypatch.setattr(gpu_check, "machine", lambda: dict(facts, numpy="2.5.0"))
    monkeypatch.setattr(gpu_check, "missing_packages", lambda: {"hypothesis": "property tests"})
    tests = dict(ok=tests_ok, seconds=80.0, command="BACKPROP_REQUIRE_GPU=1 pytest -k cupy")
    tests.update(tests=400, failures=0 if tests_ok else 1, errors=0, skipped=2)
    tests.update(passed=398 if tests_ok else 397, failed=[] if tests_ok else ["t::x"])
    monkeypatch.setattr(gpu_check, "run_tests", lambda out, timeout_s: tests)
    job = dict(ok=True, command="python -m backprop train --backend cupy --quiet")
    job.update(seconds=2.5, test_accuracy=0.965)
    monkeypatch.setattr(gpu_check, "run_main_job", lambda timeout_s: job)
    bench = dict(samples=60000, rounds=3, rows=[], errors=[], table="| t |")
    bench["launches_784_500_500_10_batch_128"] = {
        "eager_kernels_per_step": 16,
        "captured_launches_per_step": 0.06,
    }
    monkeypatch.setattr(gpu_check, "run_bench", lambda cells, samples, rounds: bench)
    probes = {"captured_vs_eager": {"max_abs_difference": 3e-7}, "warnings": []}
    monkeypatch.setattr(gpu_check, "run_probes", lambda gpus, small: probes)
    code = gpu_check.main(["--out", str(tmp_path)])
    assert code == (0 if tests_ok else 1)
    result = json.loads((tmp_path / "gpu-check.json").read_text())
    assert result["ok"] is tests_ok and result["main_job"]["test_accuracy"] == 0.965
    summary = (tmp_path / "gpu-check.md").read_text()
    assert "device: GPU 0: NVIDIA H200 (1 GPU(s)); CuPy 14.2.0" in summary
    assert "missing optional packages (not installed by this check): hypothesis" in summary
    assert f"{tests['passed']} passed, {tests['failures']} failed" in summary
    assert "test accuracy 0.9650 in 2.5 s" in summary
    assert "eager 16 kernels per step, captured 0.060 host launches per step" in summary
    assert "- captured vs eager: 3e-07" in summary
    assert ("Result: PASS" in summary) is tests_ok
    assert ("failed: t::x" in summary) is not tests_ok


def test_gpu_probes_run_on_the_emulated_cupy():
    """The probes gpu_check runs on a GPU, at tiny sizes on the emulated CuPy: captured and
    eager weights equal there (one emulated cuBLAS), 3 refits stay finite, the bias-gradient
    job is timed at each shape, and device 1 is left out with one GPU."""
    from backends import emulated_cupy
    from bench import gpu_probes

    be = emulated_cupy.emulated_cupy_backend()
    probes = gpu_probes.run(be, lambda k: be, gpus=1, small=True)
    assert probes["captured_vs_eager"] == {
        "max_abs_difference": 0.0,
        "within_float32_tolerance": True,
    }
    assert [g["mode"] for g in probes["graphs"]["graphs"]] == ["graph"]  # 5 steps: one chunk
    assert [r["shape"] for r in probes["bias_grad"]["shapes"]] == ["600x10", "64x64"]
    assert probes["refits"]["fits"] == 3 and probes["refits"]["finite"] is True
    assert probes["device_1"] == {"skipped": "1 GPU: needs two"}
    lines = gpu_probes.markdown_lines(probes)
    assert "- device 1: 1 GPU: needs two" in lines


def test_cores_prints_the_step_table_and_compares_the_levers(capsys):
    from bench import cores

    tiny = ["--network", "784-16-16-10", "--batch-size", "64", "--samples", "512", "--rounds", "1"]
    assert cores.main(tiny) == 0
    out = capsys.readouterr().out
    assert "784-16-16-10, batch 64, 512 samples (8 steps)" in out
    for phase in ("GEMM floor", "forward + backward", "full step, eager", "full step, fit"):
        assert f"| {phase} | " in out
    assert "| update alone, looped (cache-hot) | " in out
    assert "| GEMM floor | " in out and "| 1.00 |" in out  # the floor against itself

    levers = ["recorded", "recorded, early update", "recorded, overlapped update"]
    argv = ["--network", "784-20-10", *tiny[2:], "--levers"]
    argv += [arg for name in levers for arg in ("--lever", name)]
    assert cores.main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if "ms |" in line}
    assert set(rows) == {"GEMM floor", "eager", *levers}
    assert rows["eager"].endswith("| 1.000 | eager |")
    for name in levers:  # every recorded lever's steps did replay their recording
        assert rows[name].endswith("| tape |"), rows[name]
    with pytest.raises(SystemExit, match="--network must look like 784-500-500-10"):
        cores.main(["--network", "10-784"])


def test_cores_takes_the_recorded_step_apart_call_by_call(capsys, monkeypatch):
    from bench import cores

    argv = ["--network", "784-16-16-10", "--batch-size", "64", "--samples", "512"]
    assert cores.main([*argv, "--rounds", "1", "--calls"]) == 0
    out = capsys.readouterr().out
    assert "784-16-16-10, batch 64: the recorded step's calls" in out
    cells = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith("| ") and not line.startswith("| call")
    ]
    rows = {row[0]: row for row in cells}
    # 784-16-16-10: three forward products, three dW, two deltas (none for the input)
    assert rows["matmul"][1] == "8"
    assert rows["gather (batch rows)"][1] == "1" and rows["momentum_update"][1] == "1"
    assert rows["sigmoid"][1] == "2" and rows["sigmoid_backward"][1] == "2"
    assert float(rows["matmul"][2]) > 0 and float(rows["gather (batch rows)"][2]) > 0
    assert float(rows["GEMM floor (the step's products alone)"][2]) > 0

    monkeypatch.setenv("BACKPROP_CPU_CAPTURE", "0")
    with pytest.raises(SystemExit, match=r"the step was not recorded \(eager\)"):
        cores.main([*argv, "--rounds", "1", "--calls"])


def test_cores_measures_the_thread_hand_off_beside_the_big_jobs():
    from bench import cores

    rows = cores.measure(rounds=1, repeats=1)
    handoff = [r for r in rows if r["job"] == "hand-off of an empty job"]
    assert len(handoff) == 1 and 0 < handoff[0]["ms"] < 1000
    table = cores.elementwise_markdown(rows)
    assert "| hand-off of an empty job (to a worker thread and back) | - | " in table
    assert table.count("| momentum update, 4M parameters |") == 2  # one thread, then all
