"""What a scorer reads out of one model output, shared by both scorers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol


@dataclass(frozen=True)
class Extraction:
    """The answer a scorer found in one output.

    ``letter`` is the answer that counts: the committed letter for the strict
    scorer (None = unparsed), and the *tail* answer for the thesis scorer, whose
    final choice between head and tail is only made per source when a whole run
    is aggregated (see :mod:`fgrft.scoring.metrics`).
    ``rule`` names the rule that decided, ``evidence`` is the text it matched
    (for the audit file), ``section`` which part of the output was read
    ("final" = after the final-response heading, "whole").

    Rules: strict "statement", "labelled", "option_text" (answered) and
    "ambiguous", "conflict", "retracted", "no_answer", "empty" (unparsed); thesis "answer_is",
    "isolated_letter", "option_text", "similarity" (its rules 1-4) and "empty".
    """

    letter: str | None
    rule: str
    head: str | None = None
    tail: str | None = None
    evidence: str = ""
    section: str = "whole"


class Scorer(Protocol):
    """The interface both scorers expose (see :func:`fgrft.scoring.get_scorer`)."""

    name: str

    def extract(self, output: str, options: Mapping[str, str]) -> Extraction: ...


def is_empty_output(output: str | None) -> bool:
    """An output with no visible text (None, "" or whitespace only).

    The thesis dropped empty outputs before scoring; we count whitespace-only
    ones as empty too (a model that printed only newlines said nothing).
    """
    return output is None or not output.strip()
