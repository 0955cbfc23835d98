"""Checks between steps: what makes a sample unusable, and why it was dropped.

The original generation code let bad samples through silently (a parse failure dropped the
sample without a word, a missing gate verdict counted as Pass, nothing compared the final
text with the gold answer, nothing checked that the student's prompt was answer-blind). Here
every check either passes or raises :class:`Rejected` with one of :data:`REASONS`, and the
job counts every reason.

    contaminated                  the question overlaps an evaluation set (dropped before any call)
    parse_failure                 a step's answer was unusable: not JSON, off-schema, cut by the
                                  output cap, empty, or semantically incomplete (Revise, no note)
    refused                       the model refused or the provider filtered the answer
    gate_failed                   the gate still said Revise when no revision was left
    decision_disagrees_with_gold  P3's final decision does not name the gold letter (recipe
                                  thesis: names another option)
    final_disagrees_with_gold     P5's response does not commit to the gold letter (recipe
                                  thesis: commits to another option; one that commits to none
                                  is kept and counted as ``final_uncommitted``)
    format_violation              the text carries the training target's own headings
    budget                        budget_usd was spent before the question finished
    api_error                     transport failures outlived their retries, or the run stopped
                                  after a fatal API error
    batch_failed                  (mode=batch) no usable row in batch_max_tries provider batches
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

from fgrft.generation.steps import FINAL_MUST_NAME_GOLD, FINAL_MUST_NOT_NAME_OTHER
from fgrft.records import Question
from fgrft.scoring import strict

REASONS = ("contaminated", "parse_failure", "refused", "gate_failed",
           "decision_disagrees_with_gold", "final_disagrees_with_gold", "format_violation",
           "budget", "api_error", "batch_failed")
# The headings of the training target ("## Thinking ... ## Final Response"); inside P4's or
# P5's text they would move the scorer's "final response" section.
_TARGET_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]*(?:thinking|final[ \t]+(?:response|answer))\b",
                             re.I | re.M)


class Rejected(Exception):
    def __init__(self, reason: str, detail: str = ""):
        assert reason in REASONS, reason
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class LeakError(AssertionError):
    """A template shows the gold answer to a step that must not see it (a bug, not data)."""


# ----------------------------------------------------------------------------- before calls


def with_other_gold(q: Question) -> Question:
    """The same question with a different gold letter (for answer-blindness checks)."""
    other = next(letter for letter in sorted(q.options) if letter != q.answer_idx)
    return dataclasses.replace(q, answer_idx=other, answer=q.options[other])


def check_answer_blind(prompts: Any, q: Question) -> None:
    """P1's prompt must not depend on the gold answer: rendered for the same question with a
    different gold it must be byte-identical. Raises :class:`LeakError` otherwise."""
    if prompts.render("p1", q) != prompts.render("p1", with_other_gold(q)):
        raise LeakError(f"the P1 prompt changes with the gold answer (question {q.id}): "
                        "the student step must be answer-agnostic")


# ----------------------------------------------------------------------------- after calls


def student_letter(p1: Mapping[str, Any]) -> str:
    """The letter P1 committed to on its final line ("The answer is: X")."""
    return p1["final_answer"].rsplit(":", 1)[1].strip()


def gate_verdict(gate: Mapping[str, Any]) -> tuple[str, str]:
    """(verdict, note). A Revise must say what to revise; a Pass keeps no note."""
    verdict, note = gate["verdict"], gate["revise_note"].strip()
    if verdict == "Revise" and not note:
        raise Rejected("parse_failure", "the gate said Revise without a revise_note")
    return verdict, note if verdict == "Revise" else ""


def committed_letter(text: str, q: Question) -> str | None:
    """The option ``text`` commits to under the strict scorer, or None."""
    return strict.extract(text, q.options).letter


def _check_commitment(letter: str | None, q: Question, rule: str, reason: str, what: str) -> bool:
    """True when ``letter`` is the gold; False when it is None and ``rule`` lets that pass;
    raises :class:`Rejected` otherwise."""
    if letter == q.answer_idx:
        return True
    if letter is None and rule == FINAL_MUST_NOT_NAME_OTHER:
        return False
    if rule not in (FINAL_MUST_NAME_GOLD, FINAL_MUST_NOT_NAME_OTHER):
        raise ValueError(f"unknown final-answer rule {rule!r}")
    raise Rejected(reason, f"{what} {letter or 'nothing parseable'}, gold is {q.answer_idx}")


def check_decision(chain: Mapping[str, str], q: Question,
                   rule: str = FINAL_MUST_NAME_GOLD) -> bool:
    """Whether P3's decision names the gold letter (see :func:`check_final` for ``rule``)."""
    return _check_commitment(committed_letter(chain["decision"], q), q, rule,
                             "decision_disagrees_with_gold", "P3 decided")


def check_target_format(text: str, step: str) -> None:
    m = _TARGET_HEADING.search(text)
    if m:
        raise Rejected("format_violation", f"{step} contains the heading {m.group(0).strip()!r}")


def check_final(response: str, q: Question, rule: str = FINAL_MUST_NAME_GOLD) -> bool:
    """Whether P5's response commits to the gold letter. ``FINAL_MUST_NAME_GOLD`` (fgrft_plus,
    whose P5 sees the options) drops anything else; ``FINAL_MUST_NOT_NAME_OTHER`` (thesis, whose
    P5 never sees them) drops only a response that commits to another option and returns
    False for one that commits to none."""
    return _check_commitment(committed_letter(response, q), q, rule,
                             "final_disagrees_with_gold", "P5 answered")


def check_nonempty(text: str, step: str) -> None:
    """An empty text would train on an empty Thinking or Final Response section."""
    if not text.strip():
        raise Rejected("parse_failure", f"{step} returned an empty text")
