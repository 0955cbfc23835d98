"""How examples become micro-batches, and what that costs in padding.

``trainer.batching``:

* ``packed``: each micro-batch is concatenated into one padding-free row with
  position ids restarting at 0 per example (TRL's ``padding_free``). Examples
  are drawn in random order, as in the thesis, and a micro-batch still holds
  ``micro_batch_size`` examples: unlike bin-packing to ``max_seq_len``, this
  keeps examples per optimizer step (the thesis's effective batch of 128) and
  the number of steps unchanged, so only the wasted compute goes away.
  Samples stay separate only where the attention implementation honours the
  restarts: transformers 5 builds a block-diagonal mask from them for the
  mask-based kernels (sdpa, eager, flex) when the forward runs without a KV
  cache (TRL's training forward passes ``use_cache=False``), and
  flash-attention uses the sequence boundaries. Any other implementation
  falls back to ``grouped``. Cost: a mask-based kernel still computes
  attention over the whole row, (sum of lengths)^2 instead of the padded
  micro-batch's size x longest^2, so on CPU packing pays off only while the
  saved padding outweighs that (see ``python -m benchmarks.batching``);
  flash-attention's cost is the sum of the squares.
* ``grouped``: padded to the longest in the micro-batch, with examples of
  similar length drawn together (transformers' length-grouped sampler).
* ``padded``: the thesis's scheme: random order, padded to the longest.

:class:`BatchStats` counts real and padded token slots of every micro-batch
the model trains on, and the training time; it is saved in each checkpoint's
trainer state, so a resumed run reports the whole run.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

log = logging.getLogger(__name__)

BATCHING_MODES = ("packed", "grouped", "padded")
# Attention implementations that keep padding-free samples apart (see above).
SEPARATING_ATTENTION = frozenset({"sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"})


def effective_batching(requested: str, attn_implementation: str) -> str:
    """The batching mode to use: ``packed`` only where the attention keeps samples separate."""
    if requested not in BATCHING_MODES:
        raise ValueError(f"trainer.batching must be one of {BATCHING_MODES}, got {requested!r}")
    if requested == "packed" and attn_implementation not in SEPARATING_ATTENTION:
        log.warning("attention %r may let packed samples attend to each other; using length-grouped "
                    "batches instead of packing", attn_implementation)
        return "grouped"
    return requested


def sft_batching_args(mode: str) -> dict[str, Any]:
    """SFTConfig settings of a batching mode.

    ``max_length`` is None in every mode: examples arrive already truncated
    (formatting.py cuts responses, never prompts), and TRL's padding-free path
    refuses a max_length without bin-packing.
    """
    return {
        "packing": False,
        "padding_free": mode == "packed",
        "max_length": None,
        "train_sampling_strategy": "group_by_length" if mode == "grouped" else "random",
    }


class BatchStats(TrainerCallback, ExportableState):
    """Token and time accounting of a training run; restored from checkpoints on resume."""

    def __init__(self, real_tokens: int = 0, slot_tokens: int = 0, trained_tokens: int = 0,
                 samples: int = 0, train_s: float = 0.0):
        self.real_tokens = real_tokens      # tokens of examples
        self.slot_tokens = slot_tokens      # tokens the model processed, padding included
        self.trained_tokens = trained_tokens  # tokens with a label (assistant tokens)
        self.samples = samples
        self.train_s = train_s
        self._since: float | None = None

    # --- counting (called by the trainer with each micro-batch it trains on) ---
    def count(self, inputs: Mapping[str, Any]) -> None:
        input_ids = inputs["input_ids"]
        if "attention_mask" in inputs:
            mask = inputs["attention_mask"]
            self.real_tokens += int(mask.sum())
            self.samples += int(input_ids.shape[0])
        else:  # padding-free: one row, each example restarts its position ids at 0
            self.real_tokens += int(input_ids.numel())
            self.samples += int((inputs["position_ids"] == 0).sum())
        self.slot_tokens += int(input_ids.numel())
        self.trained_tokens += int((inputs["labels"] != -100).sum())

    # --- time: only while training runs ---
    def on_train_begin(self, args, state, control, **kwargs):
        self._since = time.perf_counter()

    def on_train_end(self, args, state, control, **kwargs):
        self._bank_time()

    def _bank_time(self) -> None:
        if self._since is not None:
            now = time.perf_counter()
            self.train_s += now - self._since
            self._since = now

    # --- figures ---
    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.slot_tokens if self.slot_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        self._bank_time()
        return self.real_tokens / self.train_s if self.train_s > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        return {"padding_fraction": round(self.padding_fraction, 6), "tokens_per_s": round(self.tokens_per_s, 2)}

    def state(self) -> dict:
        self._bank_time()
        return {"args": {"real_tokens": self.real_tokens, "slot_tokens": self.slot_tokens,
                         "trained_tokens": self.trained_tokens, "samples": self.samples,
                         "train_s": self.train_s},
                "attributes": {}}
