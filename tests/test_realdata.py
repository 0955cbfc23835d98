"""The real thesis benchmark files (skipped unless FGRFT_BENCHMARK_DIR names them)."""
import collections

import pytest

from fgrft.data import (benchmark_items, check_contamination, find_overlaps, load_benchmark,
                        load_source, load_training_records)
from fgrft.data import hub
from fgrft.data.contamination import exact_key

pytestmark = pytest.mark.realdata


def test_all_three_sources_with_their_sizes_and_unique_ids(benchmark_dir):
    b = load_benchmark({"name": "all", "dir": benchmark_dir})
    assert {k: len(v) for k, v in b.items()} == {"MedQA_USLME_test": 1273, "PubMedQA_test": 1000,
                                                 "MedMCQA_validation": 1000}
    ids = [q.id for q in benchmark_items(b)]
    assert len(set(ids)) == 3273


def test_gold_letter_counts_match_the_thesis(benchmark_dir):
    b = load_benchmark({"name": "all", "dir": benchmark_dir})
    counts = {k: dict(collections.Counter(q.answer_idx for q in v)) for k, v in b.items()}
    assert counts == {"MedQA_USLME_test": {"A": 353, "B": 309, "C": 346, "D": 265},
                      "PubMedQA_test": {"A": 552, "B": 338, "C": 110},
                      "MedMCQA_validation": {"A": 330, "B": 254, "C": 217, "D": 199}}


def test_medmcqa_near_duplicates_keep_distinct_ids(benchmark_dir):
    items = load_benchmark({"name": "medmcqa", "dir": benchmark_dir})["MedMCQA_validation"]
    for a, b in [(50, 651), (187, 286)]:
        first, second = items[a], items[b]
        assert first.id != second.id
        assert first.question != second.question
        # the stems differ only in punctuation: the same words in the same order
        assert exact_key(first.question) == exact_key(second.question)
        assert first.options != second.options


def test_single_source_options_read_the_same_items_as_all(benchmark_dir):
    everything = load_benchmark({"name": "all", "dir": benchmark_dir})
    for name, key in [("medqa", "MedQA_USLME_test"), ("pubmedqa", "PubMedQA_test"),
                      ("medmcqa", "MedMCQA_validation")]:
        one = load_benchmark({"name": name, "dir": benchmark_dir, "limit": 20})
        assert one == {key: everything[key][:20]}


def test_pubmedqa_questions_have_the_shape_the_hub_converter_builds(benchmark_dir):
    items = load_benchmark({"name": "pubmedqa", "dir": benchmark_dir})["PubMedQA_test"]
    assert all(q.question.count(hub.PUBMEDQA_BRIDGE) == 1 for q in items)
    assert all(q.options == hub.PUBMEDQA_OPTIONS for q in items)


def test_bundled_training_data_does_not_overlap_the_real_benchmarks(benchmark_dir):
    train = load_training_records({"name": "sample"}) + load_source({"name": "sample"}).questions
    result = check_contamination(train, {"name": "all", "dir": benchmark_dir})
    assert result["overlaps"] == []
    assert [c["items"] for c in result["checked_against"]] == [1273, 1000, 1000]


def test_each_real_item_finds_itself(benchmark_dir):
    b = load_benchmark({"name": "all", "dir": benchmark_dir, "limit": 50})
    found = find_overlaps(benchmark_items(b), b)
    assert {(o.train_id, o.eval_id) for o in found if o.kind == "exact"} >= \
        {(q.id, q.id) for q in benchmark_items(b)}
