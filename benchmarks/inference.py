"""vLLM vs transformers generate on the same prompts, same run (`python -m benchmarks.inference`).

The first 200 items of the real MedMCQA file (`$FGRFT_BENCHMARK_DIR`), the embedded
smol model, temperature 0.5 / top_p 0.9, at most 256 new tokens. transformers runs at
its best batch size (picked on a probe of the first items), vLLM as the evaluation
backend runs it. Model loading is excluded from both timings. Prints items/s, output
tokens/s and the ratio (target: vLLM >= 5x).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from fgrft.data import load_benchmark
from fgrft.data.benchmarks import benchmark_items
from fgrft.prompts import load_template, render_all
from fgrft.evaluation.requests import CompletionSink, GenerationRequest, Sampling, encode_chat, request_seed


def _requests(tokenizer, texts, ids, seed=42):
    out = []
    for text, item_id in zip(texts, ids):
        messages = [{"role": "user", "content": text}]
        out.append(GenerationRequest(key=item_id, messages=messages, seed=request_seed(seed, item_id, 0),
                                     prompt_token_ids=encode_chat(tokenizer, messages)))
    return out


def _timed(fn, sink: CompletionSink) -> tuple[float, int]:
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    return wall, sum(c.output_tokens for c in sink.done().values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--hf-batch-sizes", default="8,16,32")
    parser.add_argument("--probe-items", type=int, default=32)
    args = parser.parse_args()
    bench_dir = os.environ.get("FGRFT_BENCHMARK_DIR")
    if not bench_dir:
        print("bench.inference: skipped (set FGRFT_BENCHMARK_DIR to the thesis benchmark files)")
        return 0
    from transformers import AutoTokenizer

    from fgrft.evaluation.backends.hf import generate_hf, load_hf
    from fgrft.evaluation.backends.vllm import generate_with_engine
    from fgrft.models import ensure_built
    from tests.support.vllm_engine import start_vllm_engine, stop_vllm_engine

    cache = Path(os.environ.get("FGRFT_BENCH_CACHE", Path.cwd() / ".cache" / "fgrft"))
    model = ensure_built("smol", cache)
    items = benchmark_items(load_benchmark({"name": "medmcqa", "dir": bench_dir, "limit": args.items}))
    texts = render_all(load_template("eval_thesis.txt"), items)
    tokenizer = AutoTokenizer.from_pretrained(model)
    requests = _requests(tokenizer, texts, [q.id for q in items])
    sampling = Sampling(temperature=0.5, top_p=0.9, max_tokens=args.max_new_tokens)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{len(requests)} MedMCQA items, smol, max_new_tokens {args.max_new_tokens}")

    with tempfile.TemporaryDirectory() as tmp:
        tok, hf_model = load_hf(str(model))
        probe = requests[: args.probe_items]
        rates = {}
        for bs in (int(b) for b in args.hf_batch_sizes.split(",")):
            sink = CompletionSink(Path(tmp) / f"probe-{bs}.jsonl")
            wall, tokens = _timed(lambda: generate_hf(tok, hf_model, probe, sampling, sink, batch_size=bs), sink)
            rates[bs] = tokens / wall
            print(f"hf probe: batch {bs}: {tokens / wall:.1f} output tokens/s")
        best = max(rates, key=rates.get)
        sink = CompletionSink(Path(tmp) / "hf.jsonl")
        hf_wall, hf_tokens = _timed(lambda: generate_hf(tok, hf_model, requests, sampling, sink, batch_size=best),
                                    sink)
        del hf_model

        llm = start_vllm_engine(model, max_model_len=2048)
        sink = CompletionSink(Path(tmp) / "vllm.jsonl")
        vllm_wall, vllm_tokens = _timed(lambda: generate_with_engine(llm, requests, sampling, sink), sink)
        stop_vllm_engine(llm)

    n = len(requests)
    print(f"hf   (batch {best}): {n / hf_wall:.2f} items/s, {hf_tokens / hf_wall:.1f} output tokens/s "
          f"({hf_wall:.1f} s)")
    print(f"vllm:            {n / vllm_wall:.2f} items/s, {vllm_tokens / vllm_wall:.1f} output tokens/s "
          f"({vllm_wall:.1f} s)")
    items_ratio = hf_wall / vllm_wall
    tokens_ratio = (vllm_tokens / vllm_wall) / (hf_tokens / hf_wall)
    print(f"ratio vllm/hf: items/s {items_ratio:.2f}x, output tokens/s {tokens_ratio:.2f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
