"""vLLM engine settings that work on this project's CPU profile.

Why each CPU setting (RUNTIME.md has the observations):

* ``dtype="bfloat16"``: the embedded checkpoints are bf16; no cast warnings.
* ``enforce_eager=True``: no torch.compile / graph capture on the CPU build.
* ``enable_chunked_prefill=False``: a seeded request whose prompt chunked
  prefill splits kills the CPU engine ("CPU Generator does not use offset").
* ``kv_cache_memory_bytes``: an explicit KV cache size. On CPU,
  ``gpu_memory_utilization`` is the share of *all* RAM reserved (0.2 of 24 GiB
  is ~5 GiB per engine, refused at start when that much is not free); an
  explicit size is smaller, only needs itself to fit, and skips the warm-up
  pass that measures memory (faster start). Default on CPU: 1 GiB.
* ``generation_config="vllm"``: sampling comes only from the request, not from
  defaults a checkpoint's generation_config.json may carry (Llama-3.1 ships
  temperature 0.6 / top_p 0.9), so runs of different models compare.

Code that starts an engine in the default (multiprocess) mode needs an
``if __name__ == "__main__":`` guard: the engine core is a spawned process. The
stages start engines in their own processes (``fgrft.evaluation.backends.vllm``, the
embedded server); tests and benchmarks use ``tests.support.vllm_engine``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

CPU_DEFAULT_KV_CACHE_GIB = 1.0
# Up to this many CPUs, the engine's worker computes on every core (see cpu_engine_env).
SMALL_HOST_CPUS = 4


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX); elsewhere it is emulated."""
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_engine_env(environ: Mapping[str, str] | None = None, cpu_count: int | None = None, *,
                   cpu: bool | None = None) -> dict[str, str]:
    """Environment variables to add for a vLLM engine process; none for a GPU engine.

    ``cpu`` defaults to "no CUDA device visible", as in :func:`vllm_engine_kwargs`.

    vLLM's CPU build keeps one core for its engine loop and binds the worker's
    compute threads to the others; on a 2-core host that leaves the model one
    core. Reserving none was faster there: the offline engine 1.6x (64 MedMCQA
    items, smol: 40 -> 65 output tokens/s), the embedded server 1.5x (generate on
    8 bundled questions: 413 -> 278 s). So on hosts with at most
    ``SMALL_HOST_CPUS`` CPUs nothing is reserved; a value the user set wins.
    """
    if cpu is None:
        cpu = not cuda_available()
    environ = os.environ if environ is None else environ
    cpu_count = (os.cpu_count() or 1) if cpu_count is None else cpu_count
    if not cpu or "VLLM_CPU_NUM_OF_RESERVED_CPU" in environ or cpu_count > SMALL_HOST_CPUS:
        return {}
    return {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def vllm_engine_kwargs(
    path: str | Path,
    *,
    max_model_len: int = 2048,
    seed: int = 0,
    cpu: bool | None = None,
    kv_cache_gib: float | None = None,
    gpu_memory_utilization: float | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (and, spelled as flags, the server).

    ``cpu`` defaults to "no CUDA device visible". KV cache size: ``kv_cache_gib``
    when given; else ``gpu_memory_utilization`` when given (on CPU a share of
    all RAM); else 1 GiB on CPU and 0.9 of GPU memory on GPU. ``overrides`` win
    over everything (e.g. ``tensor_parallel_size=8``, ``enforce_eager=False``).
    """
    if cpu is None:
        cpu = not cuda_available()
    kwargs: dict[str, Any] = {
        "model": str(path),
        "tokenizer": str(path),
        "dtype": "bfloat16",
        "max_model_len": max_model_len,
        "seed": seed,
        "generation_config": "vllm",
    }
    if cpu:
        kwargs.update(enforce_eager=True, enable_chunked_prefill=False)
        if not cpu_has_native_bf16():
            # Emulated bf16 generated about half as fast as float32 here (AVX2-only machine).
            kwargs["dtype"] = "float32"
        if kv_cache_gib is None and gpu_memory_utilization is None:
            kv_cache_gib = CPU_DEFAULT_KV_CACHE_GIB
    elif kv_cache_gib is None and gpu_memory_utilization is None:
        gpu_memory_utilization = 0.9
    if kv_cache_gib is not None:
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
    else:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    kwargs.update(overrides)
    return kwargs
