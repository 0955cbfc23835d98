"""TRL's SFTTrainer set up with the configured optimisation and this project's accounting.

Optimisation settings come from ``conf/trainer/*.yaml`` (AdamW at 5e-6, weight decay 0.1,
cosine schedule with 5% warmup, 3 epochs, gradient clipping 1.0, seed 42), plus four fidelity
keys (:class:`Fidelity`) where the thesis's code did something unconventional; the thesis
presets (``+experiment=fgrft``, ``ablation_naive``) set its values, every trainer option the
conventional ones:

    trainer.decay_exclude        auto (biases and norm weights, transformers' grouping) | a list
                                 of name substrings. The thesis listed [bias, LayerNorm.weight],
                                 which matches no Llama parameter: it decayed every parameter.
    trainer.warmup_rounding      ceil (transformers) | floor (the thesis: int(0.05 x steps))
    trainer.loss_normalization   token_mean (each label token of the accumulated batch weighs
                                 the same) | micro_batch_mean (the thesis: the mean over each
                                 micro-batch's label tokens, averaged over accumulation steps)
    trainer.truncation_side      (formatting.py) right | left (the thesis)

Precision: bf16 mixed precision on a GPU; fp32 on CPU, where bf16 autocast
lets small early updates vanish below bf16's resolution (RUNTIME.md).

The dataset arrives tokenized with labels already masked (formatting.py), so
TRL neither re-tokenizes nor rebuilds labels; it collates, trains and saves
checkpoints (optimizer, scheduler, RNG, data position) that ``train`` resumes.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from fgrft.models.vllm_settings import cuda_available

from .batching import BatchStats, sft_batching_args

log = logging.getLogger(__name__)


DECAY_AUTO = "auto"
WARMUP_ROUNDINGS = ("ceil", "floor")
LOSS_NORMALIZATIONS = ("token_mean", "micro_batch_mean")


@dataclass(frozen=True)
class Fidelity:
    """The trainer keys that reproduce the thesis's code where it departs from convention."""

    decay_exclude: tuple[str, ...] | None   # None: "auto"
    warmup_rounding: str
    loss_normalization: str

    @classmethod
    def from_trainer(cls, trainer: Mapping[str, Any]) -> "Fidelity":
        exclude = trainer["decay_exclude"]
        if exclude != DECAY_AUTO and (isinstance(exclude, str) or not all(isinstance(x, str) for x in exclude)):
            raise ValueError(f"trainer.decay_exclude must be 'auto' or a list of parameter-name substrings, "
                             f"got {exclude!r}")
        for key, allowed in (("warmup_rounding", WARMUP_ROUNDINGS), ("loss_normalization", LOSS_NORMALIZATIONS)):
            if trainer[key] not in allowed:
                raise ValueError(f"trainer.{key} must be one of {allowed}, got {trainer[key]!r}")
        return cls(decay_exclude=None if exclude == DECAY_AUTO else tuple(exclude),
                   warmup_rounding=trainer["warmup_rounding"], loss_normalization=trainer["loss_normalization"])


CONVENTIONAL = Fidelity(decay_exclude=None, warmup_rounding="ceil", loss_normalization="token_mean")


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
    """SFTTrainer that counts the tokens and padding of what it trains on, and applies
    :class:`Fidelity` (weight-decay groups, warmup rounding, loss normalisation)."""

    def __init__(self, *args: Any, fidelity: Fidelity = CONVENTIONAL, **kwargs: Any):
        self.fidelity = fidelity
        super().__init__(*args, **kwargs)

    def get_decay_parameter_names(self, model) -> list[str]:
        if self.fidelity.decay_exclude is None:
            return super().get_decay_parameter_names(model)
        return [n for n, _ in model.named_parameters()
                if not any(part in n for part in self.fidelity.decay_exclude)]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        ratio = self.args.warmup_steps
        if self.lr_scheduler is None and self.fidelity.warmup_rounding == "floor" and 0 < ratio < 1:
            # transformers rounds a warmup ratio up; the thesis's int() rounded down
            self.args.warmup_steps = math.floor(num_training_steps * ratio)
        return super().create_scheduler(num_training_steps, optimizer)

    @property
    def batch_stats(self) -> BatchStats:
        # Resuming replaces the callback instance with one restored from the checkpoint.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, BatchStats))

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.batch_stats.count(inputs)
        if self.fidelity.loss_normalization == "micro_batch_mean":
            # Without the accumulated label count, each micro-batch's loss is its own token mean,
            # divided by the accumulation steps: the thesis's normalisation.
            num_items_in_batch = None
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # training steps, not the end-of-training summary
            logs.update(self.batch_stats.metrics())
        super().log(logs, start_time)


def build_trainer(model: Any, tokenizer: Any, dataset: Any, args: SFTConfig, *,
                  lora: Mapping[str, Any] | None = None, callbacks: list | None = None,
                  fidelity: Fidelity = CONVENTIONAL) -> FgrftSFTTrainer:
    """``model`` is a checkpoint directory or hub id (TRL loads it with ``model_init_kwargs``) or a model."""
    return FgrftSFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           peft_config=lora_config(lora), fidelity=fidelity,
                           callbacks=[BatchStats(), MlflowMetrics(), *(callbacks or [])])
