"""Do training questions overlap the evaluation sets?

Two kinds of overlap are reported for every (training item, evaluation item)
pair that has one:

* ``exact``: the question stems hold the same words in the same order after
  folding case (option lines stripped; whitespace and punctuation ignored, so
  "Skeletal muscles" and "Skeletal muscles:" match);
* ``ngram``: the two texts share long word n-grams (n = 13 by default, the
  usual decontamination length). The score is the fraction of the shorter
  text's distinct n-grams that the other text also holds; a pair is reported
  when it shares at least ``min_shared`` n-grams and the score reaches
  ``min_fraction``.

N-grams found in many evaluation items are template text, not leakage (every
PubMedQA item carries the same "Using the above document as a reference..."
sentence; MedQA repeats "which of the following is the most appropriate next
step in management"), so n-grams held by more than ``max_eval_frequency``
evaluation items are ignored. Texts shorter than n words are covered by the
exact check only.

The evaluation side is indexed once (n-gram -> items), so checking 5,000
training questions against the 3,273 thesis items takes seconds.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

from fgrft.records import Question, TrainingRecord, fold, split_option_lines, stem_id

from .benchmarks import load_benchmark
from .files import DataUnavailable

_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class OverlapSettings:
    n: int = 13
    min_shared: int = 1
    min_fraction: float = 0.2
    max_eval_frequency: int = 20


@dataclass(frozen=True)
class Overlap:
    train_id: str
    eval_id: str
    eval_source: str
    kind: str  # "exact" | "ngram"
    score: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TrainItem = Question | TrainingRecord | str | tuple[str, str]


def normalise(text: str) -> str:
    """The folded question stem: option lines stripped, case and whitespace folded."""
    return fold(split_option_lines(text)[0])


def words(text: str) -> list[str]:
    """The words of the folded stem (punctuation dropped)."""
    return _WORD.findall(normalise(text))


def exact_key(text: str) -> str:
    """What an exact match compares: the stem's words, in order."""
    return " ".join(words(text))


def _grams(w: list[str], n: int) -> set[int]:
    return {hash(tuple(w[i:i + n])) for i in range(len(w) - n + 1)}


def train_text(item: TrainItem) -> tuple[str, str]:
    """(id, question text) of anything that can be a training item."""
    if isinstance(item, Question):
        return item.id, item.question
    if isinstance(item, TrainingRecord):
        return item.id, item.Question
    if isinstance(item, tuple):
        return item
    return stem_id(item), item


def find_overlaps(train: Iterable[TrainItem], evaluation: Iterable[Question] | Mapping[str, Sequence[Question]],
                  settings: OverlapSettings | None = None, **overrides: Any) -> list[Overlap]:
    """Every (training item, evaluation item) pair that overlaps, exact matches first per item."""
    s = settings or OverlapSettings()
    if overrides:
        s = OverlapSettings(**{**asdict(s), **overrides})
    if s.n < 1:
        raise ValueError(f"n must be >= 1, got {s.n}")
    index = _EvalIndex(evaluation, s)
    found: list[Overlap] = []
    for item in train:
        train_id, text = train_text(item)
        found.extend(index.overlaps(train_id, text))
    return found


class _EvalIndex:
    """The evaluation side: folded stems for exact matches, n-gram -> items for overlaps."""

    def __init__(self, evaluation: Iterable[Question] | Mapping[str, Sequence[Question]],
                 settings: OverlapSettings):
        self.s = settings
        items = ([q for qs in evaluation.values() for q in qs] if isinstance(evaluation, Mapping)
                 else list(evaluation))
        self.items = items
        self.by_stem: dict[str, list[int]] = {}
        self.by_gram: dict[int, list[int]] = {}
        self.gram_counts: list[int] = []
        for i, q in enumerate(items):
            w = words(q.question)
            if w:
                self.by_stem.setdefault(" ".join(w), []).append(i)
            grams = _grams(w, settings.n)
            self.gram_counts.append(len(grams))
            for g in grams:
                self.by_gram.setdefault(g, []).append(i)
        # Template n-grams shared by many items say nothing about leakage.
        self.by_gram = {g: ix for g, ix in self.by_gram.items() if len(ix) <= settings.max_eval_frequency}

    def overlaps(self, train_id: str, text: str) -> list[Overlap]:
        out = []
        w = words(text)
        exact = set(self.by_stem.get(" ".join(w), ())) if w else set()
        for i in sorted(exact):
            out.append(Overlap(train_id, self.items[i].id, self.items[i].source, "exact", 1.0))
        grams = _grams(w, self.s.n)
        if not grams:
            return out
        shared = Counter(i for g in grams for i in self.by_gram.get(g, ()))
        for i, count in sorted(shared.items()):
            if i in exact or count < self.s.min_shared:
                continue
            score = count / min(len(grams), self.gram_counts[i])
            if score >= self.s.min_fraction:
                out.append(Overlap(train_id, self.items[i].id, self.items[i].source, "ngram",
                                   round(score, 4)))
        return out


def overlapping_train_ids(overlaps: Iterable[Overlap]) -> set[str]:
    """The training ids that overlap some evaluation item (to drop them)."""
    return {o.train_id for o in overlaps}


def check_contamination(train: Iterable[TrainItem],
                        benchmarks: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                        settings: OverlapSettings | None = None, *,
                        cache_dir: str | None = None) -> dict[str, Any]:
    """Check training items against benchmark specs, for a run's ``summary.json``.

    Each spec is loaded with :func:`load_benchmark`; a benchmark that cannot be
    reached here (directory unset, file missing, hub offline) is skipped and
    named. Returns ``{"checked_against": [{"source", "items"}], "overlaps":
    [...]}``, plus ``"not_checked": reason`` when some benchmark was skipped;
    ``{"not_checked": reason}`` alone when none could be loaded. Malformed
    benchmark data still raises :class:`RecordError`.
    """
    specs = [benchmarks] if isinstance(benchmarks, Mapping) else list(benchmarks)
    loaded: dict[str, list[Question]] = {}
    skipped = []
    for spec in specs:
        try:
            loaded.update(load_benchmark(spec, cache_dir=cache_dir))
        except DataUnavailable as e:
            skipped.append(str(e))
    if not loaded:
        return {"not_checked": "; ".join(skipped) or "no benchmark given"}
    overlaps = find_overlaps(train, loaded, settings)
    result: dict[str, Any] = {
        "checked_against": [{"source": name, "items": len(qs)} for name, qs in loaded.items()],
        "overlaps": [o.to_dict() for o in overlaps],
    }
    if skipped:
        result["not_checked"] = "; ".join(skipped)
    return result
