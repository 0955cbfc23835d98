"""tables.md, tables.csv and paired.csv from a :class:`Report`.

Accuracies are printed in percent with one decimal, as the thesis prints
them; differences in percentage points (pp). The CSVs keep full precision.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Iterable

from fgrft.reporting.assemble import Report
from fgrft.reporting.claims import ClaimCheck
from fgrft.reporting.paired import PairedResult
from fgrft.reporting.eval_runs import ARM_LEGEND, RECIPES, SourceScore, fmt_t
from fgrft.reporting.tables import COLUMNS, NO_ANSWER, OTHER, Cell, Row, TableKey
from fgrft.scoring.stats import wilson_interval

TOY_WARNING = ("> **Toy scale.** Every row is the embedded smol model under a thesis model label, on the "
               "bundled sample: the accuracies, and the deltas to the thesis, mean nothing.")
CAVEAT_MARK = "†"
LEGACY_MARK = "‡"
LEGACY_NOTE = (f"{LEGACY_MARK} Legacy (thesis) scorer: each benchmark's accuracy is the better of its head and tail "
               "readings, chosen after comparing both with the gold answers, so the accuracy leans high and its "
               "CI (computed as if the reading had been fixed in advance) is too narrow. Paired tests under this "
               "scorer compare the tail reading of both runs.")


def pct(x: float | None, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def signed(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:+.{digits}f}"


def _md_table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    def esc(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return lines


# --------------------------------------------------------------------------- accuracy tables
def cell_text(cell: Cell | None, shown: ClaimCheck | None, legacy: bool = False) -> str:
    if cell is None:
        return "-"
    if cell.n_runs == 1:
        ci = cell.ci
        text = pct(cell.mean)
        if ci and not math.isnan(ci[0]):
            text += f" [{pct(ci[0])}, {pct(ci[1])}]" + (LEGACY_MARK if legacy else "")
    else:
        text = f"{pct(cell.mean)} ± {pct(cell.sd)} (n={cell.n_runs})"
    if shown is not None and shown.delta is not None:
        mark = CAVEAT_MARK if shown.status == "caveat" else ""
        ok = "✓" if shown.within_tolerance else "✗"
        text += f" Δ{mark}{signed(shown.delta, 2)} {ok}"
    return text


def accuracy_section(key: TableKey, rows: list[Row]) -> list[str]:
    lines = [f"## Accuracy (%), {key.title}", ""]
    if key.scale == "toy":
        lines += [TOY_WARNING, ""]
    legacy = key.scorer == "thesis"
    body = []
    for row in rows:
        body.append([row.label, fmt_t(row.temperature), len(row.runs),
                     *(cell_text(row.cells.get(c), row.checks.get(c), legacy) for c in COLUMNS)])
    lines += _md_table(["model + data arm", "T", "runs", *COLUMNS], body)
    if legacy:
        lines += ["", LEGACY_NOTE]
    return lines + [""]


def scorer_difference_section(report: Report) -> list[str]:
    """Per run, how the strict and legacy scorers differ item by item on the same outputs."""
    views: dict[str, dict[str, Any]] = {}
    for run in report.collection.runs + report.collection.rescored:
        if run.predictions:
            views.setdefault(run.run_id, {})[run.scorer] = run
    pairs = [(v["strict"], v["thesis"]) for v in views.values() if {"strict", "thesis"} <= set(v)]
    if not pairs:
        return []
    lines = ["## Strict vs legacy scorer on the same outputs", "",
             "Sample 0 of each item, both scorers reading the same generation (no second sampling). "
             "Legacy correctness is its chosen (head or tail) reading; an empty output counts as wrong.", ""]
    body = []
    for strict_run, thesis_run in pairs:
        s = {(p.id, p.source): bool(p.correct) for p in strict_run.predictions if p.sample == 0}
        t = {(p.id, p.source): bool(p.correct) for p in thesis_run.predictions if p.sample == 0}
        keys = s.keys() & t.keys()
        both = sum(s[k] and t[k] for k in keys)
        strict_only = sum(s[k] and not t[k] for k in keys)
        legacy_only = sum(t[k] and not s[k] for k in keys)
        unparsed = sum(p.extracted is None for p in strict_run.predictions if p.sample == 0)
        body.append([f"{strict_run.label} T={fmt_t(strict_run.temperature)} ({strict_run.short_id})",
                     strict_run.scale, len(keys), pct(sum(s[k] for k in keys) / len(keys) if keys else None),
                     pct(sum(t[k] for k in keys) / len(keys) if keys else None), both, strict_only, legacy_only,
                     len(keys) - both - strict_only - legacy_only, unparsed])
    lines += _md_table(["run", "scale", "items", "strict %", f"legacy %{LEGACY_MARK}", "both right",
                        "strict only", "legacy only", "neither", "strict unparsed"], body)
    return lines + ["", LEGACY_NOTE, ""]


BUNDLED_MARK = "§"  # not "*": Markdown would read it as emphasis
RECIPES_ORDER = {r: i for i, r in enumerate(RECIPES)}


def _pooled(run: Any) -> str:
    """A run's accuracy over all its items (sources pooled) with its 95% CI."""
    if run.overall is not None:
        score = run.overall
    else:
        correct = sum(s.correct for s in run.per_source.values())
        total = sum(s.total for s in run.per_source.values())
        # Several samples per item are not independent trials: no Wilson interval for them
        # (the same rule as the accuracy tables' pooled columns).
        low, high = wilson_interval(correct, total) if run.samples is None else (math.nan, math.nan)
        score = SourceScore("overall", correct, total, low, high)
    return f"{pct(score.accuracy)} [{pct(score.ci_low)}, {pct(score.ci_high)}] ({score.correct}/{score.total})"


