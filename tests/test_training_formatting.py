"""Stage 2 formatting: the user turn is the evaluation prompt; labels cover exactly the
assistant content plus its end-of-turn token, for ChatML and Llama-3 templates alike."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from fgrft.data import assistant_target, load_training_records
from fgrft.prompts import load_template, render_all
from fgrft.models import chat_templates as ct
from fgrft.models import training_chat_template
from fgrft.records import Question, split_option_lines
from fgrft.training.formatting import (IGNORE_INDEX, FormattingError, data_hash, to_messages, tokenize_example,
                                       tokenize_records, user_turn)

THESIS_PROMPT = load_template("eval_thesis.txt")
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def records():
    return load_training_records({"name": "sample"})


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_path)
    assert tok.chat_template == ct.CHATML_CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_path):
    """The tiny tokenizer made Llama-3.1-shaped: Meta's special tokens and the stock 3.1 template
    (TRL ships a copy), built offline."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("trl")
    stock = Path(next(iter(spec.submodule_search_locations))) / "chat_templates" / "llama3_1.jinja"
    if not stock.is_file():
        pytest.skip("TRL's copy of the Llama-3.1 template is not installed")
    tok = AutoTokenizer.from_pretrained(tiny_path)
    tok.add_special_tokens({"additional_special_tokens": LLAMA_SPECIALS})
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = stock.read_text(encoding="utf-8")
    assert training_chat_template(tok) == ct.LLAMA31_TRAINING_CHAT_TEMPLATE
    return tok


def _trained_text(tokenizer, example) -> str:
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


def test_user_turn_is_exactly_what_evaluation_sends(records):
    record = records[0]
    stem, options = split_option_lines(record.Question)
    question = Question(source="x", question=stem, options=options, answer_idx="A", answer="")
    (evaluation_prompt,) = render_all(THESIS_PROMPT, [question])
    assert user_turn(record, THESIS_PROMPT) == evaluation_prompt
    assert evaluation_prompt == "Please answer the following multiple-choice question:\n" + record.Question


@pytest.mark.parametrize("family", ["chatml", "llama3"])
@pytest.mark.parametrize("target_format", ["thinking", "raw"])
def test_labels_are_the_target_plus_end_of_turn(family, target_format, records, chatml_tokenizer,
                                                 llama_tokenizer):
    tokenizer, eot = (chatml_tokenizer, "<|im_end|>") if family == "chatml" else (llama_tokenizer, "<|eot_id|>")
    template = training_chat_template(tokenizer)
    for record in records[:4]:
        messages = to_messages(record, THESIS_PROMPT, target_format)
        example = tokenize_example(tokenizer, record.id, messages, training_template=template,
                                   max_seq_len=4096, stock_template=tokenizer.chat_template)
        target = assistant_target(record, target_format)
        if family == "llama3":
            target = target.strip()  # the Llama template trims message content
        assert _trained_text(tokenizer, example) == target + eot
        # One contiguous trained span; before it the stock prompt, after it only the
        # template's turn separator (ChatML's newline after <|im_end|>), trained on nothing.
        trained = [i for i, t in enumerate(example.labels) if t != IGNORE_INDEX]
        n, end = trained[0], trained[-1] + 1
        assert trained == list(range(n, end)) and n == example.prompt_len
        assert example.input_ids[n:end] == example.labels[n:end]
        stock_prompt = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(example.input_ids[:n]) == stock_prompt
        assert tokenizer.decode(example.input_ids[end:]) == ("\n" if family == "chatml" else "")


def test_thinking_target_shape(records, chatml_tokenizer):
    record = records[0]
    example = tokenize_example(chatml_tokenizer, record.id, to_messages(record, THESIS_PROMPT, "thinking"),
                               training_template=training_chat_template(chatml_tokenizer), max_seq_len=4096)
    text = _trained_text(chatml_tokenizer, example)
    assert text.startswith("## Thinking\n\n" + record.Complex_CoT.strip()[:40])
    assert "\n\n## Final Response\n\n" + record.Response.strip() + "<|im_end|>" in text


