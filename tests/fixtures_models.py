"""Fixtures for the embedded models (built once) and shared vLLM engines.

* ``model_cache_dir``: where the embedded models are built. Persistent across
  runs in pytest's cache (``.pytest_cache/d/fgrft-models``), or the directory
  named by ``FGRFT_TEST_MODEL_CACHE``; a session temp dir when the cache plugin
  is off. Sharing it is safe: builds take a file lock and are reused only when
  their completion marker matches the current recipe.
* ``smol_path`` / ``tiny_path``: built checkpoint directories (session scope).
* ``vllm_smol`` / ``vllm_tiny``: session-scoped shared engines. At most one
  engine is alive at a time (2 cores, shared RAM): each fixture is a handle that
  activates its engine on first use and stops the other one. Tests that use
  them are moved to the end of the run, grouped per engine, so each engine
  starts once per session. Use the handle like ``vllm.LLM`` (``generate``,
  ``chat``, ``get_tokenizer``); ``handle.llm`` is the raw engine, valid until
  the other engine is activated.

Engines run in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): about 6 s to
start instead of about 30 s for the spawned engine core + worker on 2 cores.
Set ``FGRFT_TEST_VLLM_INPROCESS=0`` to use the spawned (production) mode.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fgrft.models import ensure_built
from tests.support.vllm_engine import start_vllm_engine, stop_vllm_engine

ENGINE_FIXTURES = ("vllm_tiny", "vllm_smol")  # also the order their tests run in
# Small explicit KV cache: test prompts are short, and RAM is shared.
TEST_ENGINE_SETTINGS: dict[str, Any] = {"max_model_len": 2048, "kv_cache_gib": 0.25, "seed": 0}


@pytest.fixture(scope="session")
def model_cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    explicit = os.environ.get("FGRFT_TEST_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("fgrft-models"))
    return tmp_path_factory.mktemp("fgrft-models")


@pytest.fixture(scope="session")
def smol_path(model_cache_dir: Path) -> Path:
    return ensure_built("smol", model_cache_dir)


@pytest.fixture(scope="session")
def tiny_path(model_cache_dir: Path) -> Path:
    return ensure_built("tiny", model_cache_dir)


class _EngineSlot:
    """Holds at most one live vLLM engine; activating another stops the current one."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.llm: Any = None
        self.starts: dict[str, int] = {}
        self.in_process = os.environ.get("FGRFT_TEST_VLLM_INPROCESS", "1") != "0"

    def activate(self, name: str, path: Path) -> Any:
        if self.name != name:
            self.close()
            self.llm = start_vllm_engine(path, in_process=self.in_process, **TEST_ENGINE_SETTINGS)
            self.name = name
            self.starts[name] = self.starts.get(name, 0) + 1
        return self.llm

    def close(self) -> None:
        if self.llm is not None:
            llm, self.llm, self.name = self.llm, None, None
            stop_vllm_engine(llm)


class SharedEngine:
    """A handle on one model's engine in the shared slot; forwards to ``vllm.LLM``."""

    def __init__(self, slot: _EngineSlot, name: str, path: Path) -> None:
        self._slot, self.name, self.path = slot, name, path

    @property
    def llm(self) -> Any:
        return self._slot.activate(self.name, self.path)

    @property
    def starts(self) -> int:
        return self._slot.starts.get(self.name, 0)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.llm, attr)


@pytest.fixture(scope="session")
def _vllm_slot():
    pytest.importorskip("vllm")
    slot = _EngineSlot()
    yield slot
    slot.close()


@pytest.fixture(scope="session")
def vllm_tiny(_vllm_slot: _EngineSlot, tiny_path: Path) -> SharedEngine:
    return SharedEngine(_vllm_slot, "tiny", tiny_path)


@pytest.fixture(scope="session")
def vllm_smol(_vllm_slot: _EngineSlot, smol_path: Path) -> SharedEngine:
    return SharedEngine(_vllm_slot, "smol", smol_path)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run engine tests last, grouped per engine, so each engine starts once.

    The sort is stable: every other test keeps its order.
    """
    def group(item: pytest.Item) -> int:
        names = getattr(item, "fixturenames", ())
        for rank, fixture in enumerate(ENGINE_FIXTURES, start=1):
            if fixture in names:
                return rank
        return 0

    items.sort(key=group)
