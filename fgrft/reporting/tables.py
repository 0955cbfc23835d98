"""The thesis-layout tables, baselines, answer-letter distributions and claim checks.

Layout: one table per (scale, scorer, prompt), because numbers from different
scorers or prompts measure different things and must not sit in one column.
A row is one (model label, data arm, temperature) on one item set and prompt;
runs that share a row are replicates (seeds, re-runs) over the same items, so
their mean and sd are meaningful. Columns are MedQA, PubMedQA, MedMCQA and the
item-weighted avg (pooled correct / pooled total, as the thesis's "Overall").
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable

from fgrft.reporting.claims import (
    AVG,
    BENCHMARK_COLUMNS,
    Claim,
    ClaimCheck,
    Setting,
    check,
    column_of,
    unchecked,
)
from fgrft.reporting.eval_runs import EvalRun, SourceScore, fmt_t
from fgrft.scoring.stats import mean_sd, wilson_interval
from fgrft.scoring.thesis import source_name

COLUMNS = (*BENCHMARK_COLUMNS, AVG)
NO_ANSWER = "none"  # a prediction with no extracted letter
OTHER = "other"  # a letter outside the item's options (the thesis scorer's "answer is N...")


@dataclass(frozen=True)
class TableKey:
    scale: str
    scorer: str
    prompt: str | None

    @property
    def title(self) -> str:
        return f"scale {self.scale}, scorer {self.scorer}, prompt {self.prompt}"

    @property
    def slug(self) -> str:
        return f"{self.scale}_{self.scorer}_{self.prompt}"


@dataclass(frozen=True)
class RowKey:
    model_label: str
    arm: str
    temperature: float | None
    items_hash: str | None
    prompt_hash: str | None


@dataclass
class Cell:
    """One (row, column): a run's score, or the replicates' mean and sd."""

    column: str
    values: list[float]  # accuracy per run, as fractions
    run_ids: list[str]
    # Single-run details (None with replicates: their spread is the sd).
    correct: int | None = None
    total: int | None = None
    items: int | None = None  # total plus items the thesis scorer dropped
    ci: tuple[float, float] | None = None
    thesis_tuple: tuple[float, int, int, int] | None = None

    @property
    def mean(self) -> float:
        return mean_sd(self.values)[0]

    @property
    def sd(self) -> float | None:
        return mean_sd(self.values)[1] if len(self.values) > 1 else None

    @property
    def n_runs(self) -> int:
        return len(self.values)


@dataclass
class Row:
    table: TableKey
    key: RowKey
    label: str
    runs: list[EvalRun]
    cells: dict[str, Cell] = field(default_factory=dict)
    checks: dict[str, ClaimCheck] = field(default_factory=dict)  # column -> the check shown in the cell

    @property
    def temperature(self) -> float | None:
        return self.key.temperature


def _column_score(run: EvalRun, column: str) -> SourceScore | None:
    """A run's score on a column: its source of that column, or the pooled benchmark sources for avg."""
    if column == AVG:
        sources = [s for s in run.per_source.values() if column_of(s.source) in BENCHMARK_COLUMNS]
        if {column_of(s.source) for s in sources} != set(BENCHMARK_COLUMNS):
            return None  # the thesis gives avg only over all three benchmarks
    else:
        sources = [s for s in run.per_source.values() if column_of(s.source) == column]
    if not sources:
        return None
    if len(sources) == 1 and column != AVG:
        return sources[0]
    correct, total = sum(s.correct for s in sources), sum(s.total for s in sources)
    if run.samples is None:
        low, high = wilson_interval(correct, total)
    elif run.overall is not None and run.overall.total == total:
        # Several samples per item: the run's own clustered interval, when it covers exactly these items.
        low, high = run.overall.ci_low, run.overall.ci_high
    else:
        low, high = float("nan"), float("nan")
    heads = [s.head_correct for s in sources]
    tails = [s.tail_correct for s in sources]
    return SourceScore(source=column, correct=correct, total=total, ci_low=low, ci_high=high,
                       head_correct=sum(heads) if None not in heads else None,
                       tail_correct=sum(tails) if None not in tails else None,
                       dropped=sum(s.dropped for s in sources))


