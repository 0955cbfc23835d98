"""`inference=vllm`: vLLM's offline engine, run as `python -m fgrft.evaluation.backends.vllm SPEC`.

The parent job writes a spec (model, engine settings, sampling, requests with
their prompt token ids) and this worker generates in chunks, appending each
finished chunk to the job's completion sink, so a killed run loses at most one
chunk. Each request carries its own seed (run seed, item id, sample index).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from fgrft.evaluation.requests import Completion, CompletionSink, GenerationRequest, Sampling, token_ids_hash

log = logging.getLogger(__name__)


def engine_kwargs(model_path: str, inference: Any) -> dict[str, Any]:
    """`vllm.LLM` settings from the `inference` group (CPU-safe defaults from fgrft.models)."""
    from fgrft.models.vllm_settings import vllm_engine_kwargs

    overrides: dict[str, Any] = {}
    if inference.tensor_parallel_size > 1:
        overrides["tensor_parallel_size"] = inference.tensor_parallel_size
    # data_parallel_size is not an engine setting here: the offline engine of the pinned vLLM refuses
    # it, so fgrft.evaluation.backends starts one engine per data-parallel rank instead.
    if inference.enforce_eager is not None:
        overrides["enforce_eager"] = inference.enforce_eager
    if inference.dtype != "auto":
        overrides["dtype"] = inference.dtype
    return vllm_engine_kwargs(model_path, max_model_len=_fitting_max_model_len(model_path, inference.max_model_len),
                              gpu_memory_utilization=inference.gpu_memory_utilization, **overrides)


def _fitting_max_model_len(model_path: str, wanted: int) -> int:
    """`inference.max_model_len`, capped at what the model was built for (vLLM refuses more)."""
    config = Path(model_path) / "config.json"
    if not config.is_file():  # a hub id: vLLM checks it itself
        return wanted
    limit = json.loads(config.read_text()).get("max_position_embeddings")
    if limit and limit < wanted:
        log.warning("max_model_len %d exceeds the model's %d positions; using %d", wanted, limit, limit)
        return int(limit)
    return wanted


def generate_with_engine(llm: Any, requests: Sequence[GenerationRequest], sampling: Sampling,
                         sink: CompletionSink, chunk_size: int = 512) -> None:
    """Generate every request with an existing engine, appending finished chunks to `sink`."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    greedy = sampling.temperature <= 0
    for start in range(0, len(requests), chunk_size):
        chunk = requests[start:start + chunk_size]
        prompts = [TokensPrompt(prompt_token_ids=list(r.prompt_token_ids)) for r in chunk]
        params = [SamplingParams(temperature=0.0 if greedy else sampling.temperature,
                                 top_p=1.0 if greedy else sampling.top_p,
                                 max_tokens=sampling.max_tokens, seed=None if greedy else r.seed)
                  for r in chunk]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        sink.append(
            Completion(key=r.key, text=o.outputs[0].text, finish_reason=o.outputs[0].finish_reason,
                       output_tokens=len(o.outputs[0].token_ids),
                       prompt_token_ids_hash=token_ids_hash(o.prompt_token_ids))
            for r, o in zip(chunk, outputs)
        )
        log.info("vllm: %d/%d generated", min(start + chunk_size, len(requests)), len(requests))


def main(spec_path: str) -> None:
    from vllm import LLM

    spec = json.loads(open(spec_path, encoding="utf-8").read())
    requests = [GenerationRequest(**r) for r in spec["requests"]]
    llm = LLM(**spec["engine"])
    generate_with_engine(llm, requests, Sampling.from_mapping(spec["sampling"]), CompletionSink(spec["sink"]),
                         chunk_size=spec["chunk_size"])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] %(message)s")
    main(sys.argv[1])
