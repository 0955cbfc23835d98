"""Start and stop a ``vllm.LLM`` in this process's test suite or benchmark, with the project's
CPU settings (:func:`fgrft.models.vllm_settings.vllm_engine_kwargs`).
"""
from __future__ import annotations

import contextlib
import gc
import os
import random
from pathlib import Path
from typing import Any, Iterator

from fgrft.models.vllm_settings import cpu_engine_env, vllm_engine_kwargs


def start_vllm_engine(path: str | Path, *, in_process: bool = False, **kwargs: Any):
    """Start ``vllm.LLM`` on a checkpoint with ``vllm_engine_kwargs`` settings.

    ``in_process=True`` runs the engine core and worker inside this process
    (``VLLM_ENABLE_V1_MULTIPROCESSING=0``): no spawned processes, so it starts
    in seconds instead of ~30 s on 2 cores and needs no ``__main__`` guard. It
    is meant for test suites. The worker's process-wide side effects are
    contained: global RNG states and ``torch.set_num_threads`` (which it turns
    into a no-op) are restored; torch runs one thread while the engine lives;
    ``stop_vllm_engine`` restores the thread count and tears down the
    torch.distributed group the worker creates.
    """
    from vllm import LLM

    settings = vllm_engine_kwargs(path, **kwargs)
    if not in_process:
        with _env(**cpu_engine_env()):
            return LLM(**settings)
    import torch

    threads = torch.get_num_threads()
    with _env(VLLM_ENABLE_V1_MULTIPROCESSING="0"), _process_state_kept():
        llm = LLM(**settings)
    # The engine now runs on this process's torch threads. Like vLLM's own
    # worker, serve with one intra-op thread: on 2 busy cores, OMP spin-waits
    # made generation ~10x slower with two. stop_vllm_engine restores the count.
    torch.set_num_threads(1)
    llm._fgrft_restore_threads = threads
    return llm


def stop_vllm_engine(llm: Any) -> None:
    """Shut an engine down and release what it holds (processes, process group, memory)."""
    engine = getattr(llm, "llm_engine", None)
    core = getattr(engine, "engine_core", None)
    with contextlib.suppress(Exception):
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
    threads = getattr(llm, "_fgrft_restore_threads", None)
    del llm, engine, core
    with contextlib.suppress(Exception):
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    gc.collect()
    if threads is not None:  # an in-process engine: give the process its threads back
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """Restore RNG states and torch threading that an in-process vLLM worker changes."""
    import torch

    set_num_threads = torch.set_num_threads
    num_threads = torch.get_num_threads()
    py_state = random.getstate()
    try:
        import numpy as np

        np_state = np.random.get_state()
    except ImportError:  # pragma: no cover - numpy comes with torch/vLLM
        np = None
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(num_threads)
            random.setstate(py_state)
            if np is not None:
                np.random.set_state(np_state)
