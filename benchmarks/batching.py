"""Benchmark: padding and training throughput of the thesis's batching vs this project's.

    python -m benchmarks.batching [--records 32] [--micro-batch 8] [--min-tokens 300] [--max-tokens 1500]

The thesis shuffled its examples and padded each micro-batch to its longest
member (``padded``). The project packs each micro-batch into one padding-free
row (``packed``) or draws examples of similar length together (``grouped``).
All three go through the project's own trainer (tiny embedded model, fp32,
sdpa, micro-batch 8) on the same synthetic records: bundled questions with
responses cut so that examples spread uniformly over 300-1,500 tokens (the
bundled records are all about 450). Each mode trains one epoch of
``--records`` examples, so every mode sees exactly the same examples once;
padding and tokens/s (example tokens per second, padding excluded) are
measured over that epoch, in one process. Length grouping needs a data set
several effective batches long to have anything to group, so the padding an
epoch of ``--padding-records`` examples would have is also measured, from the
trainer's data loader alone (no training). Prints the machine, the length
spread, each mode's figures and their ratios to the thesis's scheme. Writes
nothing outside a temporary directory.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from fgrft.config import CONF_DIR
from fgrft.data import load_training_records
from fgrft.prompts import load_template
from fgrft.models import ensure_built, training_chat_template
from fgrft.records import TrainingRecord
from fgrft.training.formatting import TokenizedSet, tokenize_records

MODES = ("padded", "grouped", "packed")  # the thesis's scheme first
PROMPT = "eval_thesis.txt"


def synthetic_records(tokenizer, n: int, lo: int, hi: int, seed: int) -> list[TrainingRecord]:
    """``n`` records whose full examples are about ``lo``..``hi`` tokens, spread uniformly."""
    rng = random.Random(seed)
    base = load_training_records({"name": "sample"})
    pool_text = " ".join(f"{r.Complex_CoT} {r.Response}" for r in base)
    pool = tokenizer(pool_text, add_special_tokens=False)["input_ids"]
    records = []
    for i in range(n):
        source = base[i % len(base)]
        # The prompt takes ~150 tokens and the Thinking/Final Response frame ~15.
        body = max(8, rng.randint(lo, hi) - 170)
        start = rng.randrange(len(pool))
        ids = (pool * (body // len(pool) + 2))[start:start + body]
        cot = tokenizer.decode(ids[: body * 3 // 4]).strip()
        response = tokenizer.decode(ids[body * 3 // 4:]).strip()
        records.append(TrainingRecord(id=f"synthetic-{i}", source="synthetic", Question=source.Question,
                                      Complex_CoT=cot, Response=response))
    return records


def build(model_dir: Path, tokenizer, tokenized: TokenizedSet, mode: str, micro_batch: int, workdir: Path,
          seed: int):
    """The project's trainer for one epoch of ``tokenized`` in batching ``mode``."""
    from datasets import Dataset

    from fgrft.training.trainer import build_trainer, sft_config

    trainer_cfg = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "trainer" / "cpu.yaml"))
    steps = len(tokenized.examples) // micro_batch
    args = sft_config({**trainer_cfg, "seed": seed}, output_dir=workdir / mode, batching=mode,
                      per_device_train_batch_size=micro_batch, gradient_accumulation_steps=1, max_steps=steps,
                      save_strategy="no", logging_steps=steps, disable_tqdm=True)
    return build_trainer(str(model_dir), tokenizer, Dataset.from_dict(tokenized.columns()), args)


def epoch_padding(trainer) -> float:
    """Padding fraction of the batches one epoch of training would see (nothing is trained)."""
    from fgrft.training.batching import BatchStats

    stats = BatchStats()
    for batch in trainer.get_train_dataloader():
        stats.count(batch)
    return stats.padding_fraction


def train_epoch(trainer) -> dict[str, float]:
    trainer.train()
    s = trainer.batch_stats
    return {"padding_fraction": s.padding_fraction, "slots": s.slot_tokens, "tokens": s.real_tokens,
            "samples": s.samples, "tokens_per_s": s.tokens_per_s, "train_s": s.train_s}


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"({torch.get_num_threads()} torch threads{load}), {gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=64, help="synthetic records trained (one epoch per mode)")
    parser.add_argument("--padding-records", type=int, default=2048,
                        help="synthetic records batched (not trained) for the epoch padding at data-set scale")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--min-tokens", type=int, default=300)
    parser.add_argument("--max-tokens", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated; padded is the reference")
    parser.add_argument("--cache", default=os.path.join(os.getcwd(), ".cache", "fgrft"),
                        help="where the embedded tiny model is built (paths.cache)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model_dir = ensure_built("tiny", args.cache)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = training_chat_template(tokenizer)

    def tokenized_set(n: int, seed: int) -> TokenizedSet:
        records = synthetic_records(tokenizer, n, args.min_tokens, args.max_tokens, seed)
        return tokenize_records(tokenizer, records, prompt_template=load_template(PROMPT), target_format="thinking",
                                training_template=template, max_seq_len=2 * args.max_tokens,
                                stock_template=tokenizer.chat_template)[0]

    trained_set = tokenized_set(args.records, args.seed)
    large_set = tokenized_set(args.padding_records, args.seed + 1)
    lengths = sorted(len(e.input_ids) for e in trained_set.examples)
    print(f"machine: {machine()}")
    print(f"model: tiny (embedded, {model_dir}); micro-batch {args.micro_batch}, fp32, sdpa, one epoch per mode")
    print(f"records: {len(lengths)} synthetic, {lengths[0]}-{lengths[-1]} tokens (median "
          f"{lengths[len(lengths) // 2]}, {sum(lengths)} in all); padding at scale over {args.padding_records}")

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results = {}
    with tempfile.TemporaryDirectory(prefix="fgrft-bench-batching-") as tmp:
        # Warm-up (kernel selection, allocator) so that the first measured mode is not penalised.
        train_epoch(build(model_dir, tokenizer, TokenizedSet(trained_set.examples[: args.micro_batch]), "padded",
                          args.micro_batch, Path(tmp) / "warmup", args.seed))
        for mode in modes:
            at_scale = epoch_padding(build(model_dir, tokenizer, large_set, mode, args.micro_batch, Path(tmp),
                                           args.seed))
            results[mode] = {**train_epoch(build(model_dir, tokenizer, trained_set, mode, args.micro_batch,
                                                 Path(tmp), args.seed)), "padding_at_scale": at_scale}
    ref = results.get("padded")
    print(f"{'mode':<8} {'padding':>8} {'at scale':>9} {'tokens/s':>9} {'train s':>8}  vs thesis (padded)")
    for mode, r in results.items():
        ratio = (f"tokens/s x{r['tokens_per_s'] / ref['tokens_per_s']:.2f}, token slots computed "
                 f"x{r['slots'] / ref['slots']:.2f}") if ref and mode != "padded" else "(reference)"
        print(f"{mode:<8} {r['padding_fraction']:>8.1%} {r['padding_at_scale']:>9.1%} {r['tokens_per_s']:>9.0f} "
              f"{r['train_s']:>8.1f}  {ratio}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
