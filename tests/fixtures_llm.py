"""Fixtures for the OpenAI-compatible call engine (fault server)."""
