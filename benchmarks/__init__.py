"""Benchmarks: each `bench_*.py` times one part of the toolkit against a baseline measured in the
same run (a `measure` function and a thin command line); `python -m benchmarks.run_all` runs them
all and prints one table of ratios, targets and peak memory."""
