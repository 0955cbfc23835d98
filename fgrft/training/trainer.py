"""TRL's SFTTrainer set up with the thesis's optimisation and this project's accounting.

Thesis defaults come from ``conf/trainer/*.yaml``: AdamW at 5e-6, weight decay
0.1, cosine schedule with 5% warmup, 3 epochs, gradient clipping 1.0,
gradient checkpointing, seed 42. transformers' Trainer already exempts bias
and norm weights from weight decay (by parameter name: Llama's
``input_layernorm``, ``post_attention_layernorm`` and final ``norm``), which is
exactly the thesis's grouping; the tests pin that down.

Precision: bf16 mixed precision on a GPU; fp32 on CPU, where bf16 autocast
lets small early updates vanish below bf16's resolution (RUNTIME.md).

The dataset arrives tokenized with labels already masked (formatting.py), so
TRL neither re-tokenizes nor rebuilds labels; it collates, trains and saves
checkpoints (optimizer, scheduler, RNG, data position) that ``train`` resumes.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from .batching import BatchStats, sft_batching_args

log = logging.getLogger(__name__)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def use_bf16(precision: str) -> bool:
    if precision != "bf16":
        return False
    if cuda_available():
        return True
    log.warning("trainer.precision=bf16 without a GPU: training in fp32 (bf16 autocast on CPU stalls small updates)")
    return False


def sft_config(trainer: Mapping[str, Any], *, output_dir: str | Path, batching: str,
               **overrides: Any) -> SFTConfig:
    """The SFTConfig of a ``trainer`` config group entry."""
    bf16 = use_bf16(trainer["precision"])
    settings: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=trainer["seed"],
        data_seed=trainer["seed"],
        per_device_train_batch_size=trainer["micro_batch_size"],
        gradient_accumulation_steps=trainer["grad_accum"],
        num_train_epochs=trainer["epochs"],
        max_steps=trainer["max_steps"],
        learning_rate=trainer["learning_rate"],
        weight_decay=trainer["weight_decay"],
        lr_scheduler_type=trainer["lr_scheduler"],
        warmup_steps=trainer["warmup_ratio"],  # a float below 1 is a ratio of the total steps
        max_grad_norm=trainer["max_grad_norm"],
        gradient_checkpointing=trainer["gradient_checkpointing"],
        bf16=bf16,
        fp16=False,
        use_cpu=not cuda_available(),
        logging_steps=trainer["logging_steps"],
        save_strategy="steps",
        save_steps=trainer["save_steps"],
        save_total_limit=trainer["max_ckpts"],
        restore_callback_states_from_checkpoint=True,  # BatchStats: token counts across a resume
        report_to="none",  # metrics go to the job's MLflow run through MlflowMetrics
        dataloader_num_workers=0,
        model_init_kwargs={"dtype": "bfloat16" if bf16 and trainer.get("lora") else "float32",
                           "attn_implementation": trainer["attn_implementation"]},
        **sft_batching_args(batching),
    )
    settings.update(overrides)
    return SFTConfig(**settings)


def lora_config(lora: Mapping[str, Any] | None):
    """PEFT LoRA settings from ``trainer.lora`` (None: full-parameter training)."""
    if not lora:
        return None
    from peft import LoraConfig

    target = lora["target_modules"]
    target = target if isinstance(target, str) else list(target)
    return LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=target, task_type="CAUSAL_LM")


class MlflowMetrics(TrainerCallback):
    """Per-step trainer metrics into the job's active MLflow run, from rank 0 only.

    transformers' MLflowCallback would log ~170 params and may open its own
    run; the job already has a run (the tracking layer opened or reattached
    it), so this only logs metrics into that one.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        import mlflow

        if not state.is_world_process_zero or mlflow.active_run() is None or not logs:
            return
        metrics = {k: float(v) for k, v in logs.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if metrics:
            mlflow.log_metrics(metrics, step=state.global_step)


class FgrftSFTTrainer(SFTTrainer):
    """SFTTrainer that counts the tokens and padding of what it trains on."""

    @property
    def batch_stats(self) -> BatchStats:
        # Resuming replaces the callback instance with one restored from the checkpoint.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, BatchStats))

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.batch_stats.count(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training steps, not the end-of-training summary
            logs.update(self.batch_stats.metrics())
        super().log(logs, start_time)


def build_trainer(model: Any, tokenizer: Any, dataset: Any, args: SFTConfig, *,
                  lora: Mapping[str, Any] | None = None, callbacks: list | None = None) -> FgrftSFTTrainer:
    """``model`` is a checkpoint directory or hub id (TRL loads it with ``model_init_kwargs``) or a model."""
    return FgrftSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           peft_config=lora_config(lora),
                           callbacks=[BatchStats(), MlflowMetrics(), *(callbacks or [])])
