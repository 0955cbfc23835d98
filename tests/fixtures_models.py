"""Fixtures for the embedded models (built once per session) and shared vLLM engines."""
