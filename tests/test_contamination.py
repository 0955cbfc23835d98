"""Contamination check: exact and long n-gram overlaps between training and evaluation questions."""
import json
import random
import time

import pytest

from fgrft.data import (DataUnavailable, OverlapSettings, check_contamination, find_overlaps,
                        load_benchmark, load_source, load_training_records, overlapping_train_ids)
from fgrft.data import hub
from fgrft.data.contamination import words
from fgrft.records import Question, RecordError, TrainingRecord, question_with_options, stem_id

VIGNETTE = ("A 58-year-old man comes to the emergency department two hours after the onset of crushing "
            "substernal chest pain with nausea and diaphoresis while shovelling snow outside his house")
OPTIONS = {"A": "Left anterior descending", "B": "Right coronary", "C": "Circumflex", "D": "Left main"}


def q(text, source="MedQA_USLME_test", options=OPTIONS):
    return Question(source=source, question=text, options=dict(options), answer_idx="A",
                    answer=options["A"])


def test_exact_match_ignores_case_whitespace_punctuation_and_option_lines():
    evaluation = [q(VIGNETTE + ". Which artery is occluded?")]
    train = TrainingRecord(id="t1", source="MedQA_train", Complex_CoT="c", Response="r",
                           Question=question_with_options(
                               "  " + VIGNETTE.upper() + " which ARTERY is occluded", OPTIONS))
    (o,) = find_overlaps([train], evaluation)
    assert (o.train_id, o.eval_id, o.eval_source, o.kind, o.score) == (
        "t1", evaluation[0].id, "MedQA_USLME_test", "exact", 1.0)


def test_a_shared_long_passage_is_an_ngram_overlap_with_its_fraction():
    evaluation = [q(VIGNETTE + ". Which artery is occluded?"), q("An unrelated question about the kidney?")]
    train_text = "Earlier history first. " + VIGNETTE + ". Which vein drains the heart?"
    (o,) = find_overlaps([("t", train_text)], evaluation)
    assert o.kind == "ngram" and o.eval_id == evaluation[0].id
    v = len(words(VIGNETTE))  # "58-year-old" counts as three words
    shared = v - 13 + 1 + 1  # the vignette's 13-grams, plus the one ending in "which"
    eval_grams = v + 4 - 13 + 1  # the shorter text: "which artery is occluded"
    assert o.score == round(shared / eval_grams, 4)


def test_plain_strings_and_questions_are_accepted_as_training_items():
    evaluation = [q(VIGNETTE)]
    found = find_overlaps([VIGNETTE, q(VIGNETTE, source="MedQA_train")], evaluation)
    assert [o.train_id for o in found] == [stem_id(VIGNETTE), q(VIGNETTE).id]


def test_thresholds_are_configurable():
    evaluation = [q(VIGNETTE + " and then collapsed in the driveway before help arrived")]
    train = [("t", "Totally different start of a long question that goes on. " + VIGNETTE[:150])]
    assert find_overlaps(train, evaluation)  # default: reported
    assert not find_overlaps(train, evaluation, min_fraction=0.9)
    assert not find_overlaps(train, evaluation, min_shared=50)
    assert not find_overlaps(train, evaluation, n=40)
    assert find_overlaps(train, evaluation, OverlapSettings(n=8, min_fraction=0.1))


def test_template_ngrams_shared_by_many_eval_items_are_not_leakage():
    evaluation = [q(f"Study {i} measured outcome number {i}." + hub.PUBMEDQA_BRIDGE + f"Did thing {i} work?",
                    source="PubMedQA_test") for i in range(30)]
    train = [("t", "A new abstract about something else." + hub.PUBMEDQA_BRIDGE + "Does it help?")]
    assert find_overlaps(train, evaluation) == []
    assert len(find_overlaps(train, evaluation, max_eval_frequency=100, min_fraction=0.0)) == 30


