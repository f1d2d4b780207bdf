"""Benchmarks and soaks: run them with `python -m bench.NAME` from a checkout."""
