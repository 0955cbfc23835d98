"""Tables, claim deltas, baselines, letters and paired tests on runs with known answers."""
from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from fgrft.reporting.assemble import build_report
from fgrft.reporting.claims import load_claims
from fgrft.reporting.collect import Collection
from fgrft.reporting.paired import NotComparable, compare, paired_comparisons, require_comparable
from fgrft.reporting.render import render_markdown
from fgrft.reporting.tables import baselines, build_tables, letter_distributions
from fgrft.scoring.stats import wilson_interval
from tests.test_report_claims import REPO
from tests.test_report_support import make_run, questions

CLAIMS = load_claims(REPO / "experiments" / "claims.yaml")
N_BOOT = 2000  # enough for these checks, and fast

# Small sources of unequal size, so an item-weighted avg differs from a mean of columns.
SMALL = questions("MedQA_x", 10) + questions("PubMedQA_x", 30, n_options=3) + questions("MedMCQA_x", 20)


def hits_per_source(qs, per_source: dict[str, int]):
    """Hit the first k items of each source."""
    seen: dict[str, int] = {}
    chosen = set()
    for i, q in enumerate(qs):
        seen[q.source] = seen.get(q.source, 0) + 1
        if seen[q.source] <= per_source.get(q.source, 0):
            chosen.add(i)
    return chosen


def only_table(runs):
    tables = build_tables(runs, CLAIMS)
    assert len(tables) == 1
    return next(iter(tables.values()))


def test_cells_carry_wilson_intervals_and_avg_is_item_weighted():
    run = make_run("a", SMALL, hits_per_source(SMALL, {"MedQA_x": 7, "PubMedQA_x": 12, "MedMCQA_x": 10}),
                   scorer="strict")
    (row,) = only_table([run])
    assert row.cells["MedQA"].mean == pytest.approx(0.7)
    assert row.cells["MedQA"].ci == pytest.approx(wilson_interval(7, 10))
    assert row.cells["avg"].mean == pytest.approx(29 / 60)  # not (0.7 + 0.4 + 0.5) / 3
    assert row.cells["avg"].ci == pytest.approx(wilson_interval(29, 60))
    assert (row.cells["avg"].correct, row.cells["avg"].total) == (29, 60)


def test_replicates_share_a_row_with_mean_and_sd():
    runs = [make_run(f"seed{k}", SMALL, hits_per_source(SMALL, {"MedQA_x": k}), scorer="strict")
            for k in (4, 6, 8)]
    (row,) = only_table(runs)
    cell = row.cells["MedQA"]
    assert cell.n_runs == 3 and cell.mean == pytest.approx(0.6) and cell.sd == pytest.approx(0.2)
    assert cell.ci is None  # the spread over replicates is the sd, not one run's interval


def test_runs_on_other_items_or_scorers_get_their_own_rows_and_tables():
    other_items = questions("MedQA_x", 12)
    runs = [make_run("a", SMALL, set(), scorer="strict"), make_run("b", other_items, set(), scorer="strict"),
            make_run("c", SMALL, set(), scorer="thesis")]
    tables = build_tables(runs, CLAIMS)
    assert sorted((k.scorer, len(rows)) for k, rows in tables.items()) == [("strict", 2), ("thesis", 1)]


# --------------------------------------------------------------------------- claims against runs
FULL = (questions("MedQA_USLME_test", 1273) + questions("PubMedQA_test", 1000, n_options=3)
        + questions("MedMCQA_validation", 1000))


@pytest.fixture(scope="module")
def base_full():
    hits = hits_per_source(FULL, {"MedQA_USLME_test": 750, "PubMedQA_test": 760, "MedMCQA_validation": 536})
    return make_run("base", FULL, hits, scorer="thesis")


def test_claim_deltas_for_a_full_scale_thesis_scored_run(base_full):
    report = build_report(Collection(runs=[base_full]), CLAIMS, n_resamples=N_BOOT)
    checks = {c.claim.id: c for c in report.checks if c.claim.kind == "accuracy"}
    medqa = checks["main/base/MedQA"]
    assert medqa.status == "compared"
    assert medqa.delta == pytest.approx(100 * 750 / 1273 - 58.9) and medqa.within_tolerance
    assert medqa.ours_tuple == pytest.approx((750 / 1273, 750, 1273, 750))
    pubmed = checks["main/base/PubMedQA"]
    assert pubmed.delta == pytest.approx(-0.8) and not pubmed.within_tolerance
    assert checks["main/base/avg"].delta == pytest.approx(100 * 2046 / 3273 - 62.8)
    # only the base row's claims match; the others are missing, as is the ablation gap
    assert "main/base/MedQA" not in report.missing
    assert report.missing["main/med42/MedQA"] == "no run"
    assert report.missing["ablation/fgrft_minus_naive_cot/MedQA"] == "no run"
    # the gold letters cycle A-D / A-C: not the thesis files, and the report says so
    bench = {c.claim.id: c for c in report.checks if c.claim.kind == "benchmark"}
    assert bench["benchmarks/MedQA_USLME_test/items"].within_tolerance
    assert not bench["benchmarks/MedQA_USLME_test/gold_A"].within_tolerance
    md = render_markdown(report)
    assert "Δ+0.02 ✓" in md and "Δ-0.80 ✗" in md


