"""`inference=hf`: transformers `generate`, batched with left padding.

For hosts without vLLM. Prompts arrive as token ids (the same ids vLLM gets);
batches are formed from similar lengths to keep padding low. Sampling in
transformers cannot be seeded per request, so each batch is seeded from its
first request's seed: reproducible for a fixed batch size, not across sizes.
"""
from __future__ import annotations

import logging
from typing import Sequence

from fgrft.evaluation.requests import Completion, CompletionSink, GenerationRequest, Sampling, token_ids_hash

log = logging.getLogger(__name__)


def load_hf(model_path: str, dtype: str = "auto"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    torch_dtype = {"auto": torch.float32 if not torch.cuda.is_available() else torch.bfloat16,
                   "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return tokenizer, model


def generate_hf(tokenizer, model, requests: Sequence[GenerationRequest], sampling: Sampling,
                sink: CompletionSink, batch_size: int = 16) -> None:
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = model.generation_config.eos_token_id
    eos_ids = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    ordered = sorted(requests, key=lambda r: len(r.prompt_token_ids))
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start:start + batch_size]
        width = max(len(r.prompt_token_ids) for r in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            n = len(r.prompt_token_ids)
            input_ids[i, width - n:] = torch.tensor(r.prompt_token_ids)
            attention[i, width - n:] = 1
        greedy = sampling.temperature <= 0
        torch.manual_seed(batch[0].seed)
        with torch.no_grad():
            out = model.generate(
                input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device),
                do_sample=not greedy, temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p, top_k=None,
                max_new_tokens=sampling.max_tokens, pad_token_id=pad_id,
                eos_token_id=sorted(eos_ids) or None,
            )
        completions = []
        for i, r in enumerate(batch):
            new = out[i, width:].tolist()
            stop_at = next((j for j, t in enumerate(new) if t in eos_ids), None)
            kept = new if stop_at is None else new[:stop_at]
            completions.append(Completion(
                key=r.key, text=tokenizer.decode(kept, skip_special_tokens=True),
                finish_reason="length" if stop_at is None else "stop", output_tokens=len(kept) + (stop_at is not None),
                prompt_token_ids_hash=token_ids_hash(r.prompt_token_ids)))
        sink.append(completions)
        log.info("hf: %d/%d generated", min(start + batch_size, len(ordered)), len(ordered))