def recipe_section(report: Report) -> list[str]:
    """The recipe ablation: one row per arm, the same outputs read by both scorers."""
    views: dict[str, dict[str, Any]] = {}
    for run in report.collection.runs + report.collection.rescored:
        if run.recipe:
            views.setdefault(run.run_id, {})[run.scorer] = run
    if not views:
        return []
    lines = ["## Stage 1 recipes: thesis vs fgrft_plus", "",
             "Each arm is fine-tuned on the records its Stage 1 recipe wrote, restricted to the questions both "
             "recipes kept, and evaluated once; both scorers read the same outputs. Paired differences "
             "(fgrft_plus − thesis) are in the paired section.", ""]
    body, padded = [], []
    for by_scorer in sorted(views.values(), key=lambda v: (next(iter(v.values())).scale,
                                                           RECIPES_ORDER.get(next(iter(v.values())).recipe, 9))):
        run = next(iter(by_scorer.values()))
        label = run.label + (BUNDLED_MARK if run.bundled_added else "")
        if run.bundled_added:
            padded.append(run)
        body.append([run.scale, label, run.recipe, fmt_t(run.temperature),
                     "-" if run.shared_ids is None else run.shared_ids, run.bundled_added or "no",
                     *(_pooled(by_scorer[sc]) if sc in by_scorer else "-" for sc in ("strict", "thesis")),
                     run.short_id])
    lines += _md_table(["scale", "model + data arm", "recipe", "T", "shared question ids", "bundled records added",
                        "strict % [95% CI] (correct/total)", f"legacy % [95% CI]{LEGACY_MARK} (correct/total)",
                        "run"], body)
    if padded:
        lines += ["", f"{BUNDLED_MARK} Bundled records added: the arm had fewer shared records than min_records, so "
                  "it also trained on the bundled FGRFT records (only on them when the recipes shared no question); its row "
                  "does not measure its recipe alone."]
    return lines + ["", LEGACY_NOTE, ""]


# --------------------------------------------------------------------------- claims
def _tuple_text(t: tuple | None) -> str:
    return "-" if t is None else f"[{t[0]:.5f}, {t[1]}, {t[2]}, {t[3]}]"