def _cell(runs: list[EvalRun], column: str) -> Cell | None:
    scored = [(r, s) for r in runs if (s := _column_score(r, column)) is not None]
    if not scored:
        return None
    cell = Cell(column=column, values=[s.accuracy for _, s in scored], run_ids=[r.run_id for r, _ in scored])
    if len(scored) == 1:
        _, s = scored[0]
        cell.correct, cell.total, cell.items, cell.ci = s.correct, s.total, s.items, (s.ci_low, s.ci_high)
        # The thesis prints tuples per source only; avg has none.
        cell.thesis_tuple = s.thesis_tuple if column != AVG else None
    return cell


def table_key(run: EvalRun) -> TableKey:
    return TableKey(run.scale, run.scorer, run.prompt)


def row_key(run: EvalRun) -> RowKey:
    return RowKey(run.model_label, run.arm, run.temperature, run.items_hash, run.prompt_hash)


def _claim_rank(key: RowKey, claims: list[Claim]) -> int:
    """Rows the thesis has come first, in its order; ours follow."""
    for i, c in enumerate(claims):
        if c.kind == "accuracy" and c.match and c.match.matches(key.model_label, key.arm, key.temperature):
            return i
    return len(claims)


def build_tables(runs: Iterable[EvalRun], claims: list[Claim]) -> dict[TableKey, list[Row]]:
    grouped: dict[TableKey, dict[RowKey, list[EvalRun]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        grouped[table_key(run)][row_key(run)].append(run)
    tables: dict[TableKey, list[Row]] = {}
    # Full-scale tables first, then toy; thesis-scored before strict.
    for tkey in sorted(grouped, key=lambda k: (k.scale != "full", k.scale, k.scorer != "thesis", k.scorer,
                                              str(k.prompt))):
        rows_by_key = grouped[tkey]
        label_counts = Counter((k.model_label, k.arm, k.temperature) for k in rows_by_key)
        rows = []
        for rkey, rruns in rows_by_key.items():
            label = rruns[0].label
            if label_counts[(rkey.model_label, rkey.arm, rkey.temperature)] > 1:
                # Same model/arm/temperature on other items or another prompt text: say which.
                label += f" [{rruns[0].benchmark or 'items'} {str(rkey.items_hash)[:6]}/{str(rkey.prompt_hash)[:6]}]"
            row = Row(table=tkey, key=rkey, label=label, runs=rruns)
            for column in COLUMNS:
                cell = _cell(rruns, column)
                if cell is not None:
                    row.cells[column] = cell
            rows.append(row)
        rows.sort(key=lambda r: (_claim_rank(r.key, claims), r.label, r.temperature or 0.0))
        tables[tkey] = rows
    return tables


# --------------------------------------------------------------------------- claims
def check_accuracy_claims(tables: dict[TableKey, list[Row]], claims: list[Claim]) -> list[ClaimCheck]:
    """Every accuracy claim against every row it matches; fills each row's `checks` for its cells."""
    checks = []
    for tkey, rows in tables.items():
        for row in rows:
            for claim in claims:
                if claim.kind != "accuracy" or not claim.match:
                    continue
                if not claim.match.matches(row.key.model_label, row.key.arm, row.key.temperature):
                    continue
                where = f"{row.label}, T={fmt_t(row.temperature)} ({tkey.scale}/{tkey.scorer})"
                cell = row.cells.get(claim.column)
                if cell is None:
                    checks.append(unchecked(claim, where, f"this row has no {claim.column} result", tkey.scale))
                    continue
                ci = (cell.ci[0] * 100, cell.ci[1] * 100) if cell.ci else None
                setting = Setting(scale=tkey.scale, scorer=tkey.scorer, prompt=tkey.prompt, items=cell.items)
                c = check(claim, setting, cell.mean * 100, where=where, ci=ci, ours_tuple=cell.thesis_tuple,
                          run_ids=cell.run_ids)
                checks.append(c)
                # The table cell shows the first claim on it that has a delta (main before temperature).
                if c.shows_delta and claim.column not in row.checks:
                    row.checks[claim.column] = c
    return checks


# --------------------------------------------------------------------------- baselines
@dataclass
class SourceBaseline:
    """What a benchmark source gives for free: chance and the majority gold letter."""

    scale: str
    source: str
    items: int
    options: Counter  # number of options -> items
    gold: Counter  # gold letter -> items
    chance: float  # expected accuracy of a uniform random guess
    majority_letter: str
    majority: float  # accuracy of always answering the most common gold letter
    conflicts: int = 0  # items whose gold letter differs between runs

    @property
    def letters(self) -> list[str]:
        return sorted(self.gold)


def baselines(runs: Iterable[EvalRun]) -> list[SourceBaseline]:
    """Per (scale, source), from the union of items in the runs' predictions (sample 0).

    The majority-class accuracy is computed on the test items themselves: it
    is a floor to beat, not a model that could have been built without them.
    """
    items: dict[tuple[str, str], dict[str, tuple[str, int]]] = defaultdict(dict)
    conflicts: Counter = Counter()
    for run in runs:
        for p in run.predictions:
            if p.sample != 0:
                continue
            key = (run.scale, source_name(p.source))
            gold = p.answer_idx.strip().upper()
            seen = items[key].get(p.id)
            if seen is not None and seen[0] != gold:
                conflicts[key] += 1
            items[key].setdefault(p.id, (gold, len(p.options)))
    out = []
    for (scale, source), by_id in sorted(items.items(), key=lambda kv: (kv[0][0] != "full", kv[0])):
        gold = Counter(g for g, _ in by_id.values())
        n = len(by_id)
        letter, count = max(sorted(gold.items()), key=lambda kv: kv[1])
        out.append(SourceBaseline(
            scale=scale, source=source, items=n, options=Counter(k for _, k in by_id.values()), gold=gold,
            chance=sum(1 / k for _, k in by_id.values()) / n, majority_letter=letter, majority=count / n,
            conflicts=conflicts[(scale, source)]))
    return out


def check_benchmark_claims(bases: list[SourceBaseline], claims: list[Claim]) -> list[ClaimCheck]:
    """Item counts, options per item and gold-letter counts of full-scale sources vs the thesis files."""
    checks = []
    for claim in claims:
        if claim.kind != "benchmark":
            continue
        for base in bases:
            if base.source != claim.row:
                continue
            if claim.column == "items":
                ours = base.items
            elif claim.column == "options":
                # One number only when every item has the same count; otherwise the claim fails visibly.
                ours = next(iter(base.options)) if len(base.options) == 1 else -1
            elif claim.column.startswith("gold_"):
                ours = base.gold.get(claim.column[len("gold_"):], 0)
            else:
                continue
            setting = Setting(scale=base.scale, scorer=claim.scorer or "", prompt=claim.prompt)
            checks.append(check(claim, setting, float(ours), where=f"{base.source} ({base.scale} runs)"))
    return checks


# --------------------------------------------------------------------------- letters
@dataclass
class LetterDistribution:
    run: EvalRun
    source: str
    counts: Counter  # letter | NO_ANSWER | OTHER -> predictions (sample 0)
    n: int


def letter_distributions(runs: Iterable[EvalRun]) -> list[LetterDistribution]:
    """Each run's extracted answer letters per source (sample 0), to set beside the gold letters.

    A model that says "A" to everything shows here long before its accuracy
    does; with the thesis scorer, dropped (empty) outputs count as none.
    """
    out = []
    for run in runs:
        by_source: dict[str, Counter] = defaultdict(Counter)
        for p in run.predictions:
            if p.sample != 0:
                continue
            letter = (p.extracted or "").strip().upper()
            if not letter:
                letter = NO_ANSWER
            elif letter not in {k.upper() for k in p.options}:
                letter = OTHER
            by_source[source_name(p.source)][letter] += 1
        for source, counts in by_source.items():
            out.append(LetterDistribution(run=run, source=source, counts=counts, n=sum(counts.values())))
    return out


# --------------------------------------------------------------------------- samples
@dataclass
class SampleSummary:
    run: EvalRun
    n: int
    mean: float
    sd: float
    majority_vote: float


def sample_summaries(runs: Iterable[EvalRun]) -> list[SampleSummary]:
    """Runs with several samples per item: the spread of per-sample accuracy (metrics.json)."""
    out = []
    for run in runs:
        s = run.samples
        if s and int(s.get("n", 1)) > 1:
            out.append(SampleSummary(run=run, n=int(s["n"]), mean=float(s["mean"]), sd=float(s["sd"]),
                                     majority_vote=float(s["majority_vote"])))
    return out
