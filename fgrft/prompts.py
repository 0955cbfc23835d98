"""Evaluation prompts: the template under prompts/, filled per item, and its hashes.

`prompt_hash` covers the template and every filled-in question text *before*
any chat template, so runs of different models on the same items and prompt
compare equal (CONTRACTS.md); `items_hash` covers the item ids in order.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Iterable, Sequence

import jinja2

from fgrft.config import PROMPTS_DIR
from fgrft.records import Question, format_options

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                          autoescape=False)


@lru_cache(maxsize=None)
def load_template(name: str) -> str:
    path = PROMPTS_DIR / name
    if not path.is_file():
        available = ", ".join(sorted(p.name for p in PROMPTS_DIR.glob("eval_*.txt")))
        raise FileNotFoundError(f"prompt template {name!r} not found in {PROMPTS_DIR} (have: {available})")
    return path.read_text(encoding="utf-8")


def render(template: str, question: Question) -> str:
    """The user turn for one item: the template filled with the question and its option lines."""
    return _ENV.from_string(template).render(question=question.question,
                                             options=format_options(question.options))


def render_all(template: str, questions: Sequence[Question]) -> list[str]:
    compiled = _ENV.from_string(template)
    return [compiled.render(question=q.question, options=format_options(q.options)) for q in questions]


def _hash(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode("utf-8"))
        h.update(b"\x1e")
    return h.hexdigest()[:16]


def prompt_hash(template: str, prompts: Sequence[str]) -> str:
    return _hash([template, *prompts])


def items_hash(ids: Sequence[str]) -> str:
    return _hash(ids)
