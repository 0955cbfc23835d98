"""Answer extraction and scoring for Stage 3.

Two scorers share one interface, ``extract(output, options) -> Extraction``:

* ``strict`` (the project default): the option the model committed to, or
  None (unparsed, counted wrong). See :mod:`fgrft.scoring.strict`.
* ``thesis``: the thesis's legacy rules, kept to compare with published
  numbers. See :mod:`fgrft.scoring.thesis`.

:func:`score_predictions` scores a run and builds ``metrics.json`` and the
``scorer_audit.jsonl`` rows; :mod:`fgrft.scoring.stats` holds the intervals
and paired tests. Imports only :mod:`fgrft.records` from the rest of fgrft: never the stages,
tracking, the app, the loaders, the call engine or the models package.
"""
from __future__ import annotations

from fgrft.scoring.extraction import Extraction, Scorer, is_empty_output
from fgrft.scoring.strict import StrictScorer
from fgrft.scoring.thesis import ThesisScorer, thesis_tuples, thesis_tuples_from_records

SCORERS: dict[str, type] = {StrictScorer.name: StrictScorer, ThesisScorer.name: ThesisScorer}


def get_scorer(name: str) -> Scorer:
    """The scorer registered under ``name`` ("strict" or "thesis")."""
    try:
        return SCORERS[name]()
    except KeyError:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}") from None


# Imported last: metrics uses the scorer modules above.
from fgrft.scoring.metrics import (  # noqa: E402
    ScoredRun,
    correct_by_id,
    mlflow_metrics,
    score_predictions,
)

__all__ = [
    "Extraction", "Scorer", "SCORERS", "ScoredRun", "StrictScorer", "ThesisScorer",
    "correct_by_id", "get_scorer", "is_empty_output", "mlflow_metrics",
    "score_predictions", "thesis_tuples", "thesis_tuples_from_records",
]