def _check_value(c: ClaimCheck, v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if c.claim.unit == "pp" else f"{v:g}"


def _yes_no(v: bool | None) -> str:
    return "-" if v is None else ("yes" if v else "no")


def claims_section(report: Report) -> list[str]:
    lines = ["## Claims: thesis vs ours", ""]
    if not report.claims:
        return lines + ["No claims file was found: no deltas to the thesis.", ""]
    lines += [f"From `{report.claims_path}` ({len(report.claims)} claims). Status: compared (a fair check), "
              "caveat (toy scale or another item count), not comparable (another scorer or prompt: no delta), "
              "no run. Tuples are [accuracy, head_correct, total, tail_correct].", ""]
    order = {"compared": 0, "caveat": 1, "not comparable": 2, "no run": 3}
    # Benchmark-file claims are summarised under the baselines.
    checks = sorted((c for c in report.checks if c.claim.kind != "benchmark"),
                    key=lambda c: (order[c.status], c.scale != "full", c.claim.id))
    body = []
    for c in checks:
        ci = "-" if c.ci is None else f"[{c.ci[0]:.1f}, {c.ci[1]:.1f}]"
        body.append([c.claim.id, _check_value(c, c.claim.value), _check_value(c, c.ours), ci,
                     signed(c.delta, 2) if c.delta is not None else "-", _yes_no(c.within_tolerance),
                     _yes_no(c.claim_in_ci),
                     f"{_tuple_text(c.claim.tuple)} / {_tuple_text(c.ours_tuple)}" if c.claim.tuple else "-",
                     c.status + (f": {'; '.join(c.reasons)}" if c.reasons else ""), c.where])
    if body:
        lines += _md_table(["claim", "thesis", "ours", "95% CI", "Δ", "within tol.", "thesis in CI",
                            "tuple thesis / ours", "status", "where"], body)
        lines.append("")
    lines += ["### Claims with no comparable full-scale run", ""]
    if report.missing:
        by_reason: dict[str, list[str]] = {}
        for cid, why in report.missing.items():
            by_reason.setdefault(why, []).append(cid)
        lines += [f"- {why} ({len(ids)}): " + ", ".join(f"`{i}`" for i in ids) for why, ids in by_reason.items()]
    else:
        lines.append("None: every claim is checked by a comparable run.")
    return lines + [""]


# --------------------------------------------------------------------------- paired
def _run_ids(runs: list) -> str:
    return ", ".join(r.short_id for r in runs)


def paired_section(report: Report) -> list[str]:
    lines = ["## Paired comparisons (same items, joined by id)", ""]
    results = [r for r in report.paired.results if r.status != "refused"]
    if results:
        lines += ["A − B in pp with a paired bootstrap 95% CI and McNemar's exact p (discordant items: "
                  "A only / B only). Sample 0 of each item; items the thesis scorer dropped in either run "
                  "are left out. Mean rows average the differences over replicate pairs (± sd).", ""]
        body = []
        for r in results:
            if r.status == "compared":
                diff = f"{signed(r.difference * 100)} [{signed(r.ci_low * 100)}, {signed(r.ci_high * 100)}]"
                disc = f"{r.a_only} / {r.b_only}"
                p = f"{r.p_value:.3g}"
            else:
                diff = f"{signed(r.difference * 100)} ± {pct(r.sd)} ({r.status})"
                disc, p = "-", "-"
            body.append([r.comparison, f"{r.scale}/{r.scorer}", r.column, r.n_items,
                         pct(r.acc_a), pct(r.acc_b), diff, disc, p, f"{_run_ids(r.a_runs)} vs {_run_ids(r.b_runs)}"])
        lines += _md_table(["A − B", "scale/scorer", "column", "items", "A %", "B %",
                            "A − B pp [95% CI]", "A only / B only", "McNemar p", "runs A vs B"], body)
        lines.append("")
    else:
        lines += ["No pair of runs differs in exactly one of model, data arm or temperature.", ""]
    refused = report.paired.refused
    if refused:
        lines += ["### Refused (not compared)", ""]
        lines += [f"- {r.a_label} ({_run_ids(r.a_runs)}) vs {r.b_label} ({_run_ids(r.b_runs)}), "
                  f"{r.scale}: {r.reason}" for r in refused]
        lines.append("")
    return lines


# --------------------------------------------------------------------------- baselines, letters, samples
def baselines_section(report: Report) -> list[str]:
    lines = ["## Baselines per benchmark", ""]
    if not report.baselines:
        return lines + ["No predictions were read: no baselines.", ""]
    lines += ["Chance = expected accuracy of a uniform guess; majority = always answering the most common gold "
              "letter (computed on the test items themselves, so a floor, not a model).", ""]
    body = []
    for b in report.baselines:
        options = ", ".join(f"{k}×{n}" if len(b.options) > 1 else str(k) for k, n in sorted(b.options.items()))
        gold = " ".join(f"{k}{b.gold[k]}" for k in b.letters)
        conflicts = f" ({b.conflicts} items with conflicting gold letters!)" if b.conflicts else ""
        body.append([b.scale, b.source, b.items, options, pct(b.chance),
                     f"{pct(b.majority)} ({b.majority_letter})", gold + conflicts])
    lines += _md_table(["scale", "source", "items", "options", "chance %", "majority %", "gold letters"], body)
    bench = [c for c in report.checks if c.claim.kind == "benchmark"]
    if bench:
        wrong = [c for c in bench if not c.within_tolerance]
        sources = sorted({c.claim.row for c in bench})
        lines.append("")
        if wrong:
            lines += ["Benchmark files differ from the thesis's: " + "; ".join(
                f"{c.claim.id} ours {c.ours:g} vs {c.claim.value:g}" for c in wrong)]
        else:
            lines.append(f"Items, options and gold-letter counts match the thesis files for {', '.join(sources)}.")
    return lines + [""]


def letters_section(report: Report) -> list[str]:
    lines = ["## Answer-letter distributions (% of items, sample 0)", ""]
    if not report.letters:
        return lines + ["No predictions were read.", ""]
    lines += [f"`{NO_ANSWER}`: no answer extracted (strict: unparsed; thesis: an empty output, dropped); "
              f"`{OTHER}`: a letter outside the options.", ""]
    gold_by = {(b.scale, b.source): b for b in report.baselines}
    for (scale, source) in sorted({(d.run.scale, d.source) for d in report.letters},
                                  key=lambda k: (k[0] != "full", k)):
        dists = [d for d in report.letters if d.run.scale == scale and d.source == source]
        gold = gold_by.get((scale, source))
        letters = sorted({k for d in dists for k in d.counts if k not in (NO_ANSWER, OTHER)}
                         | set(gold.gold if gold else ()))
        header = ["run", "scorer", *letters, OTHER, NO_ANSWER]
        body = []
        if gold:
            body.append(["**gold**", "", *(pct(gold.gold.get(k, 0) / gold.items) for k in letters), "", ""])
        for d in dists:
            body.append([f"{d.run.label} T={fmt_t(d.run.temperature)} ({d.run.short_id})", d.run.scorer,
                         *(pct(d.counts.get(k, 0) / d.n) for k in [*letters, OTHER, NO_ANSWER])])
        lines += [f"### {source} ({scale})", ""] + _md_table(header, body) + [""]
    return lines


def samples_section(report: Report) -> list[str]:
    if not report.samples:
        return []
    lines = ["## Several samples per item", "", "Per-sample overall accuracy across samples (sd with n − 1) "
             "and the per-item majority vote.", ""]
    body = [[f"{s.run.label} T={fmt_t(s.run.temperature)} ({s.run.short_id})", s.run.scorer, s.n,
             pct(s.mean), pct(s.sd, 2), pct(s.majority_vote)] for s in report.samples]
    return lines + _md_table(["run", "scorer", "samples", "mean %", "sd (pp)", "majority vote %"], body) + [""]


def runs_section(report: Report) -> list[str]:
    col = report.collection
    lines = ["## Runs read", ""]
    body = []
    for r in col.runs:
        body.append([f"{r.name} ({r.short_id})", r.experiment, r.label, fmt_t(r.temperature), r.scale,
                     r.scorer, r.prompt, str(r.items_hash)[:10], str(r.prompt_hash)[:10],
                     ", ".join(r.per_source), r.replicate or "-", "; ".join(r.notes) or "-"])
    if body:
        lines += _md_table(["run", "experiment", "row", "T", "scale", "scorer", "prompt", "items_hash",
                            "prompt_hash", "sources", "seeds", "notes"], body)
    else:
        lines.append("No evaluation runs were found.")
    if col.skipped:
        lines += ["", "### Skipped runs", ""] + [f"- {who}: {why}" for who, why in col.skipped]
    if col.missing_experiments:
        lines += ["", f"Experiments not found: {', '.join(col.missing_experiments)}."]
    lines += ["", *(f"Note: {n}" for n in col.notes)] if col.notes else []
    return lines + [""]


def render_markdown(report: Report) -> str:
    col = report.collection
    toy = any(r.scale == "toy" for r in col.runs)
    lines = ["# FGRFT report: the thesis tables rebuilt from runs", "",
             f"Experiments read: {', '.join(col.experiments) or 'none'}"
             + (f"; sweep `{report.sweep_id}`" if report.sweep_id else "")
             + f". Evaluation runs: {len(col.runs)} read, {len(col.skipped)} skipped.", ""]
    if toy:
        lines += [TOY_WARNING.replace("Every row", "Toy-scale tables are marked; in them every row"), ""]
    if report.tables:
        lines += ["Accuracy tables: one per scale, scorer and prompt (their numbers measure different things). "
                  "Cells: accuracy [95% CI] of one run, or mean ± sd over replicate runs (n); "
                  "Δ = ours − thesis in pp where the claims registry has this cell "
                  f"(✓ within its tolerance; {CAVEAT_MARK} toy scale or another item count: not a check). "
                  "avg is item-weighted over the three benchmarks, as the thesis's.", "", ARM_LEGEND, ""]
    if not col.runs:
        lines += ["**No evaluation runs were found**, so there is nothing to tabulate. "
                  "Run an evaluation first (see experiments/README.md).", ""]
    for key, rows in report.tables.items():
        lines += accuracy_section(key, rows)
    for section in (recipe_section, claims_section, paired_section, scorer_difference_section, baselines_section,
                    letters_section, samples_section, runs_section):
        lines += section(report)
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- CSV
TABLE_FIELDS = ["section", "scale", "scorer", "prompt", "row", "model_label", "arm", "temperature", "column",
                "unit", "value", "ci_low", "ci_high", "sd", "n_runs", "correct", "total", "claim_id", "thesis",
                "delta", "within_tolerance", "status", "run_ids", "note"]
PAIRED_FIELDS = ["scale", "scorer", "prompt", "factor", "column", "a", "b", "status", "reason", "n_items",
                 "acc_a", "acc_b", "difference", "ci_low", "ci_high", "sd", "n_pairs", "a_only", "b_only",
                 "p_value", "a_runs", "b_runs"]


def _accuracy_records(report: Report) -> Iterable[dict[str, Any]]:
    for key, rows in report.tables.items():
        for row in rows:
            for column, cell in row.cells.items():
                shown = row.checks.get(column)
                yield dict(
                    section="accuracy", unit="fraction", scale=key.scale, scorer=key.scorer, prompt=key.prompt,
                    row=row.label, model_label=row.key.model_label, arm=row.key.arm, temperature=row.temperature,
                    column=column, value=cell.mean, ci_low=cell.ci[0] if cell.ci else None,
                    ci_high=cell.ci[1] if cell.ci else None, sd=cell.sd, n_runs=cell.n_runs,
                    correct=cell.correct, total=cell.total, run_ids=" ".join(cell.run_ids),
                    claim_id=shown.claim.id if shown else None,
                    thesis=shown.claim.value / 100 if shown else None,
                    delta=shown.delta / 100 if shown else None,
                    within_tolerance=shown.within_tolerance if shown else None,
                    status=shown.status if shown else None)


def _baseline_records(report: Report) -> Iterable[dict[str, Any]]:
    for b in report.baselines:
        common = dict(unit="fraction", scale=b.scale, total=b.items)
        yield dict(common, section="baseline", row="chance", column=b.source, value=b.chance)
        yield dict(common, section="baseline", row=f"majority ({b.majority_letter})", column=b.source,
                   value=b.majority)
        for letter in b.letters:
            yield dict(common, section="letters", row="gold", column=f"{b.source}:{letter}",
                       value=b.gold[letter] / b.items)
    for d in report.letters:
        for letter, n in sorted(d.counts.items()):
            yield dict(section="letters", unit="fraction", scale=d.run.scale, scorer=d.run.scorer,
                       row=d.run.label, model_label=d.run.model_label, arm=d.run.arm,
                       temperature=d.run.temperature, column=f"{d.source}:{letter}", value=n / d.n, total=d.n,
                       run_ids=d.run.run_id)


def _claim_records(report: Report) -> Iterable[dict[str, Any]]:
    for c in report.checks:
        yield dict(section="claim", unit=c.claim.unit, scale=c.scale, scorer=c.claim.scorer, row=c.where,
                   column=c.claim.column, value=c.ours, ci_low=c.ci[0] if c.ci else None,
                   ci_high=c.ci[1] if c.ci else None, claim_id=c.claim.id, thesis=c.claim.value, delta=c.delta,
                   within_tolerance=c.within_tolerance, status=c.status, run_ids=" ".join(c.run_ids),
                   note="; ".join(c.reasons))
    units = {c.id: c.unit for c in report.claims}
    for cid, why in report.missing.items():
        yield dict(section="claim", unit=units[cid], claim_id=cid, status="missing", note=why)


def table_records(report: Report) -> list[dict[str, Any]]:
    """One long table: accuracy cells, baselines and letter shares as fractions (unit "fraction"),
    claim checks in the claim's own unit (pp, items)."""
    return [*_accuracy_records(report), *_baseline_records(report), *_claim_records(report)]


def paired_records(results: Iterable[PairedResult]) -> list[dict[str, Any]]:
    return [dict(scale=r.scale, scorer=r.scorer, prompt=r.prompt, factor=r.factor, column=r.column,
                 a=r.a_label, b=r.b_label, status=r.status, reason=r.reason, n_items=r.n_items,
                 acc_a=r.acc_a, acc_b=r.acc_b, difference=r.difference, ci_low=r.ci_low, ci_high=r.ci_high,
                 sd=r.sd, n_pairs=r.n_pairs, a_only=r.a_only, b_only=r.b_only, p_value=r.p_value,
                 a_runs=" ".join(x.run_id for x in r.a_runs), b_runs=" ".join(x.run_id for x in r.b_runs))
            for r in results]


def write_csv(path: Path, fields: list[str], records: Iterable[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="raise")
        writer.writeheader()
        for rec in records:
            writer.writerow({k: ("" if rec.get(k) is None else rec.get(k)) for k in fields})


def write_all(report: Report, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tables.md").write_text(render_markdown(report), encoding="utf-8")
    write_csv(out_dir / "tables.csv", TABLE_FIELDS, table_records(report))
    write_csv(out_dir / "paired.csv", PAIRED_FIELDS, paired_records(report.paired.results))
    return [out_dir / n for n in ("tables.md", "tables.csv", "paired.csv")]

