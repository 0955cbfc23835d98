"""Chat templates: the stock (inference) ones and their training twins.

TRL's ``assistant_only_loss`` needs ``{% generation %}...{% endgeneration %}``
markers around what the assistant writes; the stock templates of SmolLM2 and
Llama-3/3.1 have none. Each training template here renders byte-identically to
its stock twin (the tests compare them, with and without
``add_generation_prompt``) and marks the assistant content plus its end-of-turn
token, so the loss covers exactly what the model must learn to emit.

Saved checkpoints keep the stock template for inference; training passes the
training template (``training_chat_template`` / ``write_training_chat_template``)
to the trainer, and Stage 2 saves it with the fine-tuned model.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# --- ChatML -----------------------------------------------------------------

# SmolLM2-135M-Instruct's own template, exactly as its GGUF ships it (the build
# checks that it still matches). Injects a default system turn.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Plain ChatML without a default system turn: the tiny model's stock template.
CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# One turn of ChatML for training: the assistant's content and <|im_end|> are
# inside the generation block; the header and the trailing newline are not
# (the newline is part of the next prompt, not something the model stops on).
_CHATML_TRAINING_TURN = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
)

SMOLLM2_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    + _CHATML_TRAINING_TURN
    + "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHATML_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    + _CHATML_TRAINING_TURN
    + "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# --- Llama 3 / 3.1 ----------------------------------------------------------

# The message loop's body and the generation prompt, shared by both Llama-3 training
# templates: only the assistant's content (and its <|eot_id|>) is marked for the loss.
_LLAMA3_MESSAGES_AND_PROMPT = (
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Training twin of Llama-3.1-Instruct's template for conversations without
# tools. Like the stock one it always opens with a system block carrying the
# "Cutting Knowledge Date" / "Today Date" lines (the date defaults to the one
# the stock template hard-codes), trims every message, and moves a leading
# system message into that block.
LLAMA31_TRAINING_CHAT_TEMPLATE = (
    "{% if tools is defined and tools is not none %}"
    "{{ raise_exception('This training template renders no tools; use the stock template for tool calls.') }}"
    "{% endif %}"
    "{% if date_string is not defined %}{% set date_string = '26 Jul 2024' %}{% endif %}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system_message = messages[0]['content'] | trim %}{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{% set system_message = '' %}{% set loop_messages = messages %}"
    "{% endif %}"
    "{{ bos_token + '<|start_header_id|>system<|end_header_id|>\n\n' }}"
    "{{ 'Cutting Knowledge Date: December 2023\nToday Date: ' + date_string + '\n\n' }}"
    "{{ system_message + '<|eot_id|>' }}"
    "{% for message in loop_messages %}"
    + _LLAMA3_MESSAGES_AND_PROMPT
)

# Training twin of Llama-3(.0)-Instruct's template (no system block unless the
# conversation has one; bos before the first message). Llama-3-based models
# such as Med42-v2 8B may ship this one.
LLAMA3_TRAINING_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
    + _LLAMA3_MESSAGES_AND_PROMPT
)

# Family name -> training template, keyed by the name with "-", "_" and "."
# removed. "llama3" is Llama-3.0's template (TRL's naming); Llama-3.1 is
# "llama31". Prefer passing the tokenizer: its template identifies the family
# exactly, even when scale=toy swaps the model for smol.
_TRAINING_BY_FAMILY = {
    "smol": SMOLLM2_TRAINING_CHAT_TEMPLATE,
    "smollm2": SMOLLM2_TRAINING_CHAT_TEMPLATE,
    "tiny": CHATML_TRAINING_CHAT_TEMPLATE,
    "chatml": CHATML_TRAINING_CHAT_TEMPLATE,
    "llama31": LLAMA31_TRAINING_CHAT_TEMPLATE,
    "llama3": LLAMA3_TRAINING_CHAT_TEMPLATE,
    "llama30": LLAMA3_TRAINING_CHAT_TEMPLATE,
}


# Stock templates recognised by exact text -> their training twin.
_TRAINING_BY_STOCK = {
    SMOLLM2_CHAT_TEMPLATE: SMOLLM2_TRAINING_CHAT_TEMPLATE,
    CHATML_CHAT_TEMPLATE: CHATML_TRAINING_CHAT_TEMPLATE,
}


_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def has_generation_markers(template: str) -> bool:
    """True when the template already marks assistant output for the loss mask."""
    return _GENERATION_TAG.search(template) is not None


def _family_of(template: str) -> str | None:
    """Recognise a Llama-3 family template by its header tokens.

    Llama-3.1 and later templates add the knowledge-date system block; Llama-3.0
    does not. Matching on these markers (not exact text) covers the many
    checkpoints that re-upload Meta's template with cosmetic whitespace changes.
    """
    if "<|start_header_id|>" not in template:
        return None
    return "llama31" if "Cutting Knowledge Date" in template else "llama3"


def training_chat_template(tokenizer_or_family: Any) -> str:
    """The training-compatible chat template for a tokenizer or a family name.

    Accepts a tokenizer (preferred) or a family name (``smol``,
    ``tiny``/``chatml``, ``llama3`` = 3.0, ``llama31``). For a tokenizer: a template that already has
    generation markers is returned unchanged (a checkpoint this project trained);
    a known stock template maps to its twin; otherwise TRL's own training
    templates are tried (Qwen2.5 and others). Raises ValueError when none fits.
    """
    if isinstance(tokenizer_or_family, str):
        key = "".join(c for c in tokenizer_or_family.strip().lower() if c not in "-_.")
        if key in _TRAINING_BY_FAMILY:
            return _TRAINING_BY_FAMILY[key]
        raise ValueError(
            f"no training chat template for family {tokenizer_or_family!r}; "
            f"known: {', '.join(sorted(_TRAINING_BY_FAMILY))}"
        )

    template = getattr(tokenizer_or_family, "chat_template", None)
    if isinstance(template, dict):  # named variants: the default one is used for chat
        template = template.get("default")
    if not template:
        raise ValueError("the tokenizer has no chat template to derive a training template from")
    if has_generation_markers(template):
        return template
    if template in _TRAINING_BY_STOCK:
        return _TRAINING_BY_STOCK[template]
    family = _family_of(template)
    if family is not None:
        return _TRAINING_BY_FAMILY[family]
    from_trl = _trl_training_template(tokenizer_or_family)
    if from_trl is not None:
        return from_trl
    raise ValueError(
        "the tokenizer's chat template is not one this project or TRL has a training twin for; "
        "pass a template with {% generation %} markers, or train with completion_only_loss instead "
        "of assistant_only_loss"
    )


def _trl_training_template(tokenizer: Any) -> str | None:
    """TRL's training twin for templates it knows (Qwen2.5, Phi-3, ...), if any."""
    try:
        from trl.chat_template_utils import get_training_chat_template
    except ImportError:
        return None
    try:
        patched = get_training_chat_template(tokenizer)
    except ValueError:
        return None
    return patched if patched is not None else tokenizer.chat_template


def write_training_chat_template(tokenizer_or_family: Any, directory: str | Path) -> Path:
    """Write the training template to ``<directory>/training_chat_template.jinja``.

    TRL's ``SFTConfig(chat_template_path=...)`` takes a Jinja file path.
    """
    path = Path(directory) / "training_chat_template.jinja"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(training_chat_template(tokenizer_or_family), encoding="utf-8")
    return path