def test_truncation_side_left_keeps_the_end_as_the_thesis_did(records, chatml_tokenizer):
    template = training_chat_template(chatml_tokenizer)
    messages = to_messages(records[0], THESIS_PROMPT, "thinking")
    full = tokenize_example(chatml_tokenizer, "r0", messages, training_template=template, max_seq_len=4096)
    limit = full.prompt_len // 2      # shorter than the prompt: right truncation refuses this
    cut = tokenize_example(chatml_tokenizer, "r0", messages, training_template=template, max_seq_len=limit,
                           truncation_side="left")
    assert cut.truncated and cut.input_ids == full.input_ids[-limit:] and cut.labels == full.labels[-limit:]
    last_labelled = max(i for i, t in enumerate(full.labels) if t != IGNORE_INDEX)
    assert last_labelled >= len(full.input_ids) - limit      # the response's end is trained on
    assert any(t != IGNORE_INDEX for t in cut.labels)
    with pytest.raises(FormattingError):
        tokenize_example(chatml_tokenizer, "r0", messages, training_template=template, max_seq_len=limit)
    with pytest.raises(ValueError, match="truncation_side"):
        tokenize_example(chatml_tokenizer, "r0", messages, training_template=template, max_seq_len=limit,
                         truncation_side="middle")


def test_over_long_sample_is_cut_at_the_end_of_the_response(records, chatml_tokenizer):
    template = training_chat_template(chatml_tokenizer)
    messages = to_messages(records[0], THESIS_PROMPT, "thinking")
    full = tokenize_example(chatml_tokenizer, "r0", messages, training_template=template, max_seq_len=4096)
    limit = full.prompt_len + 10
    cut = tokenize_example(chatml_tokenizer, "r0", messages, training_template=template, max_seq_len=limit)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:limit]  # the prompt's start is kept, the response's end goes
    assert sum(t != IGNORE_INDEX for t in cut.labels) == 10
    tokenized, _ = tokenize_records(chatml_tokenizer, records[:3], prompt_template=THESIS_PROMPT,
                                    target_format="thinking", training_template=template, max_seq_len=4096)
    assert tokenized.truncated_ids == []
    limit = max(e.prompt_len for e in tokenized.examples) + 10
    tokenized, _ = tokenize_records(chatml_tokenizer, records[:3], prompt_template=THESIS_PROMPT,
                                    target_format="thinking", training_template=template, max_seq_len=limit)
    assert tokenized.truncated_ids == [r.id for r in records[:3]]
    assert all(len(e.input_ids) == limit for e in tokenized.examples)


def test_prompt_longer_than_max_seq_len_fails_naming_the_record(records, chatml_tokenizer):
    template = training_chat_template(chatml_tokenizer)
    messages = to_messages(records[1], THESIS_PROMPT, "thinking")
    full = tokenize_example(chatml_tokenizer, records[1].id, messages, training_template=template, max_seq_len=4096)
    with pytest.raises(FormattingError, match=rf"data=sample: record {records[1].id}: field 'Question'.*"
                                              rf"prompt is {full.prompt_len} tokens.*max_seq_len is "
                                              rf"{full.prompt_len}"):
        tokenize_records(chatml_tokenizer, records[:2], prompt_template=THESIS_PROMPT, target_format="thinking",
                         training_template=template, max_seq_len=full.prompt_len, origin="data=sample")


def test_sample_without_assistant_tokens_fails_loudly(records, chatml_tokenizer):
    # The stock template has no {% generation %} block: nothing would be trained.
    with pytest.raises(FormattingError, match="marks no assistant tokens"):
        tokenize_example(chatml_tokenizer, records[0].id, to_messages(records[0], THESIS_PROMPT, "thinking"),
                         training_template=ct.CHATML_CHAT_TEMPLATE, max_seq_len=4096)


def test_training_template_that_renders_another_prompt_is_refused(records, chatml_tokenizer):
    # SmolLM2's twin injects a system turn the tiny model's stock template does not have.
    with pytest.raises(FormattingError, match="does not render the stock template's prompt"):
        tokenize_example(chatml_tokenizer, records[0].id, to_messages(records[0], THESIS_PROMPT, "thinking"),
                         training_template=ct.SMOLLM2_TRAINING_CHAT_TEMPLATE, max_seq_len=4096,
                         stock_template=chatml_tokenizer.chat_template)


def test_data_hash_follows_prompt_and_target(records):
    base = [to_messages(r, THESIS_PROMPT, "thinking") for r in records]
    assert data_hash(base) == data_hash([to_messages(r, THESIS_PROMPT, "thinking") for r in records])
    assert data_hash(base) != data_hash([to_messages(r, THESIS_PROMPT, "raw") for r in records])
    assert data_hash(base) != data_hash(base[::-1])
    changed = [dataclasses.replace(records[0], Response=records[0].Response + " More."), *records[1:]]
    assert data_hash(base) != data_hash([to_messages(r, THESIS_PROMPT, "thinking") for r in changed])
