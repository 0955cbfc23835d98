"""Score a run's predictions and build ``metrics.json`` and ``scorer_audit.jsonl``.

Definitions (CONTRACTS.md fixes the names; these are the meanings):

* Strict scorer: ``extracted`` is the committed letter or None; ``correct`` is
  extracted == answer_idx. ``total`` counts every (item, sample), empty outputs
  included; ``unparsed`` counts those with no committed answer (empty ones too).
* Thesis scorer: for each source the thesis picks head or tail once, over the
  whole run (head only if it has strictly more hits). A prediction's
  ``extracted`` is its answer on that chosen side, ``correct`` whether it hits,
  and ``head``/``tail`` keep both. Empty outputs are dropped, as in the thesis:
  they get extracted None, correct False, and are left out of ``total`` (counted
  in ``dropped_empty``). ``unparsed`` is 0: the thesis always finds an answer.
* Several samples per item (``sample`` 0..n-1): ``accuracy``/``correct``/
  ``total`` pool all (item, sample) pairs. The CI then resamples items, not
  pairs (a clustered bootstrap), because samples of one item are correlated;
  with one sample it is the Wilson interval. ``samples`` gives the mean and sd
  (n - 1) of the per-sample overall accuracies and the overall accuracy of the
  per-item majority vote (see :func:`fgrft.scoring.stats.majority_vote`).
* ``overall`` pools counts over sources (item-weighted, as the thesis's
  "Overall" column), not a mean of the per-source accuracies.
* Both scorers read every run: the top-level blocks are the configured
  scorer's, ``by_scorer.{strict,thesis}`` has each scorer's ``per_source`` and
  ``overall`` (and ``samples``) blocks from the same outputs.
* The thesis scorer's per-source accuracy is the better of its head and tail
  readings, chosen after comparing both with the gold answers, so its
  ``ci_low``/``ci_high`` (computed as if the reading had been fixed in
  advance) are optimistic; paired tests under that scorer compare the tail
  reading of both runs (see :mod:`fgrft.reporting.eval_runs`).
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from fgrft.records import SCHEMA_VERSION, Prediction
from fgrft.scoring import strict, thesis
from fgrft.scoring.extraction import Extraction
from fgrft.scoring.stats import (
    DEFAULT_RESAMPLES,
    clustered_bootstrap_interval,
    majority_vote,
    mean_sd,
    wilson_interval,
)
from fgrft.scoring.thesis import SourceCounts, same_letter, source_name

SCORER_NAMES = (strict.NAME, thesis.NAME)
AUDIT_OUTPUT_CHARS = 400  # tail of the output kept in an audit row


@dataclass
class ScoredRun:
    """Scored predictions (filled in place) and the two files built from them.

    ``by_scorer`` holds, per prediction, both scorers' readings of the same
    output (the ``predictions.jsonl`` fields of :data:`BOTH_SCORERS_FIELDS`).
    """

    predictions: list[Prediction]
    metrics: dict[str, Any]
    audit: list[dict[str, Any]] = field(default_factory=list)
    by_scorer: list[dict[str, Any]] = field(default_factory=list)


# What each predictions.jsonl line carries from both scorers, whichever is configured.
BOTH_SCORERS_FIELDS = ("strict_extracted", "strict_correct", "thesis_head", "thesis_tail", "thesis_correct")


def _thesis_choice(ext: Extraction, counts: SourceCounts) -> str | None:
    if ext.rule == "empty":
        return None
    return ext.head if counts.chosen_side == "head" else ext.tail


def _counted(p: Prediction, scorer: str) -> bool:
    """Whether a prediction is in the denominator (the thesis drops empty outputs).

    Every thesis rule yields a head, so a thesis-scored prediction has
    ``head`` None exactly when its output was empty.
    """
    return scorer == strict.NAME or p.head is not None


def _interval(preds: Sequence[Prediction], scorer: str, n_samples: int,
              seed: int, n_resamples: int) -> tuple[float, float]:
    counted = [p for p in preds if _counted(p, scorer)]
    if n_samples <= 1:
        return wilson_interval(sum(p.correct for p in counted), len(counted))
    per_item: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for p in counted:
        tally = per_item[p.id]
        tally[0] += p.correct
        tally[1] += 1
    c, t = zip(*per_item.values()) if per_item else ((), ())
    return clustered_bootstrap_interval(c, t, n_resamples=n_resamples, seed=seed)


def _block(preds: Sequence[Prediction], scorer: str, n_samples: int,
           seed: int, n_resamples: int) -> dict[str, Any]:
    counted = [p for p in preds if _counted(p, scorer)]
    correct = sum(p.correct for p in counted)
    total = len(counted)
    low, high = _interval(preds, scorer, n_samples, seed, n_resamples)
    block: dict[str, Any] = {
        "accuracy": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "unparsed": sum(p.extracted is None for p in counted),
        "ci_low": low,
        "ci_high": high,
    }
    if scorer == thesis.NAME:
        block["head_correct"] = sum(same_letter(p.head, p.answer_idx) for p in counted)
        block["tail_correct"] = sum(same_letter(p.tail, p.answer_idx) for p in counted)
        block["dropped_empty"] = len(preds) - total
    return block


def _samples_block(preds: Sequence[Prediction], scorer: str) -> dict[str, Any]:
    by_sample: dict[int, list[Prediction]] = defaultdict(list)
    by_item: dict[tuple[str, str], list[Prediction]] = defaultdict(list)
    for p in preds:
        by_sample[p.sample].append(p)
        by_item[(source_name(p.source), p.id)].append(p)
    accuracies = []
    for s in sorted(by_sample):
        counted = [p for p in by_sample[s] if _counted(p, scorer)]
        accuracies.append(sum(p.correct for p in counted) / len(counted) if counted else 0.0)
    mean, sd = mean_sd(accuracies)
    voted = correct_votes = 0
    for item_preds in by_item.values():
        counted = sorted((p for p in item_preds if _counted(p, scorer)), key=lambda p: p.sample)
        if not counted:  # thesis: every sample of this item was empty
            continue
        voted += 1
        correct_votes += same_letter(majority_vote([p.extracted for p in counted]),
                                     counted[0].answer_idx)
    return {"n": len(by_sample), "mean": mean, "sd": sd,
            "majority_vote": correct_votes / voted if voted else 0.0}


def _audit_row(p: Prediction, s: Extraction, t: Extraction, t_letter: str | None) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "id": p.id,
        "source": p.source,
        "sample": p.sample,
        "answer_idx": p.answer_idx,
        "strict": {"extracted": s.letter, "rule": s.rule, "evidence": s.evidence,
                   "section": s.section, "correct": same_letter(s.letter, p.answer_idx)},
        "thesis": {"extracted": t_letter, "head": t.head, "tail": t.tail, "rule": t.rule,
                   "evidence": t.evidence, "correct": same_letter(t_letter, p.answer_idx)},
        "output_tail": (p.output or "")[-AUDIT_OUTPUT_CHARS:],
    }


def score_predictions(
    predictions: list[Prediction],
    scorer: str,
    *,
    prompt: str | None = None,
    throughput: Mapping[str, float | None] | None = None,
    audit: bool = True,
    seed: int = 0,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> ScoredRun:
    """Fill ``extracted``/``correct`` (and ``head``/``tail`` for the thesis
    scorer) on each prediction, and build ``metrics.json`` and the audit rows.

    ``prompt`` is the prompt option's name; ``throughput`` the caller's
    {items_per_s, output_tokens_per_s}. Both scorers always run (``by_scorer``
    in the metrics, :attr:`ScoredRun.by_scorer` per prediction); with ``audit``
    the items on which they disagree (strict letter vs the thesis's chosen
    letter) are listed. ``seed``/``n_resamples`` drive the multi-sample CIs.
    """
    if scorer not in SCORER_NAMES:
        raise ValueError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORER_NAMES)}")
    # Both scorers read every output: metrics.json and predictions.jsonl carry
    # both, so comparing them never needs a second generation.
    strict_ext = [strict.extract(p.output or "", p.options) for p in predictions]
    thesis_ext = [thesis.extract(p.output or "", p.options) for p in predictions]
    counts = thesis.tally((p.source, e, p.answer_idx) for p, e in zip(predictions, thesis_ext))
    thesis_letters = [_thesis_choice(e, counts[source_name(p.source)])
                      for p, e in zip(predictions, thesis_ext)]

    views: dict[str, list[Prediction]] = {}
    for name in SCORER_NAMES:
        views[name] = predictions if name == scorer else [dataclasses.replace(p) for p in predictions]
        for i, p in enumerate(views[name]):
            if name == strict.NAME:
                p.extracted, p.head, p.tail = strict_ext[i].letter, None, None
            else:
                p.extracted, p.head, p.tail = thesis_letters[i], thesis_ext[i].head, thesis_ext[i].tail
            p.correct = same_letter(p.extracted, p.answer_idx)

    n_samples = len({p.sample for p in predictions})
    blocks = {name: _scorer_blocks(views[name], name, n_samples, seed, n_resamples) for name in SCORER_NAMES}
    metrics: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "scorer": scorer,
        "prompt": prompt,
        **blocks[scorer],
        "by_scorer": blocks,
    }
    metrics["throughput"] = {"items_per_s": None, "output_tokens_per_s": None, **(throughput or {})}
    both = [{"strict_extracted": s.letter, "strict_correct": same_letter(s.letter, p.answer_idx),
             "thesis_head": t.head, "thesis_tail": t.tail,
             "thesis_correct": same_letter(t_letter, p.answer_idx)}
            for p, s, t, t_letter in zip(predictions, strict_ext, thesis_ext, thesis_letters)]

    rows = []
    if audit:
        for p, s, t, t_letter in zip(predictions, strict_ext, thesis_ext, thesis_letters):
            if s.letter != t_letter:
                rows.append(_audit_row(p, s, t, t_letter))
    return ScoredRun(predictions, metrics, rows, both)


def _scorer_blocks(preds: Sequence[Prediction], scorer: str, n_samples: int, seed: int,
                   n_resamples: int) -> dict[str, Any]:
    """``per_source`` and ``overall`` (and ``samples``) of one scorer's reading."""
    by_source: dict[str, list[Prediction]] = defaultdict(list)
    for p in preds:
        by_source[source_name(p.source)].append(p)
    out: dict[str, Any] = {
        "per_source": {s: _block(ps, scorer, n_samples, seed, n_resamples) for s, ps in by_source.items()},
        "overall": _block(preds, scorer, n_samples, seed, n_resamples),
    }
    if n_samples > 1:
        out["samples"] = _samples_block(preds, scorer)
    return out


MLFLOW_KEYS = ("accuracy", "ci_low", "ci_high", "unparsed")


def mlflow_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metric names of CONTRACTS.md for one ``metrics.json`` dict.

    Unprefixed keys are the configured scorer's; ``<scorer>/<key>/<source>``
    (``<source>`` including ``overall``) are each scorer's, from ``by_scorer``.
    """
    out: dict[str, float] = {}
    for source, block in metrics["per_source"].items():
        for key in MLFLOW_KEYS:
            out[f"{key}/{source}"] = float(block[key])
    out["accuracy/overall"] = float(metrics["overall"]["accuracy"])
    for scorer, blocks in (metrics.get("by_scorer") or {}).items():
        for source, block in [*blocks["per_source"].items(), ("overall", blocks["overall"])]:
            for key in MLFLOW_KEYS:
                out[f"{scorer}/{key}/{source}"] = float(block[key])
    return out


def correct_by_id(predictions: Iterable[Prediction], sample: int = 0) -> dict[str, bool]:
    """Scored correctness of one sample per item id, for the paired tests in stats."""
    return {p.id: bool(p.correct) for p in predictions if p.sample == sample}
