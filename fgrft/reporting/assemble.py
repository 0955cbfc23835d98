"""Everything the report shows, computed once from the collected runs and the claims."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fgrft.reporting.claims import Claim, ClaimCheck, missing_claims
from fgrft.reporting.collect import Collection
from fgrft.reporting.paired import PairedReport, check_difference_claims, paired_comparisons
from fgrft.reporting.tables import (
    LetterDistribution,
    Row,
    SampleSummary,
    SourceBaseline,
    TableKey,
    baselines,
    build_tables,
    check_accuracy_claims,
    check_benchmark_claims,
    letter_distributions,
    sample_summaries,
)
from fgrft.scoring.stats import DEFAULT_RESAMPLES


@dataclass
class Report:
    collection: Collection
    claims: list[Claim]
    claims_path: Path | None
    sweep_id: str | None
    tables: dict[TableKey, list[Row]] = field(default_factory=dict)
    baselines: list[SourceBaseline] = field(default_factory=list)
    letters: list[LetterDistribution] = field(default_factory=list)
    samples: list[SampleSummary] = field(default_factory=list)
    paired: PairedReport = field(default_factory=PairedReport)
    checks: list[ClaimCheck] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)


def model_order(claims: list[Claim]) -> list[str]:
    """Model labels in the order the thesis lists them (for stable comparison sides)."""
    order: list[str] = []
    for c in claims:
        if c.model_label and c.model_label not in order:
            order.append(c.model_label)
    return order


def build_report(collection: Collection, claims: list[Claim], *, claims_path: Path | None = None,
                 sweep_id: str | None = None, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Report:
    runs = collection.runs + collection.rescored
    report = Report(collection=collection, claims=claims, claims_path=claims_path, sweep_id=sweep_id)
    report.tables = build_tables(runs, claims)
    report.baselines = baselines(collection.runs)
    report.letters = letter_distributions(runs)
    report.samples = sample_summaries(runs)
    report.paired = paired_comparisons(runs, model_order=model_order(claims), n_resamples=n_resamples, seed=seed)
    report.checks = (check_accuracy_claims(report.tables, claims)
                     + check_difference_claims(report.paired, claims)
                     + check_benchmark_claims(report.baselines, claims))
    report.missing = missing_claims(claims, report.checks)
    return report
