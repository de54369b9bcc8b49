"""Benchmark suite: load generation, metrics and reports for `nim-async bench`."""
