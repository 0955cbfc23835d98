"""Stage 2 trainer on the tiny model, in-process: thesis optimiser groups, packed = padded
losses (no cross-sample leakage), a loss that falls when overfitting, batch accounting."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from fgrft.config import CONF_DIR
from fgrft.data import load_training_records
from fgrft.prompts import load_template
from fgrft.models import training_chat_template
from fgrft.training.batching import BatchStats, effective_batching, sft_batching_args
from fgrft.training.formatting import tokenize_records

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
CPU_TRAINER = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "trainer" / "cpu.yaml"))


@pytest.fixture(scope="module")
def tokenizer(tiny_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_path)


def _tokenized(tokenizer, n: int, max_seq_len: int):
    records = load_training_records({"name": "sample"})[:n]
    tokenized, _ = tokenize_records(tokenizer, records, prompt_template=load_template("eval_thesis.txt"),
                                    target_format="thinking", training_template=training_chat_template(tokenizer),
                                    max_seq_len=max_seq_len, stock_template=tokenizer.chat_template)
    return tokenized


def _trainer(tiny_path, tokenizer, columns, tmp_path, *, batching="packed", fidelity=None, **overrides):
    from datasets import Dataset

    from fgrft.training.trainer import build_trainer, sft_config

    settings = dict(save_strategy="no", disable_tqdm=True, logging_steps=1)
    settings.update(overrides)
    args = sft_config(CPU_TRAINER, output_dir=tmp_path / batching, batching=batching, **settings)
    extra = {"fidelity": fidelity} if fidelity is not None else {}
    return build_trainer(str(tiny_path), tokenizer, Dataset.from_dict(columns), args, **extra)


def _losses(trainer) -> list[float]:
    return [e["loss"] for e in trainer.state.log_history if "loss" in e]


def test_weight_decay_spares_exactly_bias_and_norm_weights(tiny_path, tokenizer, tmp_path):
    trainer = _trainer(tiny_path, tokenizer, _tokenized(tokenizer, 2, 256).columns(), tmp_path, max_steps=1)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    by_decay = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    assert set(by_decay) == {0.1, 0.0}
    norm_modules = {n for n, m in trainer.model.named_modules() if type(m).__name__.endswith("RMSNorm")}
    expected_no_decay = {n for n in names.values()
                         if n.rsplit(".", 1)[0] in norm_modules or n.endswith(".bias")}
    assert expected_no_decay and by_decay[0.0] == expected_no_decay
    assert by_decay[0.1] == set(names.values()) - expected_no_decay
    assert {g["lr"] for g in optimizer.param_groups} == {5e-6}
    assert type(optimizer).__name__ in {"AdamW", "AcceleratedOptimizer"}


THESIS_FIDELITY = {"decay_exclude": ["bias", "LayerNorm.weight"], "warmup_rounding": "floor",
                   "loss_normalization": "micro_batch_mean"}


def test_the_thesis_exclusion_list_decays_every_parameter(tiny_path, tokenizer, tmp_path):
    from fgrft.training.trainer import Fidelity

    trainer = _trainer(tiny_path, tokenizer, _tokenized(tokenizer, 2, 256).columns(), tmp_path, max_steps=1,
                       fidelity=Fidelity.from_trainer({**CPU_TRAINER, **THESIS_FIDELITY}))
    optimizer = trainer.create_optimizer()
    decayed = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]}
    names = [n for n, p in trainer.model.named_parameters()]
    assert any("norm" in n for n in names)          # norms exist, and are decayed too
    assert decayed == {id(p) for p in trainer.model.parameters()}
    with pytest.raises(ValueError, match="decay_exclude"):
        Fidelity.from_trainer({**CPU_TRAINER, "decay_exclude": "bias"})


@pytest.mark.parametrize("rounding, first_step_factor", [("ceil", 0.5), ("floor", 1.0)])
def test_warmup_rounding(tiny_path, tokenizer, tmp_path, rounding, first_step_factor):
    from fgrft.training.trainer import Fidelity

    fidelity = Fidelity.from_trainer({**CPU_TRAINER, "warmup_rounding": rounding})
    trainer = _trainer(tiny_path, tokenizer, _tokenized(tokenizer, 2, 256).columns(), tmp_path, max_steps=30,
                       fidelity=fidelity)  # 5% of 30 steps = 1.5: ceil 2 warmup steps, floor 1
    trainer.create_optimizer()
    scheduler = trainer.create_scheduler(30)
    assert scheduler.lr_lambdas[0](1) == pytest.approx(first_step_factor)


@pytest.mark.parametrize("normalization", ["token_mean", "micro_batch_mean"])
def test_loss_normalization(tiny_path, tokenizer, tmp_path, normalization):
    import torch

    from fgrft.training.trainer import Fidelity

    fidelity = Fidelity.from_trainer({**CPU_TRAINER, "loss_normalization": normalization})
    trainer = _trainer(tiny_path, tokenizer, _tokenized(tokenizer, 2, 256).columns(), tmp_path, max_steps=1,
                       gradient_accumulation_steps=2, batching="padded", fidelity=fidelity)
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 2   # what the training loop sets per update
    batch = next(iter(trainer.get_train_dataloader()))
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    with torch.no_grad():
        mean = float(trainer.model(**batch).loss)            # this micro-batch's token mean
    # The accumulated batch holds 3x this micro-batch's label tokens: a token mean weighs
    # this micro-batch by its share (1/3), the thesis's micro-batch mean by 1/accumulation (1/2).
    loss = float(trainer.training_step(trainer.model, batch, num_items_in_batch=torch.tensor(3 * labelled)))
    expected = mean / 3 if normalization == "token_mean" else mean / 2
    assert loss == pytest.approx(expected, rel=1e-4)


def test_thesis_schedule_and_precision_settings(tmp_path):
    from fgrft.training.trainer import sft_config

    args = sft_config(CPU_TRAINER, output_dir=tmp_path, batching="padded")
    assert (args.lr_scheduler_type, args.warmup_steps, args.max_grad_norm, args.seed) == ("cosine", 0.05, 1.0, 42)
    assert not args.bf16 and not args.fp16  # fp32 on CPU
    assert args.save_total_limit == CPU_TRAINER["max_ckpts"] and args.report_to == []
    args = sft_config({**CPU_TRAINER, "precision": "bf16"}, output_dir=tmp_path, batching="padded")
    assert not args.bf16  # no GPU here: bf16 autocast on CPU would stall small updates


def _token_logprobs(model, batch):
    """Log-probability of every labelled token, in example order, as the trainer's forward computes it."""
    import torch

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits.float()  # the trainer's forward (no KV cache)
    logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    return logprobs[keep].gather(1, targets[keep][:, None]).squeeze(1)


