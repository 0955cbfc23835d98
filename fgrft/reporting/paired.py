"""Paired comparisons between runs on the same items, joined by item id.

Which pairs: runs at one scale whose identity (model label, data arm,
temperature) differs in exactly one factor: FGRFT vs each naive-CoT arm and vs
the base model (data arm), 0.5 vs 0.7 (temperature), one base model vs another
(model). Runs that differ only in seeds are replicates, not a comparison.

Two runs are compared only when they used the same scorer, the same prompt
(prompt_hash) and the same items (items_hash); otherwise the pair is refused
and the reason recorded. A refusal is reported only when no comparable pair of
the same two rows exists (e.g. both were also scored with the same scorer).

Per pair and per benchmark column (and the pooled avg), the difference in
accuracy with a paired bootstrap CI and McNemar's exact p-value. Paired tests
use sample 0 of each item; items the thesis scorer dropped (empty output) in
either run are left out.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from itertools import combinations, product
from typing import Iterable

from fgrft.reporting.claims import AVG, BENCHMARK_COLUMNS, Claim, ClaimCheck, Setting, check, column_of
from fgrft.reporting.eval_runs import BASE_ARM, EvalRun, arm_name, fmt_t
from fgrft.scoring.stats import DEFAULT_RESAMPLES, mcnemar_exact, mean_sd, paired_bootstrap

# Which side of a data-arm comparison is "A" (A - B is reported): the method first, the base model last.
# A first: method over control; the project's recipe over the thesis's (difference = what it buys).
ARM_ORDER = ("fgrft", "naive_cot_thinking", "naive_cot_raw", "fgrft:fgrft_plus", "fgrft:thesis")
FACTORS = ("model", "data arm", "temperature")
FACTOR_ORDER = {"data arm": 0, "temperature": 1, "model": 2}


class NotComparable(ValueError):
    """Two runs that must not be compared item by item; the message says why."""


def comparability_problems(a: EvalRun, b: EvalRun) -> list[str]:
    problems = []
    if a.scorer != b.scorer:
        problems.append(f"different scorers ({a.scorer} vs {b.scorer})")
    if a.prompt_hash is None or a.prompt_hash != b.prompt_hash:
        problems.append(f"different prompts (prompt_hash {a.prompt_hash} vs {b.prompt_hash})")
    if a.items_hash is None or a.items_hash != b.items_hash:
        problems.append(f"different item sets (items_hash {a.items_hash} vs {b.items_hash})")
    return problems


def require_comparable(a: EvalRun, b: EvalRun) -> None:
    problems = comparability_problems(a, b)
    if problems:
        raise NotComparable(f"runs {a.short_id} and {b.short_id} are not comparable: " + "; ".join(problems))


def join_by_id(a: EvalRun, b: EvalRun, sources: Iterable[str]) -> tuple[dict, dict]:
    """Correctness of the items both runs scored, keyed (source, id), in the same key order."""
    sources = list(sources)
    oa, ob = a.outcomes(sources), b.outcomes(sources)
    keys = [k for k in oa if k in ob and oa[k] is not None and ob[k] is not None]
    return {k: oa[k] for k in keys}, {k: ob[k] for k in keys}


@dataclass
class PairedResult:
    scale: str
    scorer: str
    prompt: str | None
    factor: str
    column: str
    a_label: str
    b_label: str
    a_runs: list[EvalRun]
    b_runs: list[EvalRun]
    status: str  # compared | refused | mean of N pairs
    reason: str = ""
    n_items: int = 0
    acc_a: float | None = None
    acc_b: float | None = None
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    a_only: int | None = None
    b_only: int | None = None
    p_value: float | None = None
    sd: float | None = None  # mean rows: sd of the differences over pairs
    n_pairs: int = 1

    @property
    def comparison(self) -> str:
        """A short "A − B · what they share": only what differs before the dot."""
        a, b = self.a_runs[0], self.b_runs[0]
        if self.factor == "data arm":
            return f"{arm_name(a.arm)} − {arm_name(b.arm)} · {a.model_label}, T={fmt_t(a.temperature)}"
        if self.factor == "temperature":
            return f"T={fmt_t(a.temperature)} − T={fmt_t(b.temperature)} · {a.label}"
        return f"{a.model_label} − {b.model_label} · {arm_name(a.arm)}, T={fmt_t(a.temperature)}"

    @property
    def a_key(self) -> tuple:
        r = self.a_runs[0]
        return (r.model_label, r.arm, r.temperature)

    @property
    def b_key(self) -> tuple:
        r = self.b_runs[0]
        return (r.model_label, r.arm, r.temperature)


def compare(a: EvalRun, b: EvalRun, column: str, sources: list[str], *, factor: str,
            n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedResult:
    """A - B on the items of `sources` both runs scored; refuses runs that are not comparable."""
    require_comparable(a, b)
    xa, xb = join_by_id(a, b, sources)
    result = PairedResult(scale=a.scale, scorer=a.scorer, prompt=a.prompt, factor=factor, column=column,
                          a_label=_label(a), b_label=_label(b), a_runs=[a], b_runs=[b], status="compared",
                          n_items=len(xa))
    if not xa:
        result.status, result.reason = "refused", "the runs share no scored items"
        return result
    boot = paired_bootstrap(xa, xb, n_resamples=n_resamples, seed=seed)
    mc = mcnemar_exact(xa, xb)
    result.acc_a = sum(xa.values()) / len(xa)
    result.acc_b = sum(xb.values()) / len(xb)
    result.difference, result.ci_low, result.ci_high = boot.difference, boot.ci_low, boot.ci_high
    result.a_only, result.b_only, result.p_value = mc.a_only, mc.b_only, mc.p_value
    return result


def _label(run: EvalRun) -> str:
    return f"{run.label} T={fmt_t(run.temperature)}"


def _columns(a: EvalRun, b: EvalRun) -> list[tuple[str, list[str]]]:
    """(column, its sources) for the benchmark columns both runs have, then avg over them."""
    shared = [s for s in a.per_source if s in b.per_source]
    out = []
    for column in BENCHMARK_COLUMNS:
        sources = [s for s in shared if column_of(s) == column]
        if sources:
            out.append((column, sources))
    others = sorted({column_of(s) for s in shared} - set(BENCHMARK_COLUMNS))
    out += [(c, [s for s in shared if column_of(s) == c]) for c in others]
    if len(out) > 1:
        out.append((AVG, [s for _, sources in out for s in sources]))
    return out


# --------------------------------------------------------------------------- which pairs
def _identity(run: EvalRun) -> tuple:
    return (run.scale, run.model_label, run.arm, run.temperature)


def differing_factor(ia: tuple, ib: tuple) -> str | None:
    """The one factor two identities differ in, or None (none, several, or another scale)."""
    if ia[0] != ib[0]:
        return None
    diffs = [name for name, x, y in zip(FACTORS, ia[1:], ib[1:]) if x != y]
    return diffs[0] if len(diffs) == 1 else None


def _arm_rank(arm: str) -> tuple[int, str]:
    if arm in ARM_ORDER:
        return ARM_ORDER.index(arm), arm
    return (len(ARM_ORDER) + 1, arm) if arm == BASE_ARM else (len(ARM_ORDER), arm)


def _a_first(ia: tuple, ib: tuple, factor: str, model_order: list[str]) -> bool:
    """Whether ia is the A side: method over control, lower temperature first, thesis model order."""
    if factor == "data arm":
        return _arm_rank(ia[2]) <= _arm_rank(ib[2])
    if factor == "temperature":
        return (ia[3] if ia[3] is not None else float("inf")) <= (ib[3] if ib[3] is not None else float("inf"))
    rank = {m: i for i, m in enumerate(model_order)}
    return (rank.get(ia[1], len(rank)), ia[1]) <= (rank.get(ib[1], len(rank)), ib[1])


def _match_replicates(a_runs: list[EvalRun], b_runs: list[EvalRun]) -> list[tuple[EvalRun, EvalRun]]:
    """Seed 43 with seed 43 when both sides have replicates; otherwise every combination."""
    if len(a_runs) > 1 and len(b_runs) > 1:
        matched = [(a, b) for a, b in product(a_runs, b_runs) if a.replicate and a.replicate == b.replicate]
        if matched:
            return matched
    return list(product(a_runs, b_runs))


@dataclass
class PairedReport:
    results: list[PairedResult] = field(default_factory=list)

    @property
    def compared(self) -> list[PairedResult]:
        return [r for r in self.results if r.status == "compared"]

    @property
    def refused(self) -> list[PairedResult]:
        return [r for r in self.results if r.status == "refused"]

    @property
    def means(self) -> list[PairedResult]:
        return [r for r in self.results if r.status.startswith("mean")]


def paired_comparisons(runs: list[EvalRun], *, model_order: list[str] | None = None,
                       n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> PairedReport:
    model_order = model_order or []
    groups: dict[tuple, list[EvalRun]] = defaultdict(list)
    for run in runs:
        groups[_identity(run)].append(run)
    report = PairedReport()
    for ia, ib in combinations(sorted(groups, key=str), 2):
        factor = differing_factor(ia, ib)
        if factor is None:
            continue
        if not _a_first(ia, ib, factor, model_order):
            ia, ib = ib, ia
        pairs = list(product(groups[ia], groups[ib]))
        comparable = [(a, b) for a, b in pairs if not comparability_problems(a, b)]
        if not comparable:
            for a, b in pairs:
                report.results.append(PairedResult(
                    scale=a.scale, scorer=f"{a.scorer} / {b.scorer}" if a.scorer != b.scorer else a.scorer,
                    prompt=a.prompt, factor=factor, column="-", a_label=_label(a), b_label=_label(b),
                    a_runs=[a], b_runs=[b], status="refused", reason="; ".join(comparability_problems(a, b))))
            continue
        # Within one comparable context (scorer, prompt, items), pair replicates.
        contexts: dict[tuple, tuple[list[EvalRun], list[EvalRun]]] = defaultdict(lambda: ([], []))
        for a, b in comparable:
            ctx = contexts[(a.scorer, a.prompt_hash, a.items_hash)]
            if a not in ctx[0]:
                ctx[0].append(a)
            if b not in ctx[1]:
                ctx[1].append(b)
        for a_runs, b_runs in contexts.values():
            per_column: dict[str, list[PairedResult]] = defaultdict(list)
            for a, b in _match_replicates(a_runs, b_runs):
                for column, sources in _columns(a, b):
                    r = compare(a, b, column, sources, factor=factor, n_resamples=n_resamples, seed=seed)
                    report.results.append(r)
                    per_column[column].append(r)
            for column, results in per_column.items():
                done = [r for r in results if r.difference is not None]
                if len(done) > 1:
                    report.results.append(_mean_row(done))
    report.results.sort(key=_order)
    return report


def _order(r: PairedResult) -> tuple:
    """Full scale first; data-arm comparisons (the thesis's claims), then temperature, then models;
    benchmark columns in the thesis's order; a mean row after its pairs."""
    a, b = r.a_runs[0], r.b_runs[0]
    columns = (*BENCHMARK_COLUMNS, AVG)
    return (r.scale != "full", r.scale, r.scorer, FACTOR_ORDER.get(r.factor, 9), _arm_rank(a.arm),
            _arm_rank(b.arm), a.model_label, b.model_label, str(a.temperature), str(b.temperature),
            columns.index(r.column) if r.column in columns else len(columns), r.status.startswith("mean"))


def _mean_row(results: list[PairedResult]) -> PairedResult:
    """Mean and sd of one comparison's differences over replicate pairs (seeds)."""
    first = results[0]
    mean, sd = mean_sd([r.difference for r in results])
    return PairedResult(
        scale=first.scale, scorer=first.scorer, prompt=first.prompt, factor=first.factor, column=first.column,
        a_label=first.a_label, b_label=first.b_label,
        a_runs=[r.a_runs[0] for r in results], b_runs=[r.b_runs[0] for r in results],
        status=f"mean of {len(results)} pairs", n_items=first.n_items, difference=mean, sd=sd,
        acc_a=mean_sd([r.acc_a for r in results])[0], acc_b=mean_sd([r.acc_b for r in results])[0],
        n_pairs=len(results))


# --------------------------------------------------------------------------- difference claims
def check_difference_claims(report: PairedReport, claims: list[Claim]) -> list[ClaimCheck]:
    """Published gaps (e.g. FGRFT - naive CoT on MedQA) against our paired differences."""
    checks = []
    for claim in claims:
        if claim.kind != "difference" or claim.match is None or claim.versus is None:
            continue
        for r in report.compared:
            if r.column != claim.column:
                continue
            if claim.match.matches(*r.a_key) and claim.versus.matches(*r.b_key):
                sign = 1.0
            elif claim.match.matches(*r.b_key) and claim.versus.matches(*r.a_key):
                sign = -1.0
            else:
                continue
            low, high = sorted((sign * r.ci_low * 100, sign * r.ci_high * 100))
            setting = Setting(scale=r.scale, scorer=r.scorer, prompt=r.prompt)
            checks.append(check(claim, setting, sign * r.difference * 100, ci=(low, high),
                                where=f"{r.comparison} ({r.scale}/{r.scorer})",
                                run_ids=[r.a_runs[0].run_id, r.b_runs[0].run_id]))
    return checks
