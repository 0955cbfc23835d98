"""Dispatch a batch of generation requests to the configured local backend."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from fgrft.inference.requests import CompletionSink, GenerationRequest, Sampling, encode_chat

log = logging.getLogger(__name__)

VLLM_REQUEST_FILE = "vllm_request.json"


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
        from fgrft.inference.openai import generate_openai

        generate_openai(inference, requests, sampling, sink, cache_dir, ledger=ledger, cache_scope=cache_scope)
    elif backend == "hf":
        from fgrft.inference.hf import generate_hf, load_hf

        tokenizer, model = load_hf(model_path, inference.dtype)
        generate_hf(tokenizer, model, requests, sampling, sink, batch_size=inference.batch_size or 16)
    elif backend == "vllm":
        _run_vllm_worker(inference, model_path, requests, sampling, sink, run_dir)
    else:
        raise ValueError(f"inference backend {backend!r} does not generate")


def _run_vllm_worker(inference: Any, model_path: str, requests: Sequence[GenerationRequest], sampling: Sampling,
                     sink: CompletionSink, run_dir: Path) -> None:
    # The engine lives in its own process per job: vLLM engines leak memory between
    # multirun jobs in one process, and a crash there cannot take the sweep down.
    from fgrft.inference.vllm import engine_kwargs
    from fgrft.models.engine import cpu_engine_env

    spec = {
        "model_path": model_path,
        "engine": engine_kwargs(model_path, inference),
        "sampling": asdict(sampling),
        "chunk_size": inference.batch_size or 512,
        "sink": str(sink.path),
        "requests": [asdict(r) for r in requests],
    }
    spec_path = run_dir / VLLM_REQUEST_FILE
    spec_path.write_text(json.dumps(spec))
    try:
        subprocess.run([sys.executable, "-m", "fgrft.inference.vllm", str(spec_path)], check=True,
                       env={**os.environ, **cpu_engine_env()})
    finally:
        spec_path.unlink(missing_ok=True)
