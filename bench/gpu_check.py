"""One check for any CUDA machine: `python -m bench.gpu_check [--out DIR] [--quick]`.

Runs, within about 8 minutes and without the network:
1. the CuPy half of the test matrix (`pytest -k cupy`) with BACKPROP_REQUIRE_GPU=1, so a
   CuPy case that cannot run fails instead of skipping;
2. the main job on the GPU (`python -m backprop train --backend cupy`), its test accuracy and
   seconds;
3. the GPU bench cells: seconds per 60,000-sample epoch of the CuPy GEMM floor, this library
   captured and eager, and PyTorch eager and in a CUDA graph where PyTorch sees the GPU, as
   paired ratios (bench/report.py), and the launch counts (bench/launches.py);
4. the probes of what only a GPU shows (bench/gpu_probes.py): memory nodes in the recorded
   graphs, captured against eager weights, the bias-gradient kernel against a column sum,
   12 refits that drop and record graphs, and a model on device 1 where there are two GPUs.

Writes gpu-check.json and gpu-check.md into --out (default: the current directory). Optional
test packages that are missing are reported, never installed. Exits 0 when the tests and the
main job pass, 1 when something failed, and 2 (saying why) where no usable GPU is present.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from . import gpu_probes

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {  # import name -> what it adds to the check
    "array_api_strict": "the strict backend's cases",
    "hypothesis": "the property-based tests",
    "pytest_benchmark": "the pytest-benchmark suite",
    "mpi4py": "the data-parallel tests",
    "nvmath": "captured CUDA graphs (fit falls back to eager without it)",
    "torch": "PyTorch's columns in the bench cells",
}
# (network, batch size): the cells of issue 10's table that fit the time budget
CELLS = (
    ("784-16-16-10", 32),
    ("784-16-16-10", 128),
    ("784-500-500-10", 128),
    ("784-500-500-10", 1024),
    ("784-1024-1024-10", 128),
    ("784-1024-1024-10", 1024),
)
QUICK_CELLS = (("784-500-500-10", 128),)


def gpu_unavailable_reason() -> str | None:
    from backends import backend_unavailable_reason

    return backend_unavailable_reason("cupy")


def machine() -> dict[str, Any]:
    from backends import get_backend

    be = get_backend("cupy")
    cupy = be.xp
    facts: dict[str, Any] = {
        "device": be.device_name,
        "gpus": int(cupy.cuda.runtime.getDeviceCount()),
        "cupy": cupy.__version__,
        "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
        "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_cores": os.cpu_count(),
    }
    import numpy

    facts["numpy"] = numpy.__version__
    return facts


def missing_packages() -> dict[str, str]:
    return {name: why for name, why in OPTIONAL.items() if importlib.util.find_spec(name) is None}


def run_tests(out: Path, timeout_s: int) -> dict[str, Any]:
    """The CuPy half of the test matrix, with BACKPROP_REQUIRE_GPU=1; counts from JUnit XML."""
    xml = out / "gpu-check-tests.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "tests",
        "-q",
        "-k",
        "cupy",
        "-p",
        "no:cacheprovider",
        f"--junitxml={xml}",
    ]
    env = dict(os.environ, BACKPROP_REQUIRE_GPU="1")
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the tests ran past {timeout_s} s"}
    result: dict[str, Any] = {
        "ok": done.returncode == 0,
        "seconds": round(time.perf_counter() - started, 1),
        "command": " ".join(["BACKPROP_REQUIRE_GPU=1", *command[2:]]),
    }
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"]
        counts["passed"] -= counts["skipped"]
        result.update(counts)
        result["failed"] = [
            f"{case.get('classname')}::{case.get('name')}"
            for case in suite.iter("testcase")
            if case.find("failure") is not None or case.find("error") is not None
        ][:50]
    if not result["ok"]:
        result["output_tail"] = (done.stdout + done.stderr)[-3000:]
    return result


def run_main_job(timeout_s: int) -> dict[str, Any]:
    """`python -m backprop train --backend cupy --quiet`: the main job on the GPU."""
    command = [sys.executable, "-m", "backprop", "train", "--backend", "cupy", "--quiet"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"the main job ran past {timeout_s} s"}
    seconds = time.perf_counter() - started
    found = re.search(r"test accuracy: ([0-9.]+)", done.stdout)
    result: dict[str, Any] = {
        "ok": done.returncode == 0 and found is not None,
        "command": "python -m backprop train --backend cupy --quiet",
        "seconds": round(seconds, 2),
        "test_accuracy": float(found.group(1)) if found else None,
    }
    if not result["ok"]:
        result["output_tail"] = (done.stdout + done.stderr)[-3000:]
    return result


def run_bench(cells: tuple[tuple[str, int], ...], samples: int, rounds: int) -> dict[str, Any]:
    """The GPU bench cells, timed round-robin in this process, and the launch counts."""
    from . import launches, report, workloads

    methods = [
        m
        for m in workloads.available_methods()
        if m[0] in report.GPU_METHODS  # the CPU methods have their own report
    ]
    data = workloads.synthetic_mnist(samples)
    rows, errors = [], []
    for network, batch_size in cells:
        try:
            cell = report.time_cell(
                workloads.NETWORKS[network], batch_size, data, methods, rounds, _log
            )
        except Exception as exc:  # one failing cell must not lose the others
            errors.append(f"{network} batch {batch_size}: {type(exc).__name__}: {exc}")
            continue
        rows.append(report.summarize(network, batch_size, samples, cell))
    counted = launches.count("784-500-500-10")
    return {
        "methods": [m[0] for m in methods],
        "samples": samples,
        "rounds": rounds,
        "rows": rows,
        "errors": errors,
        "table": report.gpu_markdown(rows),
        "launches_784_500_500_10_batch_128": counted,
    }


def run_probes(gpus: int, small: bool) -> dict[str, Any]:
    """bench/gpu_probes.py on the cupy backend (device 0; device 1 where there is one)."""
    from backends import get_backend

    from . import gpu_probes

    return gpu_probes.run(
        get_backend("cupy"), lambda k: get_backend("cupy", device=k), gpus, small=small
    )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def markdown(result: dict[str, Any]) -> str:
    m, tests, job, bench = result["machine"], result["tests"], result["main_job"], result["bench"]
    lines = [
        "# GPU check",
        "",
        f"- device: {m['device']} ({m['gpus']} GPU(s)); CuPy {m['cupy']}, CUDA runtime "
        f"{m['cuda_runtime']}, driver {m['cuda_driver']}; NumPy {m['numpy']}, Python "
        f"{m['python']}, {m['cpu_cores']} CPU cores",
    ]
    if result["missing"]:
        lines.append(
            "- missing optional packages (not installed by this check): "
            + "; ".join(f"{k} ({v})" for k, v in result["missing"].items())
        )
    if "tests" in tests:
        lines.append(
            f"- tests (`{tests['command']}`): {tests['passed']} passed, {tests['failures']} "
            f"failed, {tests['errors']} errors, {tests['skipped']} skipped in "
            f"{tests['seconds']} s"
        )
        lines += [f"  - failed: {name}" for name in tests.get("failed", [])]
    else:
        lines.append(f"- tests: {tests.get('error', 'no result')}")
    if job.get("test_accuracy") is not None:
        lines.append(
            f"- main job (`{job['command']}`): test accuracy {job['test_accuracy']:.4f} in "
            f"{job['seconds']} s"
        )
    else:
        lines.append(f"- main job: failed ({job.get('error', 'see output_tail in the JSON')})")
    counted = bench.get("launches_784_500_500_10_batch_128")
    if counted:
        lines.append(
            f"- launches, 784-500-500-10 batch 128: eager {counted['eager_kernels_per_step']:g} "
            f"kernels per step, captured {counted['captured_launches_per_step']:.3f} host "
            "launches per step"
        )
    lines += [f"- bench cell failed: {e}" for e in bench.get("errors", [])]
    lines += gpu_probes.markdown_lines(result.get("probes", {}))
    if bench.get("table"):
        lines += [
            "",
            f"Seconds per epoch ({bench['samples']:,} samples, median of {bench['rounds']} "
            "rounds; ratios paired within rounds):",
            "",
            bench["table"],
        ]
    lines.append("")
    lines.append(f"Result: {'PASS' if result['ok'] else 'FAIL'} ({result['seconds']} s)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__)
    parser.add_argument("--out", default=".", help="folder for gpu-check.json and .md")
    parser.add_argument(
        "--quick", action="store_true", help="one bench cell, 10,000 samples (about 3 minutes)"
    )
    parser.add_argument("--skip-tests", action="store_true", help="leave out the test matrix")
    args = parser.parse_args(argv)
    reason = gpu_unavailable_reason()
    if reason is not None:
        print(f"gpu_check: no usable GPU on this machine: {reason}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "missing": missing_packages()}
    for name, why in result["missing"].items():
        _log(f"left out: {name} is not installed ({why})")
    _log("tests (the CuPy half of the matrix)...")
    result["tests"] = (
        {"ok": True, "error": "left out (--skip-tests)"}
        if args.skip_tests
        else run_tests(out, timeout_s=300)
    )
    _log("main job on the GPU...")
    result["main_job"] = run_main_job(timeout_s=180)
    _log("bench cells...")
    result["bench"] = run_bench(
        QUICK_CELLS if args.quick else CELLS, 10_000 if args.quick else 60_000, 3
    )
    _log("probes...")
    result["probes"] = run_probes(result["machine"]["gpus"], small=False)
    result["ok"] = bool(result["tests"]["ok"] and result["main_job"]["ok"])
    result["seconds"] = round(time.perf_counter() - started, 1)
    (out / "gpu-check.json").write_text(json.dumps(result, indent=1))
    summary = markdown(result)
    (out / "gpu-check.md").write_text(summary)
    print(summary)
    _log(f"wrote {out / 'gpu-check.json'} and {out / 'gpu-check.md'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