def test_no_delta_for_another_scorer_and_a_marked_one_for_toy_runs():
    strict = make_run("strict", SMALL, set(range(60)), scorer="strict")
    toy = make_run("toy", SMALL, set(range(60)), scorer="thesis", scale="toy")
    report = build_report(Collection(runs=[strict, toy]), CLAIMS, n_resamples=N_BOOT)
    by_scale = {(c.scale, c.claim.id): c for c in report.checks}
    assert by_scale[("full", "main/base/MedQA")].status == "not comparable"
    assert by_scale[("full", "main/base/MedQA")].delta is None
    assert by_scale[("toy", "main/base/MedQA")].status == "caveat"
    assert by_scale[("toy", "main/base/MedQA")].delta == pytest.approx(100 - 58.9)
    assert "main/base/MedQA" in report.missing  # neither is a check of the claim
    md = render_markdown(report)
    assert "Toy scale" in md and "Δ†+41.1" in md


# --------------------------------------------------------------------------- paired
def test_paired_join_goes_by_item_id():
    qs = questions("MedQA_x", 200)
    hits_a = {i for i in range(200) if i % 3 != 0}  # 133
    hits_b = {i for i in range(200) if i % 2 == 0}  # 100
    a = make_run("a", qs, hits_a, arm="fgrft")
    b = make_run("b", qs, hits_b, shuffle=True)  # predictions in reverse order
    r = compare(a, b, "MedQA", ["MedQA_x"], factor="data arm", n_resamples=N_BOOT)
    a_only, b_only = len(hits_a - hits_b), len(hits_b - hits_a)
    assert (r.n_items, r.a_only, r.b_only) == (200, a_only, b_only)
    assert r.difference == pytest.approx((len(hits_a) - len(hits_b)) / 200)
    assert r.p_value == pytest.approx(sps.binomtest(a_only, a_only + b_only, 0.5).pvalue)
    assert r.ci_low < r.difference < r.ci_high


def test_items_the_thesis_scorer_dropped_are_left_out_of_the_pair():
    qs = questions("MedQA_x", 50)
    a = make_run("a", qs, set(range(40)), empty={0, 1, 2}, arm="fgrft")
    b = make_run("b", qs, set(range(10)))
    r = compare(a, b, "MedQA", ["MedQA_x"], factor="data arm", n_resamples=N_BOOT)
    assert r.n_items == 47
    assert r.acc_a == pytest.approx(37 / 47) and r.acc_b == pytest.approx(7 / 47)


@pytest.mark.parametrize("change, message", [
    (dict(scorer="strict"), "different scorers"),
    (dict(prompt_hash="prompt-v2"), "different prompts"),
    (dict(qs=questions("MedQA_x", 21)), "different item sets"),
])
def test_mismatched_runs_are_refused_with_the_reason(change, message):
    qs = change.pop("qs", questions("MedQA_x", 20))
    a = make_run("a", questions("MedQA_x", 20), set(range(10)), arm="fgrft")
    b = make_run("b", qs, set(range(5)), **change)
    with pytest.raises(NotComparable, match=message):
        require_comparable(a, b)
    with pytest.raises(NotComparable):
        compare(a, b, "MedQA", ["MedQA_x"], factor="data arm")
    report = paired_comparisons([a, b], n_resamples=N_BOOT)
    assert not report.compared
    (refused,) = report.refused
    assert message in refused.reason and refused.factor == "data arm"


def test_a_refusal_is_not_reported_when_a_comparable_pair_of_the_same_rows_exists():
    qs = questions("MedQA_x", 20)
    runs = [make_run("base-strict", qs, set(range(5)), scorer="strict"),
            make_run("base-thesis", qs, set(range(5)), scorer="thesis"),
            make_run("fgrft-thesis", qs, set(range(12)), scorer="thesis", arm="fgrft")]
    report = paired_comparisons(runs, n_resamples=N_BOOT)
    assert not report.refused
    (r,) = report.compared
    assert (r.a_runs[0].name, r.b_runs[0].name) == ("fgrft-thesis", "base-thesis")
    assert r.difference == pytest.approx(7 / 20)


