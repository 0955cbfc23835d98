"""Suite-wide fixtures. Tests use only the fixtures the project ships and never reach the network."""
import os

import pytest

pytest_plugins = ["tests.fixtures_llm", "tests.fixtures_models"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def benchmark_dir():
    """The real thesis benchmark files, when FGRFT_BENCHMARK_DIR names them."""
    d = os.environ.get("FGRFT_BENCHMARK_DIR")
    if not d:
        pytest.skip("FGRFT_BENCHMARK_DIR is not set")
    return d
