"""The claims registry: its numbers agree with each other and with THESIS.md's rules,
the loader rejects malformed claims, and deltas/comparability follow one rule."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from fgrft.reporting.claims import (
    ClaimsError,
    Setting,
    check,
    column_of,
    default_claims_path,
    load_claims,
    missing_claims,
    parse_claims,
)

REPO = Path(__file__).resolve().parent.parent
CLAIMS = load_claims(REPO / "experiments" / "claims.yaml")
BY_ID = {c.id: c for c in CLAIMS}


def test_every_published_table_cell_is_a_claim():
    main = {(c.row, c.column) for c in CLAIMS if c.table == "main"}
    # 5 full rows x 4 columns + naive CoT's MedQA and PubMedQA (its MedMCQA and avg are "-")
    assert len(main) == 22
    assert {c.column for c in CLAIMS if c.table == "temperature"} == {"MedQA", "PubMedQA"}
    assert BY_ID["temperature/fgrft_t0.7/MedQA"].value == 67.6
    assert BY_ID["temperature/fgrft_t0.7/PubMedQA"].value == 77.9
    assert BY_ID["ablation/fgrft_minus_naive_cot/MedQA"].value == 4.2
    assert sum(c.value for c in CLAIMS if c.table == "benchmarks" and c.column == "items") == 3273
    for c in CLAIMS:
        if c.kind in ("accuracy", "difference"):
            assert c.scorer == "thesis" and c.prompt == "thesis" and c.preset and c.temperature in (0.5, 0.7)
            assert c.tolerance >= 0.1 and c.unit == "pp"


def test_tuples_follow_the_thesis_rule_and_the_printed_values():
    tuples = [c for c in CLAIMS if c.tuple]
    assert len(tuples) == 21
    for c in tuples:
        acc, head, total, tail = c.tuple
        # accuracy = head/total only when head is strictly better, else tail/total
        chosen = head if head > tail else tail
        assert acc == pytest.approx(chosen / total, abs=5e-6), c.id
        assert c.within_tolerance(100 * chosen / total), c.id  # printed value, rounded or truncated


def test_avg_is_item_weighted_over_the_three_benchmarks():
    correct, total = defaultdict(int), defaultdict(int)
    for c in CLAIMS:
        if c.table == "main" and c.tuple:
            _, head, n, tail = c.tuple
            correct[c.row] += head if head > tail else tail
            total[c.row] += n
    avgs = [c for c in CLAIMS if c.table == "main" and c.column == "avg"]
    assert len(avgs) == 5
    for c in avgs:
        assert total[c.row] == 3273
        assert c.within_tolerance(100 * correct[c.row] / total[c.row]), c.id
    # the thesis's own example: base 2,054/3,273 = 62.8, not the plain mean 63.1
    assert correct["Llama-3.1-8B-Instruct (base)"] == 2054


def test_benchmark_gold_counts_add_up_to_the_item_counts():
    for source in ("MedQA_USLME_test", "PubMedQA_test", "MedMCQA_validation"):
        golds = sum(c.value for c in CLAIMS if c.row == source and c.column.startswith("gold_"))
        assert golds == BY_ID[f"benchmarks/{source}/items"].value


@pytest.mark.parametrize("raw, message", [
    ({"claims": [{"id": "x", "kind": "accuracy", "table": "t", "row": "r", "column": "MedQA", "value": 1,
                  "tolerance": 0.1, "unit": "pp"}]}, "missing scorer"),
    ({"claims": [{"id": "x", "kind": "guess", "table": "t", "row": "r", "column": "c", "value": 1,
                  "tolerance": 0, "unit": "items"}]}, "kind 'guess'"),
    ({"claims": [{"id": "x", "kind": "benchmark", "table": "t", "row": "r", "column": "c", "value": 1,
                  "tolerance": 0, "unit": "items", "colour": "red"}]}, "unknown field"),
    ({"claims": [{"id": "x", "kind": "benchmark", "table": "t", "row": "r", "column": "c", "value": 1,
                  "tolerance": 0, "unit": "items"}] * 2}, "appears twice"),
    ({"rows": []}, "list under 'claims'"),
])
def test_malformed_claims_are_rejected_by_name(raw, message):
    with pytest.raises(ClaimsError, match=message):
        parse_claims(raw)


def test_the_default_claims_file_is_found_from_any_working_directory(tmp_path):
    assert default_claims_path(tmp_path) == REPO / "experiments" / "claims.yaml"


def test_columns_of_real_and_sample_sources():
    assert [column_of(s) for s in ("MedQA_USLME_test", "PubMedQA_test", "MedMCQA_validation",
                                   "MedQA_sample", "MedMCQA_sample", "other")] == \
        ["MedQA", "PubMedQA", "MedMCQA", "MedQA", "MedMCQA", "other"]


def test_deltas_tolerance_and_comparability():
    claim = BY_ID["main/naive_cot/MedQA"]  # printed 64.5, truncated from 64.572
    full = Setting(scale="full", scorer="thesis", prompt="thesis", items=1273)
    exact = check(claim, full, 100 * 822 / 1273, where="row", ci=(61.9, 67.2))
    assert exact.status == "compared" and exact.delta == pytest.approx(0.0717, abs=1e-3)
    assert exact.within_tolerance and exact.claim_in_ci
    off = check(claim, full, 63.0, where="row", ci=(60.3, 65.6))
    assert off.delta == pytest.approx(-1.5) and off.within_tolerance is False and off.claim_in_ci is True
    outside = check(claim, full, 60.0, where="row", ci=(57.3, 62.7))
    assert outside.claim_in_ci is False
    # another scorer: no delta at all
    strict = check(claim, Setting("full", "strict", "thesis", 1273), 70.0, where="row")
    assert strict.status == "not comparable" and strict.delta is None and "scorer strict" in strict.reasons[0]
    # toy scale or another item count: the delta shows, marked, and is not a check
    toy = check(claim, Setting("toy", "thesis", "thesis", 8), 50.0, where="row")
    assert toy.status == "caveat" and toy.delta == pytest.approx(-14.5)
    assert any("toy" in r for r in toy.reasons) and "8 items, claim 1273" in toy.reasons
    missing = missing_claims([claim, BY_ID["main/base/MedQA"]], [toy, strict])
    assert set(missing) == {"main/naive_cot/MedQA", "main/base/MedQA"}
    assert missing["main/base/MedQA"] == "no run"
    assert missing["main/naive_cot/MedQA"] == "other item counts only; other scorers only; toy runs only"
    assert missing_claims([claim], [exact, toy]) == {}