def test_pairs_are_the_runs_that_differ_in_exactly_one_factor():
    qs = questions("MedQA_x", 20)
    runs = [make_run("base", qs, set()), make_run("fgrft", qs, set(), arm="fgrft"),
            make_run("naive", qs, set(), arm="naive_cot_raw"),
            make_run("naive_fm", qs, set(), arm="naive_cot_thinking"),
            make_run("fgrft07", qs, set(), arm="fgrft", temperature=0.7),
            make_run("med42", qs, set(), model="med42_8b"),
            make_run("fgrft_toy", qs, set(), arm="fgrft", scale="toy")]
    report = paired_comparisons(runs, model_order=["llama31_8b_instruct", "med42_8b"], n_resamples=200)
    pairs = {(r.a_runs[0].name, r.b_runs[0].name, r.factor) for r in report.compared}
    assert pairs == {
        ("fgrft", "base", "data arm"), ("fgrft", "naive", "data arm"), ("fgrft", "naive_fm", "data arm"),
        ("naive_fm", "naive", "data arm"), ("naive", "base", "data arm"), ("naive_fm", "base", "data arm"),
        ("fgrft", "fgrft07", "temperature"), ("base", "med42", "model"),
    }


def test_seed_replicates_pair_by_seed_and_get_a_mean_row():
    qs = questions("MedQA_x", 40)
    runs = [make_run("f42", qs, set(range(30)), arm="fgrft", trainer_seed=42),
            make_run("f43", qs, set(range(26)), arm="fgrft", trainer_seed=43),
            make_run("n42", qs, set(range(20)), arm="naive_cot_raw", trainer_seed=42),
            make_run("n43", qs, set(range(20)), arm="naive_cot_raw", trainer_seed=43)]
    report = paired_comparisons(runs, n_resamples=200)
    assert {(r.a_runs[0].name, r.b_runs[0].name) for r in report.compared} == {("f42", "n42"), ("f43", "n43")}
    (mean,) = report.means
    assert mean.difference == pytest.approx((10 / 40 + 6 / 40) / 2)
    assert mean.sd == pytest.approx(math.sqrt(((10 - 6) / 40) ** 2 / 2))


def test_the_ablation_gap_is_checked_against_the_paired_difference():
    medqa = questions("MedQA_USLME_test", 1273)
    fgrft = make_run("fgrft", medqa, set(range(874)), arm="fgrft")
    naive = make_run("naive", medqa, set(range(822)), arm="naive_cot_raw")
    report = build_report(Collection(runs=[naive, fgrft]), CLAIMS, n_resamples=N_BOOT)
    (gap,) = [c for c in report.checks if c.claim.kind == "difference"]
    assert gap.status == "compared"
    assert gap.ours == pytest.approx(100 * 52 / 1273)  # 4.08
    assert gap.delta == pytest.approx(100 * 52 / 1273 - 4.2) and gap.within_tolerance  # 0.2 pp tolerance
    assert gap.ci[0] < gap.ours < gap.ci[1]


# --------------------------------------------------------------------------- baselines and letters
def test_chance_majority_and_letter_distributions():
    qs = questions("MedQA_x", 8, golds="AAAABBCD") + questions("PubMedQA_x", 4, n_options=3, golds="CCCA")
    always_a = make_run("a", qs, lambda i: qs[i].answer_idx == "A", scorer="strict")
    (medqa, pubmed) = sorted(baselines([always_a]), key=lambda b: b.source)
    assert (medqa.items, medqa.chance, medqa.majority_letter, medqa.majority) == (8, 0.25, "A", 0.5)
    assert (pubmed.chance, pubmed.majority_letter, pubmed.majority) == (pytest.approx(1 / 3), "C", 0.75)
    dists = {d.source: d.counts for d in letter_distributions([always_a])}
    # hits answer A; misses answer the next letter after the gold one
    assert dists["MedQA_x"] == {"A": 5, "C": 2, "D": 1}
    assert dists["PubMedQA_x"] == {"A": 4}


def test_empty_outputs_the_thesis_scorer_dropped_still_count_as_the_full_item_set():
    medqa = questions("MedQA_USLME_test", 1273)
    run = make_run("base", medqa, set(range(750)), empty={1270, 1271, 1272})
    report = build_report(Collection(runs=[run]), CLAIMS, n_resamples=N_BOOT)
    (medqa_check,) = [c for c in report.checks if c.claim.id == "main/base/MedQA"]
    assert medqa_check.status == "compared" and medqa_check.ours_tuple[2] == 1270
    limited = make_run("limited", medqa[:100], set(range(60)))
    (limited_check,) = [c for c in build_report(Collection(runs=[limited]), CLAIMS, n_resamples=N_BOOT).checks
                        if c.claim.id == "main/base/MedQA"]
    assert limited_check.status == "caveat" and "100 items, claim 1273" in limited_check.reasons


