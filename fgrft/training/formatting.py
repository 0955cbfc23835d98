"""Training records -> chat messages -> token ids with assistant-only labels.

The user turn is what evaluation sends for the same question: the configured
prompt template (``prompts/eval_thesis.txt`` by default: "Please answer the
following multiple-choice question:", the question, its option lines) filled
with the record's question and options. The thesis trained on the bare
``Question`` field but evaluated with that preamble; training on exactly the
evaluation prompt removes a train/test mismatch the thesis did not intend to
study, so this project does that. ``prompt=strict`` at training time makes the
strict evaluation prompt the user turn instead.

Labels come from the training chat template's ``{% generation %}`` markers
(transformers' ``return_assistant_tokens_mask``): every token is -100 except
the assistant content and its end-of-turn token. Each example is also checked
against the stock template: the stock rendering of the prompt with
``add_generation_prompt`` must be a token prefix of the training rendering, so
the model is trained on exactly the context it will see at inference.

Over-long examples are cut at the end of the response (the prompt is never
cut); an example whose prompt alone does not fit ``max_seq_len`` is an error.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from fgrft.data import assistant_target
from fgrft.prompts import render
from fgrft.records import Question, RecordError, TrainingRecord, split_option_lines

IGNORE_INDEX = -100


class FormattingError(RecordError):
    """A record that cannot become a training example; names the data origin, record id and field."""

    def __init__(self, message: str, *, record_id: str, field: str | None = None, origin: str | None = None):
        where = f"{origin}: record {record_id}" if origin else f"record {record_id}"
        super().__init__(message, file=where, field=field)
        self.record_id = record_id


@dataclass
class Example:
    """One tokenized training example."""

    record_id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def prompt_len(self) -> int:
        return next(i for i, label in enumerate(self.labels) if label != IGNORE_INDEX)


@dataclass
class TokenizedSet:
    examples: list[Example]
    truncated_ids: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(len(e.input_ids) for e in self.examples)

    def columns(self) -> dict[str, list[list[int]]]:
        """What TRL takes as a pre-tokenized dataset (labels already masked)."""
        return {"input_ids": [e.input_ids for e in self.examples],
                "labels": [e.labels for e in self.examples]}


def user_turn(record: TrainingRecord, prompt_template: str) -> str:
    """The evaluation prompt for this record's question (same template, same option lines)."""
    stem, options = split_option_lines(record.Question)
    # The template needs a Question; answer fields do not reach the prompt.
    question = Question(source=record.source, question=stem, options=options,
                        answer_idx=next(iter(options), ""), answer="", id=record.id)
    text = render(prompt_template, question)
    # A record without parsed options (some naive-CoT rows) would leave the
    # template's option line empty; evaluation never sends such an item.
    return text if options else text.rstrip()


def to_messages(record: TrainingRecord, prompt_template: str, target_format: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user_turn(record, prompt_template)},
            {"role": "assistant", "content": assistant_target(record, target_format)}]


def data_hash(conversations: Sequence[list[dict[str, str]]]) -> str:
    """Hash of exactly what is trained on (prompts and targets, in order)."""
    h = hashlib.sha256()
    for messages in conversations:
        h.update(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _ids(out: Any) -> list[int]:
    ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)


TRUNCATION_SIDES = ("right", "left")


def tokenize_example(tokenizer: Any, record_id: str, messages: list[dict[str, str]], *,
                     training_template: str, max_seq_len: int, stock_template: str | None = None,
                     origin: str | None = None, truncation_side: str = "right") -> Example:
    """Token ids and labels of one conversation cut to ``max_seq_len`` if longer: ``right`` keeps
    the first tokens (the prompt and the start of the response), ``left`` the last ones (the
    thesis: the end of the response, the prompt's start lost first)."""
    if truncation_side not in TRUNCATION_SIDES:
        raise ValueError(f"trainer.truncation_side must be one of {TRUNCATION_SIDES}, got {truncation_side!r}")
    out = tokenizer.apply_chat_template(messages, chat_template=training_template, tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True)
    input_ids = _ids(out)
    mask = list(out["assistant_masks"])
    if not any(mask):
        raise FormattingError("the training chat template marks no assistant tokens (no {% generation %} "
                              "block rendered), so nothing would be trained", record_id=record_id, field="Response",
                              origin=origin)
    labels = [t if m else IGNORE_INDEX for t, m in zip(input_ids, mask)]
    prompt_len = mask.index(1)
    if stock_template is not None:
        prompt = _ids(tokenizer.apply_chat_template(messages[:-1], chat_template=stock_template, tokenize=True,
                                                    add_generation_prompt=True, return_dict=True))
        if input_ids[:len(prompt)] != prompt or len(prompt) != prompt_len:
            raise FormattingError(
                "the training chat template does not render the stock template's prompt (or the prompt's "
                "last token merges with the response); the model would train on a context it never sees at "
                "inference", record_id=record_id, field="chat_template", origin=origin)
    if truncation_side == "right" and prompt_len >= max_seq_len:
        raise FormattingError(
            f"the prompt is {prompt_len} tokens but trainer.max_seq_len is {max_seq_len}: no response token "
            "would fit; raise trainer.max_seq_len", record_id=record_id, field="Question", origin=origin)
    truncated = len(input_ids) > max_seq_len
    if truncated and truncation_side == "left":
        input_ids, labels = input_ids[-max_seq_len:], labels[-max_seq_len:]
    elif truncated:
        input_ids, labels = input_ids[:max_seq_len], labels[:max_seq_len]
    return Example(record_id=record_id, input_ids=input_ids, labels=labels, truncated=truncated)


def tokenize_records(tokenizer: Any, records: Sequence[TrainingRecord], *, prompt_template: str,
                     target_format: str, training_template: str, max_seq_len: int,
                     stock_template: str | None = None, origin: str | None = None,
                     truncation_side: str = "right") -> tuple[TokenizedSet, str]:
    """Tokenize every record; return the set and the hash of the rendered conversations."""
    conversations = [to_messages(r, prompt_template, target_format) for r in records]
    examples = [tokenize_example(tokenizer, r.id, m, training_template=training_template,
                                 max_seq_len=max_seq_len, stock_template=stock_template, origin=origin,
                                 truncation_side=truncation_side)
                for r, m in zip(records, conversations)]
    truncated = [e.record_id for e in examples if e.truncated]
    return TokenizedSet(examples, truncated), data_hash(conversations)
