"""Stage 3's backends, one module each, and the dispatch of generation requests to them.

    vllm.py    vLLM's offline engine, in its own process per job
    hf.py      transformers generate
    openai.py  an OpenAI-compatible API through the call engine (cache, budget, batch mode)
    replay.py  stored outputs (this project's predictions or the thesis's files), no model

vllm, hf and openai generate completions for requests (:func:`run_backend`); replay reads the
completions a run already has (:func:`~fgrft.evaluation.backends.replay.load_replay`).

``inference=vllm`` with ``data_parallel_size`` N > 1 starts N engine processes at once, each on its own
``tensor_parallel_size`` GPUs (``CUDA_VISIBLE_DEVICES``) over every N-th request, each appending to its
own part of the completion sink; the parts are merged into the job's sink as they end (and, after a
crash, at the next start), so the job still writes one ``predictions.jsonl`` in item order.
Data parallelism is for a model that fits on ``tensor_parallel_size`` GPUs (an 8B model on one):
throughput grows with the engines; tensor parallelism is for a model that does not fit on one GPU.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from fgrft.evaluation.requests import CompletionSink, GenerationRequest, Sampling, encode_chat

log = logging.getLogger(__name__)

VLLM_REQUEST_FILE = "vllm_request.json"
ENGINE_MODULE = "fgrft.evaluation.backends.vllm"
# inference.backend -> the module that serves it; the first three generate, replay reads.
BACKENDS = {name: f"{__name__}.{name}" for name in ("vllm", "hf", "openai", "replay")}


def encode_requests(model_path: str, requests: Sequence[GenerationRequest]) -> None:
    """Fill each request's prompt token ids from the model's own chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    for r in requests:
        r.prompt_token_ids = encode_chat(tokenizer, r.messages)


def run_backend(inference: Any, model_path: str | None, requests: Sequence[GenerationRequest], sampling: Sampling,
                sink: CompletionSink, run_dir: Path, *, cache_dir: str | None = None, ledger: Any = None,
                cache_scope: str = "") -> None:
    backend = inference.backend
    if backend == "openai":
        from fgrft.evaluation.backends.openai import generate_openai

        generate_openai(inference, requests, sampling, sink, cache_dir, ledger=ledger, cache_scope=cache_scope)
    elif backend == "hf":
        if inference.data_parallel_size > 1:
            raise ValueError("inference.data_parallel_size > 1 needs inference=vllm (one engine per rank)")
        from fgrft.evaluation.backends.hf import generate_hf, load_hf

        tokenizer, model = load_hf(model_path, inference.dtype)
        generate_hf(tokenizer, model, requests, sampling, sink, batch_size=inference.batch_size or 16)
    elif backend == "vllm":
        _run_vllm_worker(inference, model_path, requests, sampling, sink, run_dir)
    elif backend in BACKENDS:
        raise ValueError(f"inference={backend} generates nothing: its completions come from {BACKENDS[backend]}")
    else:
        raise ValueError(f"unknown inference backend {backend!r} (have: {', '.join(BACKENDS)})")


def _run_vllm_worker(inference: Any, model_path: str, requests: Sequence[GenerationRequest], sampling: Sampling,
                     sink: CompletionSink, run_dir: Path) -> None:
    # The engine lives in its own process per job: vLLM engines leak memory between
    # multirun jobs in one process, and a crash there cannot take the sweep down.
    from fgrft.evaluation.backends.vllm import engine_kwargs
    from fgrft.models.vllm_settings import cpu_engine_env

    spec = {
        "model_path": model_path,
        "engine": engine_kwargs(model_path, inference),
        "sampling": asdict(sampling),
        "chunk_size": inference.batch_size or 512,
        "sink": str(sink.path),
        "requests": [asdict(r) for r in requests],
    }
    env = {**os.environ, **cpu_engine_env()}
    if inference.data_parallel_size > 1:
        groups = device_groups(inference.data_parallel_size, inference.tensor_parallel_size, env)
        run_data_parallel(spec, sink, run_dir, groups, env)
        return
    spec_path = run_dir / VLLM_REQUEST_FILE
    spec_path.write_text(json.dumps(spec))
    try:
        subprocess.run([sys.executable, "-m", ENGINE_MODULE, str(spec_path)], check=True, env=env)
    finally:
        spec_path.unlink(missing_ok=True)


def device_groups(data_parallel: int, tensor_parallel: int, environ: Mapping[str, str]) -> list[str | None]:
    """``CUDA_VISIBLE_DEVICES`` of each data-parallel engine; None for each on a host without CUDA."""
    from fgrft.models.vllm_settings import cuda_available

    if not cuda_available():
        return [None] * data_parallel
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        import torch

        devices = [str(i) for i in range(torch.cuda.device_count())]
    wanted = data_parallel * tensor_parallel
    if len(devices) < wanted:
        raise ValueError(f"inference.data_parallel_size={data_parallel} x inference.tensor_parallel_size="
                         f"{tensor_parallel} needs {wanted} GPUs; {len(devices)} visible ({','.join(devices)})")
    return [",".join(devices[r * tensor_parallel:(r + 1) * tensor_parallel]) for r in range(data_parallel)]


def part_path(sink: CompletionSink, rank: int) -> Path:
    return sink.path.with_name(f"{sink.path.stem}.dp{rank}{sink.path.suffix}")


def merge_parts(sink: CompletionSink) -> set[str]:
    """Move the completions of every data-parallel part into ``sink``; return the keys now in it."""
    done = sink.done()
    for part in sorted(sink.path.parent.glob(f"{sink.path.stem}.dp*{sink.path.suffix}")):
        fresh = [c for key, c in CompletionSink(part).done().items() if key not in done]
        sink.append(fresh)
        done.update((c.key, c) for c in fresh)
        part.unlink()
    return set(done)


def run_data_parallel(spec: dict[str, Any], sink: CompletionSink, run_dir: Path, groups: list[str | None],
                      env: Mapping[str, str], *, module: str | None = None) -> None:
    """One engine process per data-parallel rank over every N-th request; parts merged into ``sink``."""
    module = module or ENGINE_MODULE
    done = merge_parts(sink)  # a crashed run's parts count as done
    pending = [r for r in spec["requests"] if r["key"] not in done]
    n = len(groups)
    procs, specs = [], []
    try:
        for rank, devices in enumerate(groups):
            shard = pending[rank::n]
            if not shard:
                continue
            path = run_dir / f"{Path(VLLM_REQUEST_FILE).stem}.dp{rank}.json"
            path.write_text(json.dumps({**spec, "requests": shard, "sink": str(part_path(sink, rank))}))
            specs.append(path)
            rank_env = dict(env) if devices is None else {**env, "CUDA_VISIBLE_DEVICES": devices}
            log.info("data-parallel engine %d/%d: %d requests%s", rank + 1, n, len(shard),
                     f" on GPUs {devices}" if devices else "")
            procs.append((rank, subprocess.Popen([sys.executable, "-m", module, str(path)], env=rank_env)))
        failed = [rank for rank, p in procs if p.wait() != 0]
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        merge_parts(sink)
        for path in specs:
            path.unlink(missing_ok=True)
    if failed:
        raise RuntimeError(f"data-parallel engine(s) {failed} failed; their finished completions are kept: "
                           "re-run the same command to generate the rest")
