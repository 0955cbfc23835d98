"""Test and benchmark helpers that ship with the package (importable outside the test suite)."""