def test_several_samples_per_item_pair_on_sample_zero_and_report_their_spread():
    from fgrft.reporting.eval_runs import eval_run_from_logged
    from fgrft.records import Prediction
    from fgrft.scoring import score_predictions
    from tests.test_report_support import logged_params

    qs = questions("MedQA_x", 10)

    def sampled(hits_by_sample):
        preds = []
        for s, hits in enumerate(hits_by_sample):
            for i, q in enumerate(qs):
                letter = q.answer_idx if i in hits else "ABCD"[("ABCD".index(q.answer_idx) + 1) % 4]
                preds.append(Prediction(id=q.id, source=q.source, sample=s, question=q.question,
                                        options=dict(q.options), answer_idx=q.answer_idx, prompt="p",
                                        output=f"The answer is {letter}."))
        return score_predictions(preds, "strict", prompt="thesis", audit=False, n_resamples=500)

    a = sampled([set(range(8)), set(range(6))])
    b = sampled([set(range(3)), set(range(9))])
    params = logged_params(qs, model="llama31_8b_instruct", temperature=0.7, scorer="strict")
    run_a = eval_run_from_logged(run_id="a" * 8, name="a", experiment="e", params=params, tags={},
                                 metrics_doc=a.metrics, predictions=a.predictions,
                                 train_params={"data.format": "fgrft", "data.target_format": "thinking"})
    run_b = eval_run_from_logged(run_id="b" * 8, name="b", experiment="e", params=params, tags={},
                                 metrics_doc=b.metrics, predictions=b.predictions)
    report = build_report(Collection(runs=[run_a, run_b]), CLAIMS, n_resamples=N_BOOT)
    (pair,) = [r for r in report.paired.compared if r.column == "MedQA"]
    assert pair.difference == pytest.approx((8 - 3) / 10)  # sample 0 only
    summaries = {s.run.name: s for s in report.samples}
    assert summaries["a"].n == 2 and summaries["a"].mean == pytest.approx(0.7)
    assert summaries["a"].sd == pytest.approx(math.sqrt(2) * 0.1)
    (row_a,) = [r for r in next(iter(report.tables.values())) if r.key.arm == "fgrft"]
    assert row_a.cells["MedQA"].mean == pytest.approx(14 / 20)  # pooled over samples, as metrics.json
    assert "## Several samples per item" in render_markdown(report)


def test_legacy_paired_tests_compare_tail_readings_and_other_scorer_views():
    from fgrft.records import Prediction
    from fgrft.reporting.eval_runs import eval_run_from_logged, other_scorer_view
    from fgrft.scoring import score_predictions
    from tests.test_report_support import logged_params

    qs = questions("MedQA_x", 10)

    def run(name, head_hits, tail_hits, arm=None):
        preds = []
        for i, q in enumerate(qs):
            wrong = "ABCD"[("ABCD".index(q.answer_idx) + 1) % 4]
            head = q.answer_idx if i in head_hits else wrong
            tail = q.answer_idx if i in tail_hits else wrong
            preds.append(Prediction(id=q.id, source=q.source, sample=0, question=q.question,
                                    options=dict(q.options), answer_idx=q.answer_idx, prompt="p",
                                    output=f"The answer is {head}. Hmm. The answer is {tail}"))
        scored = score_predictions(preds, "thesis", prompt="thesis", audit=False)
        rows = [{**p.to_dict(), **b} for p, b in zip(scored.predictions, scored.by_scorer)]
        params = logged_params(qs, model="llama31_8b_instruct", temperature=0.7, scorer="thesis")
        logged = eval_run_from_logged(run_id=name * 8, name=name, experiment="e", params=params, tags={},
                                      metrics_doc=scored.metrics, predictions=scored.predictions,
                                      train_params=arm)
        return logged, other_scorer_view(logged, scored.metrics, rows)

    # Run a scores best on its head reading (8 vs 2); run b on its tail (5 vs 0).
    a, a_strict = run("a", set(range(8)), {0, 1}, {"data.format": "fgrft", "data.target_format": "thinking"})
    b, b_strict = run("b", set(), set(range(5)))
    assert a.per_source["MedQA_x"].correct == 8 and b.per_source["MedQA_x"].correct == 5
    report = build_report(Collection(runs=[a, b], rescored=[a_strict, b_strict]), CLAIMS, n_resamples=N_BOOT)
    by_scorer = {r.scorer: r for r in report.paired.compared if r.column == "MedQA"}
    # Legacy: tail against tail (2 vs 5), not each run's better reading (8 vs 5).
    assert by_scorer["thesis"].difference == pytest.approx((2 - 5) / 10)
    # Strict reads the last statement: the same outputs, the strict scorer's own numbers.
    assert a_strict.scorer == "strict" and a_strict.per_source["MedQA_x"].correct == 2
    assert by_scorer["strict"].difference == pytest.approx((2 - 5) / 10)
    md = render_markdown(report)
    assert "## Strict vs legacy scorer on the same outputs" in md and "‡ Legacy (thesis) scorer" in md