def test_texts_shorter_than_n_words_are_only_checked_exactly():
    evaluation = [q("Pellagra is caused by deficiency of", source="MedMCQA_validation")]
    assert find_overlaps([("t", "Pellagra is caused by deficiency of what vitamin in adults")], evaluation) == []
    assert [o.kind for o in find_overlaps([("t", "pellagra is caused by deficiency of:")], evaluation)] == ["exact"]


def test_distinct_questions_do_not_overlap():
    evaluation = [q(VIGNETTE)]
    assert find_overlaps([("t", "A 4-week-old boy has projectile nonbilious vomiting after feeds "
                                "and an olive-shaped epigastric mass; which electrolyte pattern?")],
                         evaluation) == []


def test_bundled_training_data_shares_no_question_with_the_bundled_benchmark():
    benchmark = load_benchmark({"name": "sample"})
    train = (load_training_records({"name": "sample"}) + load_training_records({"name": "sample_naive"})
             + load_source({"name": "sample"}).questions)
    # not a single shared 13-gram, whatever fraction of the text it is
    assert find_overlaps(train, benchmark, OverlapSettings(min_shared=1, min_fraction=0.0)) == []
    # and the check does find them when they are there
    leaked = find_overlaps(benchmark["MedQA_sample"][:3], benchmark)
    assert [o.kind for o in leaked] == ["exact"] * 3


def test_check_contamination_reports_sources_and_overlaps():
    benchmark = load_benchmark({"name": "sample"})
    train = load_training_records({"name": "sample"}) + [benchmark["PubMedQA_sample"][0]]
    result = check_contamination(train, {"name": "sample"})
    assert result["checked_against"] == [{"source": "MedQA_sample", "items": 12},
                                         {"source": "PubMedQA_sample", "items": 12},
                                         {"source": "MedMCQA_sample", "items": 12}]
    assert [(o["eval_source"], o["kind"]) for o in result["overlaps"]] == [("PubMedQA_sample", "exact")]
    assert "not_checked" not in result
    json.dumps(result)  # goes into summary.json as is
    assert overlapping_train_ids(find_overlaps(train, benchmark)) == {benchmark["PubMedQA_sample"][0].id}


def test_benchmarks_that_cannot_be_loaded_are_not_checked_with_the_reason(tmp_path, monkeypatch):
    records = load_training_records({"name": "sample"})
    unset = check_contamination(records, {"name": "all", "dir": None})
    assert set(unset) == {"not_checked"} and "benchmark.dir" in unset["not_checked"]
    missing = check_contamination(records, {"name": "medqa", "path": str(tmp_path / "gone.json")})
    assert "gone.json" in missing["not_checked"]

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(hub, "load_dataset", offline)
    partial = check_contamination(records, [{"name": "medmcqa"}, {"name": "sample"}])
    assert len(partial["checked_against"]) == 3 and partial["overlaps"] == []
    assert "no network" in partial["not_checked"]


def test_a_malformed_benchmark_still_fails_loudly(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"MedQA_USLME_test": [{"question": "Q?"}]}))
    with pytest.raises(RecordError, match="options"):
        check_contamination([], {"name": "medqa", "path": str(path)})
    with pytest.raises(DataUnavailable):
        load_benchmark({"name": "medqa", "path": str(tmp_path / "gone.json")})


def test_thesis_scale_check_is_fast():
    """5,000 training questions against 3,273 evaluation items of realistic length."""
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(20000)]

    def text(n_words):
        return " ".join(rng.choices(vocab, k=n_words))

    evaluation = ([q(text(120)) for _ in range(1273)]
                  + [q(text(230), source="PubMedQA_test") for _ in range(1000)]
                  + [q(text(15), source="MedMCQA_validation") for _ in range(1000)])
    train = [("t%d" % i, text(130)) for i in range(5000)]
    leak = evaluation[7].question.split()
    train[10] = ("leak", " ".join(leak[:80]) + " " + text(40))
    start = time.perf_counter()
    found = find_overlaps(train, evaluation)
    elapsed = time.perf_counter() - start
    assert [(o.train_id, o.eval_id, o.kind) for o in found] == [("leak", evaluation[7].id, "ngram")]
    assert elapsed < 15, f"took {elapsed:.1f}s"
