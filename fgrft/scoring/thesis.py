"""The thesis ("legacy") scorer, reproduced rule for rule.

The thesis inherited this scorer from HuatuoGPT-o1. It is kept only to compare
our runs with the published numbers (THESIS.md, "Stage 3: evaluation"); its
quirks are deliberate and each is pinned by a unit test:

* Only the text after the LAST ``"## Final Response\\n\\n"`` is read (the two
  newlines are part of the marker: ``"## Final Response\\n"`` does not truncate).
* Rule 1: every match of ``(answer is\\s*?)([A-N])`` (case-sensitive, any letter
  A-N, so "the answer is Not" yields N, which never equals a gold letter).
* Rule 2: an isolated upper-case letter among the item's first len(options)
  letters; the delimiters on both sides are consumed, so in "B,C" only B is
  found; "A " (the article) is excluded; letters outside the item are ignored.
* Rule 3: option texts found (lower-cased substring) in the lower-cased text:
  tail = the option whose LAST occurrence is latest, head = the option whose
  FIRST occurrence is latest (sic); ties go to the earlier option.
* Rule 4: the option with the highest ``difflib.SequenceMatcher(None, option,
  text).ratio()`` (both lower-cased), ties going to the LATER option.
* Per source, head_correct and tail_correct are counted and the source's
  accuracy is max(head, tail) with head winning only when strictly greater.
  Empty outputs are dropped from the denominator; a missing source is "unknown".
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

from fgrft.records import LETTERS
from fgrft.scoring.extraction import Extraction, is_empty_output

NAME = "thesis"
FINAL_MARKER = "## Final Response\n\n"
UNKNOWN_SOURCE = "unknown"

_RULE1 = re.compile(r"(answer is\s*?)([A-N])", re.S)


@lru_cache(maxsize=None)
def _rule2_pattern(n_options: int) -> re.Pattern[str]:
    # The letter class depends on the item: only its first len(options) letters.
    letters = LETTERS[:n_options]
    return re.compile(
        r"(is |\*|\W|\ |\(|^|'|\"|#)(?![aA] )([" + letters + r"])(\W|$)", re.S)


def truncate_to_final_response(output: str) -> str:
    """The text after the last ``## Final Response\\n\\n`` marker, else all of it."""
    return output.split(FINAL_MARKER)[-1]


def _latest(positions: Sequence[tuple[str, int]]) -> str:
    """The key with the largest position; on a tie the earlier key wins."""
    best_key, best_pos = positions[0]
    for key, pos in positions[1:]:
        if pos > best_pos:  # strictly: ties keep the earlier option
            best_key, best_pos = key, pos
    return best_key


def _most_similar(options: Mapping[str, str], lowered_text: str) -> str:
    best_key, best_ratio = None, 0.0
    for key, option_text in options.items():
        ratio = difflib.SequenceMatcher(None, option_text.lower(), lowered_text).ratio()
        if ratio >= best_ratio:  # ">=": a tie goes to the later option
            best_key, best_ratio = key, ratio
    assert best_key is not None  # ratio >= 0.0 always holds for the first option
    return best_key


def extract(output: str, options: Mapping[str, str]) -> Extraction:
    """Head and tail answers of one output under the thesis rules.

    ``letter`` is the tail answer (the side chosen when head and tail tie);
    :func:`fgrft.scoring.metrics.score_predictions` replaces it by the side the
    thesis picks for the whole source. An empty output gives no answer at all
    (rule "empty"): the thesis dropped such items before scoring.
    """
    if not options:
        raise ValueError("an item needs at least one option")
    if is_empty_output(output):
        return Extraction(None, "empty")
    text = truncate_to_final_response(output)
    section = "final" if FINAL_MARKER in output else "whole"

    found = list(_RULE1.finditer(text))
    rule = "answer_is"
    if not found:
        found = list(_rule2_pattern(len(options)).finditer(text))
        rule = "isolated_letter"
    if found:
        head, tail = found[0].group(2), found[-1].group(2)
        evidence = found[-1].group(0)
        return Extraction(tail, rule, head=head, tail=tail, evidence=evidence, section=section)

    lowered = text.lower()
    present = [(k, v.lower()) for k, v in options.items() if v.lower() in lowered]
    if present:
        tail = _latest([(k, lowered.rindex(v)) for k, v in present])
        head = _latest([(k, lowered.index(v)) for k, v in present])
        return Extraction(tail, "option_text", head=head, tail=tail,
                          evidence=options[tail], section=section)

    best = _most_similar(options, lowered)
    return Extraction(best, "similarity", head=best, tail=best, section=section)


class ThesisScorer:
    name = NAME

    def extract(self, output: str, options: Mapping[str, str]) -> Extraction:
        return extract(output, options)


# ---------------------------------------------------------------------------
# Per-source aggregation: the published [accuracy, head, total, tail] tuples.

@dataclass
class SourceCounts:
    """Head/tail tallies of one source (empty outputs are not in ``total``)."""

    head_correct: int = 0
    tail_correct: int = 0
    total: int = 0
    dropped_empty: int = 0

    @property
    def chosen_side(self) -> str:
        """"head" only when it is strictly better than tail, else "tail"."""
        return "head" if self.head_correct > self.tail_correct else "tail"

    @property
    def correct(self) -> int:
        return self.head_correct if self.chosen_side == "head" else self.tail_correct

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def as_tuple(self) -> list[float | int]:
        """The thesis's layout: [accuracy, head_correct, total, tail_correct]."""
        return [self.accuracy, self.head_correct, self.total, self.tail_correct]


def same_letter(a: str | None, b: str | None) -> bool:
    """Letters compared case-insensitively, as the thesis did; None never matches."""
    return a is not None and b is not None and a.lower() == b.lower()


def source_name(source: str | None) -> str:
    return source or UNKNOWN_SOURCE


def tally(rows: Iterable[tuple[str | None, Extraction, str]]) -> dict[str, SourceCounts]:
    """Count head/tail hits per source from (source, extraction, answer_idx) rows."""
    counts: dict[str, SourceCounts] = {}
    for source, ext, answer_idx in rows:
        c = counts.setdefault(source_name(source), SourceCounts())
        if ext.rule == "empty":
            c.dropped_empty += 1
            continue
        c.total += 1
        c.head_correct += same_letter(ext.head, answer_idx)
        c.tail_correct += same_letter(ext.tail, answer_idx)
    return counts


def thesis_tuples(
    items: Iterable[tuple[str, Mapping[str, str], str, str | None]],
) -> dict[str, list[float | int]]:
    """Per-source thesis tuples from (output, options, answer_idx, source) rows.

    Run on the thesis's own prediction files this reproduces the published
    [accuracy, head_correct, total, tail_correct] figures.
    """
    rows = ((source, extract(output or "", options), answer_idx)
            for output, options, answer_idx, source in items)
    return {s: c.as_tuple() for s, c in tally(rows).items()}


def thesis_tuples_from_records(records: Iterable[Mapping]) -> dict[str, list[float | int]]:
    """Same, from the thesis's prediction-file records (dicts with ``output``,
    ``options``, ``answer_idx`` and an optional ``source``; other keys ignored)."""
    return thesis_tuples((r.get("output") or "", r["options"], r["answer_idx"], r.get("source"))
                         for r in records)
