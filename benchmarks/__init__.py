"""Benchmark suite of the package: run ``python -m benchmarks.run`` (see benchmarks/README.md).

These are measurements, not tests: every ratio in the table is measured side by side in one
process, so it stays meaningful on a shared or throttled machine where absolute seconds do not.
"""
