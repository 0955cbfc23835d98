"""Prompts: the one Jinja environment every template is rendered in, and the project's hashes.

* Evaluation (Stage 3, and Stage 2's training text): the template under prompts/ named by the
  ``prompt`` group, filled per item (:func:`load_template`, :func:`render`, :func:`render_all`).
* Stage 1's step templates are compiled here too (:func:`compile_template`) by
  :mod:`fgrft.generation.prompts`, which knows the recipes and steps.
* Hashes: :func:`content_hash` names one template's text (Stage 1's per-step hashes);
  :func:`prompt_hash` covers a template and every filled-in question text *before* any chat
  template, so runs of different models on the same items and prompt compare equal
  (CONTRACTS.md); :func:`items_hash` covers item ids in order, the one ``items_hash`` every
  stage logs (reports pair runs by it).

An undefined variable is an error (``StrictUndefined``), never an empty string. Imports
nothing from the stages.
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


def compile_template(text: str) -> jinja2.Template:
    return _ENV.from_string(text)


def content_hash(text: str) -> str:
    """The sha256 of a template's text, 16 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


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
    """The item ids in order; Stage 1 (its selected questions) and Stage 3 (its items) alike."""
    return _hash(ids)
