"""Benchmarks: a pytest-benchmark suite (bench/test_bench.py) and a comparison report
(`python -m bench`) of this library against the GEMM floor and its peers."""
