"""Benchmarks against PyTorch, measured in the same run; results go to bench/RESULTS.md."""
