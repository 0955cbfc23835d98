"""Benchmark scripts run by `make bench`, outside the shipped package.

From the repository root: ``python -m benchmarks.NAME``. They may import :mod:`tests.support`
(the fault and batch servers, the step responder); nothing in fgrft or tests imports them,
except the scoring benchmark's own test (tests/test_bench_scoring_labels.py).
"""