def test_packed_and_padded_losses_agree(tiny_path, tokenizer, tmp_path):
    columns = _tokenized(tokenizer, 4, 450).columns()  # some cut to 450, others shorter: padding
    runs = {}
    for batching in ("packed", "padded"):
        trainer = _trainer(tiny_path, tokenizer, columns, tmp_path, batching=batching, max_steps=2,
                           learning_rate=1e-3, warmup_steps=0)
        trainer.train()
        runs[batching] = trainer
    packed, padded = _losses(runs["packed"]), _losses(runs["padded"])
    assert len(packed) == 2 and packed == pytest.approx(padded, rel=1e-4)
    # Same examples in the same order, with and without padding.
    assert runs["packed"].batch_stats.real_tokens == runs["padded"].batch_stats.real_tokens
    assert runs["packed"].batch_stats.padding_fraction == 0.0
    assert runs["padded"].batch_stats.padding_fraction > 0.0
    assert runs["packed"].batch_stats.samples == runs["padded"].batch_stats.samples == 4

    # A random model's mean loss barely depends on context, so compare every token: the
    # trained model, fed each mode's collated batch of the same examples.
    model = runs["packed"].model.eval()
    features = [{"input_ids": i, "labels": l} for i, l in zip(columns["input_ids"], columns["labels"])]
    packed_batch = runs["packed"].data_collator(features)
    padded_batch = runs["padded"].data_collator(features)
    assert "attention_mask" not in packed_batch and packed_batch["input_ids"].shape[0] == 1
    separate, padded_lp = _token_logprobs(model, packed_batch), _token_logprobs(model, padded_batch)
    assert separate.shape == padded_lp.shape and (separate - padded_lp).abs().max() < 1e-4
    # Control: positions that do not restart let examples attend to each other; the check sees it.
    import torch

    leaking = {**packed_batch, "position_ids": torch.arange(packed_batch["input_ids"].shape[1])[None]}
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        leaking.pop(key, None)
    assert (_token_logprobs(model, leaking) - padded_lp).abs().max() > 1e-2


def test_overfitting_a_small_repeated_set_drives_the_loss_down(tiny_path, tokenizer, tmp_path):
    tokenized = _tokenized(tokenizer, 2, 180)
    columns = {k: v * 8 for k, v in tokenized.columns().items()}
    trainer = _trainer(tiny_path, tokenizer, columns, tmp_path, max_steps=12, learning_rate=3e-3, warmup_steps=0,
                       lr_scheduler_type="constant", weight_decay=0.0)
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 12
    # Means of three steps: one noisy step must not decide the outcome either way.
    assert sum(losses[-3:]) < 0.65 * sum(losses[:3]), losses


def test_batching_modes_and_fallback():
    assert effective_batching("packed", "sdpa") == "packed"
    assert effective_batching("packed", "flash_attention_2") == "packed"
    assert effective_batching("packed", "some_kernel") == "grouped"  # samples might see each other
    assert effective_batching("padded", "some_kernel") == "padded"
    with pytest.raises(ValueError, match="trainer.batching"):
        effective_batching("bucketed", "sdpa")
    assert sft_batching_args("packed")["padding_free"] is True
    assert sft_batching_args("grouped")["train_sampling_strategy"] == "group_by_length"
    assert sft_batching_args("padded") == {"packing": False, "padding_free": False, "max_length": None,
                                           "train_sampling_strategy": "random"}


def test_batch_stats_survive_a_checkpoint_round_trip():
    import torch

    stats = BatchStats()
    stats.count({"input_ids": torch.ones(2, 5, dtype=torch.long),
                 "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]),
                 "labels": torch.tensor([[-100, 1, 1, 1, 1], [-100, 1, -100, -100, -100]])})
    stats.count({"input_ids": torch.ones(1, 6, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2]]),
                 "labels": torch.tensor([[-100, 1, 1, -100, 1, 1]])})
    assert (stats.real_tokens, stats.slot_tokens, stats.trained_tokens, stats.samples) == (13, 16, 9, 4)
    assert stats.padding_fraction == pytest.approx(3 / 16)
    restored = BatchStats(**stats.state()["args"])
    assert (restored.real_tokens, restored.slot_tokens, restored.samples) == (13, 16, 4)
