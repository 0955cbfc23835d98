"""Benchmark scripts run by `make bench` (python -m fgrft.bench.NAME)."""
