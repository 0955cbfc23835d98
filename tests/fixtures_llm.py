"""Fixtures for the OpenAI-compatible call engine: a live fault server and a test key."""
from __future__ import annotations

import pytest

from tests.support.fault_server import FaultServer

# Distinctive enough that finding it anywhere (a message, a log line) can only mean a leak.
TEST_KEY_ENV = "FGRFT_TEST_API_KEY"
TEST_KEY = "sk-test-SECRET-0123456789abcdefXYZ"


@pytest.fixture
def fault_server():
    """A fresh fault server on 127.0.0.1 (random port), stopped after the test."""
    with FaultServer() as server:
        yield server


@pytest.fixture
def api_key(monkeypatch):
    """Put the test key in the environment; returns the variable's name."""
    monkeypatch.setenv(TEST_KEY_ENV, TEST_KEY)
    return TEST_KEY_ENV
