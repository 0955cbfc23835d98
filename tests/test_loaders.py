"""Loaders: benchmarks, Stage 1 sources, training sets, hub conversion, seeded draws.

Everything here runs on bundled fixtures, files written to tmp_path and
in-memory hub rows; nothing reaches the network.
"""
import collections
import json
import logging
import os
import random

import datasets
import pytest

from fgrft.data import (DataUnavailable, assistant_target, bundled_path, draw, load_benchmark,
                        load_source, load_training_records, select_records, split_conclusion,
                        split_question_text)
from fgrft.data import hub
from fgrft.records import (Question, RecordError, TrainingRecord, item_id, question_with_options,
                           stem_id, write_jsonl)


def item(question="Which drug is first-line?", options=None, answer_idx="B", **extra):
    options = options or {"A": "Aspirin", "B": "Metformin", "C": "Insulin", "D": "Statin"}
    return {"question": question, "options": options, "answer_idx": answer_idx,
            "answer": options.get(answer_idx, "?"), **extra}


def items(n, prefix="Question"):
    return [item(f"{prefix} number {i}?") for i in range(n)]


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def thesis_dir(tmp_path):
    """A directory shaped like the thesis benchmark files, with small made-up items."""
    d = tmp_path / "benchmarks"
    d.mkdir()
    write_json(d / "eval_data_clinical.json", {"MedQA_USLME_test": items(5, "MedQA"),
                                               "PubMedQA_test": items(4, "PubMedQA")})
    write_json(d / "eval_data_medmcqa.json", {"MedMCQA_validation": items(3, "MedMCQA")})
    return d


# --- benchmarks ------------------------------------------------------------------------

def test_sample_benchmark_has_three_shapes_with_varied_gold_letters():
    b = load_benchmark({"name": "sample"})
    assert list(b) == ["MedQA_sample", "PubMedQA_sample", "MedMCQA_sample"]
    for source, qs in b.items():
        assert len(qs) == 12
        assert all(q.source == source for q in qs)
        assert len(collections.Counter(q.answer_idx for q in qs)) >= 3, source
        assert len({q.id for q in qs}) == 12
    assert all(len(q.options) == 4 for q in b["MedQA_sample"] + b["MedMCQA_sample"])
    assert all(q.options == {"A": "yes", "B": "no", "C": "maybe"} for q in b["PubMedQA_sample"])
    assert all(hub.PUBMEDQA_BRIDGE in q.question for q in b["PubMedQA_sample"])


def test_sample_benchmark_loads_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sum(map(len, load_benchmark({"name": "sample"}).values())) == 36
    assert load_benchmark({"name": "sample", "file_key": "MedMCQA_sample"}).keys() == {"MedMCQA_sample"}


def test_all_reads_the_three_sources_from_dir_in_file_order(thesis_dir):
    b = load_benchmark({"name": "all", "dir": str(thesis_dir)})
    assert {k: len(v) for k, v in b.items()} == {"MedQA_USLME_test": 5, "PubMedQA_test": 4,
                                                 "MedMCQA_validation": 3}
    assert [q.question for q in b["MedQA_USLME_test"]][:2] == ["MedQA number 0?", "MedQA number 1?"]


def test_all_without_dir_is_unavailable_with_a_clear_message():
    with pytest.raises(DataUnavailable, match="benchmark.dir"):
        load_benchmark({"name": "all", "dir": None})


def test_single_source_reads_its_key_from_the_thesis_dir(thesis_dir):
    assert list(load_benchmark({"name": "pubmedqa", "dir": str(thesis_dir)})) == ["PubMedQA_test"]
    b = load_benchmark({"name": "medmcqa", "dir": str(thesis_dir), "limit": 2})
    assert [q.question for q in b["MedMCQA_validation"]] == ["MedMCQA number 0?", "MedMCQA number 1?"]


def test_limit_keeps_the_first_n_per_source(thesis_dir):
    b = load_benchmark({"name": "all", "dir": str(thesis_dir)}, limit=2)
    assert {k: len(v) for k, v in b.items()} == {"MedQA_USLME_test": 2, "PubMedQA_test": 2,
                                                 "MedMCQA_validation": 2}
    with pytest.raises(ValueError, match="limit"):
        load_benchmark({"name": "sample", "limit": -1})


def test_path_wins_over_dir_and_file_key_picks_the_source(thesis_dir, tmp_path):
    path = write_json(tmp_path / "mine.json", {"MedQA_USLME_test": items(2), "Other": items(1, "O")})
    b = load_benchmark({"name": "medqa", "path": str(path), "dir": str(thesis_dir)})
    assert list(b) == ["MedQA_USLME_test"] and len(b["MedQA_USLME_test"]) == 2
    b = load_benchmark({"name": "medqa", "path": str(path), "file_key": "Other"})
    assert list(b) == ["Other"]
    with pytest.raises(RecordError, match="no source 'Nope'.*holds"):
        load_benchmark({"name": "medqa", "path": str(path), "file_key": "Nope"})


def test_a_single_source_file_is_read_whatever_its_key(tmp_path):
    path = write_json(tmp_path / "x.json", {"MyMedQA": items(3)})
    assert list(load_benchmark({"name": "medqa", "path": str(path)})) == ["MyMedQA"]


def test_path_accepts_a_json_list_and_jsonl_of_items(tmp_path):
    listed = write_json(tmp_path / "list.json", items(3))
    assert list(load_benchmark({"name": "medqa", "path": str(listed)})) == ["MedQA_USLME_test"]
    jsonl = tmp_path / "items.jsonl"
    write_jsonl(jsonl, [item("a?", source="PubMedQA_test"), item("b?", source="PubMedQA_test")])
    b = load_benchmark({"name": "pubmedqa", "path": str(jsonl)})
    assert [q.question for q in b["PubMedQA_test"]] == ["a?", "b?"]
    # a path without an option name: every source of the file
    assert len(load_benchmark({"path": str(listed)})["list"]) == 3


def test_path_accepts_the_projects_predictions_jsonl_one_item_per_sample(tmp_path):
    q1 = Question("MedQA_sample", "First?", {"A": "x", "B": "y"}, "A", "x")
    q2 = Question("MedQA_sample", "Second?", {"A": "x", "B": "y"}, "B", "y")
    rows = [dict(q.to_dict(), sample=s, prompt="p", output="o", extracted=None, correct=False)
            for q in (q1, q2) for s in (0, 1)]
    path = tmp_path / "predictions.jsonl"
    write_jsonl(path, rows)
    b = load_benchmark({"name": "medqa", "path": str(path)})
    assert b == {"MedQA_sample": [q1, q2]}


def test_path_accepts_a_thesis_prediction_file_without_answer_text(tmp_path):
    rows = [{"question": "Q?", "options": {"A": "yes", "B": "no"}, "answer_idx": "B",
             "output": "no", "source": "PubMedQA_test"}]
    path = write_json(tmp_path / "preds.json", rows)
    (q,) = load_benchmark({"name": "pubmedqa", "path": str(path)})["PubMedQA_test"]
    assert q.answer == "no"


def test_hub_is_used_when_neither_path_nor_dir_is_set(monkeypatch):
    calls = []

    def fake(hub_id, config=None, split=None, cache_dir=None):
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list([MEDQA_HUB_ROW])

    monkeypatch.setattr(hub, "load_dataset", fake)
    b = load_benchmark({"name": "medqa"})
    assert calls == [(hub.MEDQA_HUB, None, "test")]
    (q,) = b["MedQA_USLME_test"]
    assert q.answer_idx == "C" and q.options["C"] == "Ceftriaxone"


def test_an_empty_hub_id_switches_the_hub_off():
    with pytest.raises(DataUnavailable, match="set benchmark.path, benchmark.dir or benchmark.hub_id"):
        load_benchmark({"name": "medqa", "path": None, "dir": None, "hub_id": ""})


def test_unknown_benchmark_name_lists_the_options():
    with pytest.raises(ValueError, match="all, medmcqa, medqa, pubmedqa, sample"):
        load_benchmark({"name": "usmle"})


def test_missing_file_and_missing_dir_are_unavailable(tmp_path):
    with pytest.raises(DataUnavailable, match="not found"):
        load_benchmark({"name": "medqa", "path": str(tmp_path / "nope.json")})
    with pytest.raises(DataUnavailable, match="not a directory"):
        load_benchmark({"name": "all", "dir": str(tmp_path / "nodir")})
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataUnavailable, match="eval_data_clinical.json"):
        load_benchmark({"name": "medqa", "dir": str(tmp_path / "empty_dir")})


# --- bad input: one clear RecordError naming file, record and field ---------------------

def _bad(tmp_path, rows, key="MedQA_USLME_test"):
    path = write_json(tmp_path / "bad.json", {key: rows})
    with pytest.raises(RecordError) as info:
        load_benchmark({"name": "medqa", "path": str(path)})
    return str(info.value), info.value


@pytest.mark.parametrize("broken, field, message", [
    (lambda r: r.pop("question"), "question", "missing"),
    (lambda r: r.update(question=""), "question", "empty text"),
    (lambda r: r.update(question=7), "question", "expected text"),
    (lambda r: r.pop("options"), "options", "missing"),
    (lambda r: r.update(options="A. x"), "options", "expected {letter: text}"),
    (lambda r: r.update(options={"A": "x"}), "options", "at least 2"),
    (lambda r: r.update(options={"A": "x", "C": "y"}), "options", "without gaps"),
    (lambda r: r["options"].update(C=3), "options.C", "expected text"),
    (lambda r: r["options"].update(D=" "), "options.D", "empty text"),
    (lambda r: r.pop("answer_idx"), "answer_idx", "missing"),
    (lambda r: r.update(answer_idx="E"), "answer_idx", "not among the options ABCD"),
    (lambda r: r.update(answer_idx=1), "answer_idx", "expected a letter"),
    (lambda r: r.update(answer="Insulin"), "answer", "differs from option B"),
])
def test_a_bad_item_names_file_record_and_field(tmp_path, broken, field, message):
    rows = items(3)
    broken(rows[2])
    text, error = _bad(tmp_path, rows)
    assert error.index == 2 and error.field == field
    assert "bad.json#MedQA_USLME_test" in text and "record 2" in text and f"'{field}'" in text
    assert message in text


def test_duplicate_items_in_a_benchmark_are_an_error(tmp_path):
    rows = items(3) + [item("Question number 1?")]
    text, error = _bad(tmp_path, rows)
    assert error.index == 3 and "same question and options as record 1" in text


def test_near_duplicates_with_different_options_keep_distinct_ids(tmp_path):
    a = item("Skeletal muscles", {"A": "x", "B": "y"}, "A")
    b = item("Skeletal muscles:", {"A": "x", "B": "z"}, "A")
    path = write_json(tmp_path / "x.json", {"MedMCQA_validation": [a, b]})
    qs = load_benchmark({"name": "medmcqa", "path": str(path)})["MedMCQA_validation"]
    assert qs[0].id != qs[1].id


def test_the_same_item_in_two_sources_is_an_error(tmp_path):
    path = write_json(tmp_path / "x.json", {"One": items(2), "Two": items(1)})
    with pytest.raises(RecordError, match="also in source 'One'"):
        load_benchmark({"path": str(path)})


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("   \n", "the file is empty"),
    ('{"MedQA_USLME_test": [', "broken JSON at line 1"),
    ("[]", "empty list"),
    ("{}", "empty object"),
    ('{"MedQA_USLME_test": {"question": "x"}}', "expected a list of records"),
    ('{"MedQA_USLME_test": []}', "no records under this key"),
    ('"just text"', "expected a JSON object or list"),
    ('[1, 2]', "record 0: expected a JSON object"),
])
def test_bad_files_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(RecordError, match=message) as info:
        load_benchmark({"name": "medqa", "path": str(path)})
    assert "bad.json" in str(info.value)


def test_broken_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(item()) + "\n{oops\n")
    with pytest.raises(RecordError, match=r"bad\.jsonl: record 1: broken JSON on line 2"):
        load_benchmark({"name": "medqa", "path": str(path)})


def test_jsonl_content_in_a_json_file_is_read(tmp_path):
    path = tmp_path / "lines.json"
    path.write_text("\n".join(json.dumps(r) for r in items(2)))
    assert len(load_benchmark({"name": "medqa", "path": str(path)})["MedQA_USLME_test"]) == 2


# --- hub conversion (in-memory rows) ---------------------------------------------------

MEDQA_HUB_ROW = {
    "question": "A 30-year-old man has a stiff neck. Which drug is first-line?",
    "options": {"A": "Fluconazole", "B": "Acyclovir", "C": "Ceftriaxone", "D": "Doxycycline"},
    "answer_idx": "C", "answer": "Ceftriaxone", "meta_info": "step1", "metamap_phrases": ["x"],
}
PUBMEDQA_HUB_ROW = {
    "pubid": 1, "question": "Does it work?",
    "context": {"contexts": ["First paragraph.", "Second paragraph."], "labels": ["A", "B"],
                "meshes": ["m"]},
    "long_answer": "It does.", "final_decision": "maybe",
}
MEDMCQA_HUB_ROW = {"id": "x", "question": "Antidote for paracetamol?", "opa": "Flumazenil",
                   "opb": "Naloxone", "opc": "Atropine", "opd": "N-acetylcysteine", "cop": 3,
                   "choice_type": "single", "exp": None, "subject_name": "Pharm", "topic_name": None}


def test_medqa_row_conversion_keeps_the_thesis_fields():
    row = hub.medqa_row(MEDQA_HUB_ROW)
    assert row == {"question": MEDQA_HUB_ROW["question"], "options": MEDQA_HUB_ROW["options"],
                   "answer_idx": "C", "answer": "Ceftriaxone"}


def test_pubmedqa_row_builds_the_question_exactly_as_the_thesis_file():
    row = hub.pubmedqa_row(PUBMEDQA_HUB_ROW)
    assert row["question"] == ("First paragraph. Second paragraph.\n\nUsing the above document as a "
                               "reference, please review the following question and choose the option "
                               "you find most appropriate.\nDoes it work?")
    assert row["options"] == {"A": "yes", "B": "no", "C": "maybe"}
    assert (row["answer_idx"], row["answer"]) == ("C", "maybe")


def test_medmcqa_row_maps_cop_to_a_letter():
    row = hub.medmcqa_row(MEDMCQA_HUB_ROW)
    assert row["options"] == {"A": "Flumazenil", "B": "Naloxone", "C": "Atropine", "D": "N-acetylcysteine"}
    assert (row["answer_idx"], row["answer"]) == ("D", "N-acetylcysteine")
    with pytest.raises(RecordError, match="0-3") as info:
        hub.medmcqa_row({**MEDMCQA_HUB_ROW, "cop": -1})
    assert info.value.field == "cop"


def test_hub_source_names_follow_the_thesis_keys():
    assert hub.hub_source_name(hub.MEDQA_HUB, "test") == "MedQA_USLME_test"
    assert hub.hub_source_name(hub.MEDQA_HUB, "train") == "MedQA_train"
    assert hub.hub_source_name(hub.PUBMEDQA_HUB, "train") == "PubMedQA_test"
    assert hub.hub_source_name(hub.MEDMCQA_HUB, "validation") == "MedMCQA_validation"
    assert hub.hub_source_name(hub.MIXTRAL_COT_HUB, "train") == "MedQA_Mixtral_CoT"


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace the one load_dataset call site with in-memory datasets.Dataset objects."""
    tables = {
        (hub.MEDQA_HUB, None, "test"): [MEDQA_HUB_ROW],
        (hub.MEDQA_HUB, None, "train"): [MEDQA_HUB_ROW, MEDQA_HUB_ROW,
                                         {**MEDQA_HUB_ROW, "question": "Another stem?"}],
        (hub.PUBMEDQA_HUB, "pqa_labeled", "train"): [PUBMEDQA_HUB_ROW],
        (hub.MEDMCQA_HUB, None, "validation"): [MEDMCQA_HUB_ROW],
    }
    calls = []

    def fake(hub_id, config=None, split=None, cache_dir=None):
        calls.append((hub_id, config, split, cache_dir))
        if (hub_id, config, split) not in tables:
            raise ConnectionError("offline")
        return datasets.Dataset.from_list(tables[(hub_id, config, split)])

    monkeypatch.setattr(hub, "load_dataset", fake)
    return calls


def test_each_benchmark_loads_end_to_end_from_the_hub(fake_hub, caplog):
    with caplog.at_level(logging.WARNING):
        b = {**load_benchmark({"name": "medqa"}, cache_dir="/c"), **load_benchmark({"name": "pubmedqa"}),
             **load_benchmark({"name": "medmcqa"})}
    assert list(b) == ["MedQA_USLME_test", "PubMedQA_test", "MedMCQA_validation"]
    assert b["PubMedQA_test"][0].answer_idx == "C"
    assert b["MedMCQA_validation"][0].answer == "N-acetylcysteine"
    assert fake_hub[0] == (hub.MEDQA_HUB, None, "test", "/c")
    assert "not the thesis's 1,000-item subset" in caplog.text


def test_an_offline_hub_is_unavailable_not_a_crash(fake_hub):
    with pytest.raises(DataUnavailable, match="hf://openlifescienceai/medmcqa/test.*offline"):
        load_benchmark({"name": "medmcqa", "split": "test"})


def test_a_bad_hub_row_names_the_dataset_row_and_field(monkeypatch):
    rows = [MEDMCQA_HUB_ROW, {**MEDMCQA_HUB_ROW, "cop": 7}]
    monkeypatch.setattr(hub, "load_dataset", lambda *a, **k: datasets.Dataset.from_list(rows))
    with pytest.raises(RecordError, match=r"hf://openlifescienceai/medmcqa/validation: record 1: field 'cop'"):
        load_benchmark({"name": "medmcqa"})


def test_the_real_load_dataset_is_called_with_the_configured_arguments(monkeypatch):
    seen = {}

    def fake_load_dataset(path, name=None, split=None, cache_dir=None):
        seen.update(path=path, name=name, split=split, cache_dir=cache_dir)
        return datasets.Dataset.from_list([PUBMEDQA_HUB_ROW])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    (q,) = load_benchmark({"name": "pubmedqa"}, cache_dir="/cache")["PubMedQA_test"]
    assert seen == {"path": hub.PUBMEDQA_HUB, "name": "pqa_labeled", "split": "train", "cache_dir": "/cache"}
    assert q.question.endswith("\nDoes it work?")


# --- Stage 1 sources -------------------------------------------------------------------

def test_sample_source_is_twelve_medqa_style_questions():
    s = load_source({"name": "sample"})
    assert s.source == "MedQA_sample_train" and len(s.questions) == 12 and s.duplicates_dropped == 0
    assert all(len(q.options) == 4 for q in s.questions)
    assert len(collections.Counter(q.answer_idx for q in s.questions)) == 4


def test_source_drops_and_counts_duplicates(fake_hub):
    s = load_source({"name": "medqa_train"})
    assert (s.source, len(s.questions), s.duplicates_dropped, s.available) == ("MedQA_train", 2, 1, 2)
    assert fake_hub[0][:3] == (hub.MEDQA_HUB, None, "train")


def test_source_from_a_path_with_file_key_limit_and_draw(tmp_path):
    rows = items(20) + [item("Question number 3?")]
    path = write_json(tmp_path / "src.json", {"Train": rows, "Other": items(2, "O")})
    s = load_source({"path": str(path), "file_key": "Train", "limit": 10, "n": 4, "seed": 7})
    assert s.source == "Train" and s.duplicates_dropped == 1 and s.available == 20
    assert len(s.questions) == 4
    assert {q.question for q in s.questions} <= {f"Question number {i}?" for i in range(10)}
    assert s.ids == [q.id for q in draw(load_source({"path": str(path), "file_key": "Train",
                                                     "limit": 10}).questions, 4, 7)]
    with pytest.raises(RecordError, match="several sources"):
        load_source({"path": str(path)})


def test_source_n_without_seed_is_an_error():
    with pytest.raises(ValueError, match="source.seed"):
        load_source({"name": "sample", "n": 3})


def test_unknown_source_lists_the_options():
    with pytest.raises(ValueError, match="medqa_train, sample"):
        load_source({"name": "pubmed"})


# --- seeded draw -------------------------------------------------------------------------

def test_draw_does_not_depend_on_input_order_and_depends_on_seed():
    qs = load_source({"name": "sample"}).questions
    shuffled = qs[:]
    random.Random(1).shuffle(shuffled)
    assert draw(qs, 5, 42) == draw(shuffled, 5, 42)
    assert draw(qs, 5, 42) != draw(qs, 5, 43)
    assert draw(qs, 4, 42) == draw(qs, 5, 42)[:4]  # the draw of n is a prefix of n + 1


def test_draw_picks_the_same_questions_in_sets_with_and_without_parsed_options():
    fgrft = load_training_records({"name": "sample"})
    naive = [TrainingRecord(id=stem_id(r.Question), source="x", Question=r.Question.split("\nA.")[0],
                            Complex_CoT="c", Response="r") for r in fgrft]
    assert [r.stem_id for r in draw(fgrft, 6, 3)] == [r.stem_id for r in draw(naive, 6, 3)]


def test_draw_more_than_available_warns_or_raises(caplog):
    qs = load_source({"name": "sample"}).questions
    with caplog.at_level(logging.WARNING):
        assert len(draw(qs, 50, 1)) == 12
    assert "asked to draw 50 items from 12" in caplog.text
    with pytest.raises(ValueError, match="asked to draw 50"):
        draw(qs, 50, 1, strict=True)
    with pytest.raises(ValueError, match="seed"):
        draw(qs, 2, "42")


# --- training records --------------------------------------------------------------------

def test_sample_training_records_are_complete_and_agree_with_gold():
    records = load_training_records({"name": "sample"})
    assert len(records) == 12
    for r in records:
        assert r.source == "MedQA_sample_train" and r.gold is not None
        assert r.id == item_id(*_stem_and_options(r.Question))
        assert 90 <= len(r.Complex_CoT.split()) <= 220 and 50 <= len(r.Response.split()) <= 130
        assert f"({r.gold.letter})" in r.Response  # the response names the gold letter
        assert r.meta.verifier_verdict in ("Correct", "Error") and r.meta.gate_verdict in ("Pass", "Revise")
    assert {r.gold.letter for r in records} == set("ABCD")
    assert any(r.meta.revised for r in records) and any(r.meta.student_letter != r.gold.letter for r in records)


def _stem_and_options(text):
    from fgrft.records import split_option_lines
    return split_option_lines(text)


def test_naive_sample_joins_the_fgrft_sample_on_id_and_stem_id():
    fgrft = load_training_records({"name": "sample"})
    naive = load_training_records({"name": "sample_naive"})
    assert [r.id for r in naive] == [r.id for r in fgrft]
    assert [r.stem_id for r in naive] == [r.stem_id for r in fgrft]
    for r, f in zip(naive, fgrft):
        assert r.source == "MedQA_Mixtral_CoT_sample" and r.gold is None
        assert r.raw_response.endswith(f"the answer is {f.gold.letter}. {f.gold.text}.")
        assert r.Response == f"Therefore, the answer is {f.gold.letter}. {f.gold.text}."
        assert assistant_target(r, "raw") == r.raw_response


def test_sample_records_and_source_questions_are_the_same_questions():
    ids = {q.id for q in load_source({"name": "sample"}).questions}
    assert {r.id for r in load_training_records({"name": "sample"})} == ids


def test_assistant_target_shapes():
    r = load_training_records({"name": "sample"})[0]
    assert assistant_target(r) == f"## Thinking\n\n{r.Complex_CoT}\n\n## Final Response\n\n{r.Response}"
    assert assistant_target(r, "raw") == f"{r.Complex_CoT}\n\n{r.Response}"
    n = load_training_records({"name": "sample_naive"})[0]
    structured = assistant_target(n, "thinking")
    assert structured.startswith("## Thinking\n\nThe question describes")
    assert structured.endswith("## Final Response\n\nTherefore, the answer is B. Indomethacin.")
    with pytest.raises(ValueError, match="target_format"):
        assistant_target(r, "chatml")


@pytest.mark.parametrize("cot, response", [("Complex_CoT", "Response"),
                                           ("guided_solution", "final_response"),
                                           ("Guided_Solution", "Final_Response")])
def test_training_field_aliases_are_accepted(tmp_path, cot, response):
    path = tmp_path / "train.json"
    q = question_with_options("Which drug?", {"A": "x", "B": "y"})
    write_json(path, [{"Question": q, cot: "thinking", response: "answer"}])
    (r,) = load_training_records({"name": "fgrft_5k", "path": str(path)})
    assert (r.Complex_CoT, r.Response, r.source) == ("thinking", "answer", "MedQA_train")
    assert r.id == item_id("Which drug?", {"A": "x", "B": "y"})


@pytest.mark.parametrize("row, field, message", [
    ({"Complex_CoT": "c", "Response": "r"}, "Question", "missing"),
    ({"Question": "Q", "Response": "r"}, "Complex_CoT", "or guided_solution, Guided_Solution"),
    ({"Question": "Q", "Complex_CoT": "c"}, "Response", "missing"),
    ({"Question": "Q", "Complex_CoT": "c", "Response": 3}, "Response", "expected text"),
    ({"Question": "Q", "Complex_CoT": " ", "Response": "r"}, "Complex_CoT", "empty text"),
    ({"Question": "Q?\nA. x\nB. y", "Complex_CoT": "c", "Response": "r", "gold": {"letter": "C", "text": "z"}},
     "gold.letter", "not among the question's options AB"),
    ({"Question": "Q?\nA. x\nB. y", "Complex_CoT": "c", "Response": "r", "gold": {"letter": "A", "text": "y"}},
     "gold.text", "differs from option A"),
    ({"Question": "Q", "Complex_CoT": "c", "Response": "r", "meta": []}, "meta", "expected an object"),
    ({"question": "Q", "response": "r"}, "Complex_CoT", "looks like a naive-CoT record"),
])
def test_bad_training_records_name_file_record_and_field(tmp_path, row, field, message):
    path = tmp_path / "records.jsonl"
    good = {"Question": "Fine?", "Complex_CoT": "c", "Response": "r"}
    write_jsonl(path, [good, row])
    with pytest.raises(RecordError) as info:
        load_training_records({"name": "fgrft_5k", "path": str(path)})
    assert (info.value.index, info.value.field) == (1, field)
    assert "records.jsonl" in str(info.value) and message in str(info.value)


def test_bad_naive_records_name_the_field(tmp_path):
    path = write_json(tmp_path / "naive.json", [{"question": "Q?", "response": ""}])
    with pytest.raises(RecordError, match="record 0: field 'response': empty text"):
        load_training_records({"name": "naive_cot_5k", "path": str(path)})


def test_fgrft_5k_without_a_path_says_what_to_set():
    with pytest.raises(DataUnavailable, match="data.path"):
        load_training_records({"name": "fgrft_5k"})


def test_training_spec_values_are_validated():
    with pytest.raises(ValueError, match="data.format"):
        load_training_records({"name": "sample", "format": "cot"})
    with pytest.raises(ValueError, match="data.target_format"):
        load_training_records({"name": "sample", "target_format": "chat"})
    with pytest.raises(ValueError, match="data.seed"):
        load_training_records({"name": "sample", "n": 2})
    with pytest.raises(ValueError, match="unknown data option"):
        load_training_records({"name": "sample_5k"})


def test_training_n_and_seed_draw_and_duplicates_are_dropped(tmp_path, caplog):
    records = load_training_records({"name": "sample"})
    path = tmp_path / "records.jsonl"
    write_jsonl(path, records + records[:2])
    with caplog.at_level(logging.WARNING):
        assert len(load_training_records({"path": str(path)})) == 12
    assert "dropped 2 records" in caplog.text
    drawn = load_training_records({"path": str(path), "n": 5, "seed": 42})
    assert [r.id for r in drawn] == [r.id for r in draw(records, 5, 42)]


def test_naive_cot_set_loads_end_to_end_from_the_hub(monkeypatch):
    naive_rows = [{"question": r["question"], "response": r["response"]}
                  for r in map(json.loads, bundled_path("naive_cot_sample.jsonl").read_text().splitlines())]

    def fake(hub_id, config=None, split=None, cache_dir=None):
        assert (hub_id, config, split) == (hub.MIXTRAL_COT_HUB, None, "train")
        return datasets.Dataset.from_list(naive_rows)

    monkeypatch.setattr(hub, "load_dataset", fake)
    fgrft = load_training_records({"name": "sample"})
    naive = load_training_records({"name": "naive_cot_5k_structured", "n": 5, "seed": 1})
    assert all(r.source == "MedQA_Mixtral_CoT" for r in naive)
    # the same seed draws the same questions in both arms
    assert [r.stem_id for r in naive] == [r.stem_id for r in draw(fgrft, 5, 1)]


def test_select_records_by_stem_id_and_id_reports_matches():
    fgrft = load_training_records({"name": "sample"})
    naive = load_training_records({"name": "sample_naive"})
    wanted = [fgrft[3].stem_id, fgrft[1].stem_id, "not-a-stem"]
    sel = select_records(naive, wanted)
    assert (sel.requested, sel.matched, sel.missing) == (3, 2, ["not-a-stem"])
    assert [r.stem_id for r in sel.records] == wanted[:2]
    sel = select_records(naive, [r.id for r in fgrft], key="id")
    assert sel.matched == 12
    with pytest.raises(ValueError, match="key"):
        select_records(naive, [], key="Question")


# --- splitting naive-CoT texts ---------------------------------------------------------

OPTS = {"A": "Ampicillin", "B": "Ceftriaxone", "C": "Doxycycline", "D": "Vancomycin"}


@pytest.mark.parametrize("text", [
    "Which drug is first-line?\nA. Ampicillin\nB. Ceftriaxone\nC. Doxycycline\nD. Vancomycin",
    "Which drug is first-line?\nOptions:\nA: Ampicillin\nB: Ceftriaxone\nC: Doxycycline\nD: Vancomycin",
    "Question: Which drug is first-line? A. Ampicillin B. Ceftriaxone C. Doxycycline D. Vancomycin",
    "Which drug is first-line? Options: (A) Ampicillin (B) Ceftriaxone (C) Doxycycline (D) Vancomycin",
])
def test_split_question_text_separates_stem_and_options(text):
    assert split_question_text(text) == ("Which drug is first-line?", OPTS)


def test_split_question_text_leaves_a_stem_that_only_mentions_letters():
    text = "A man with hepatitis A. He also has vitamin B deficiency. What next?"
    assert split_question_text(text) == (text, {})


def test_naive_ids_join_whatever_option_layout_the_question_used(tmp_path):
    rows = [{"question": "Which drug is first-line? A. Ampicillin B. Ceftriaxone C. Doxycycline D. Vancomycin",
             "response": "Reasoning.\n\nTherefore, the answer is B."},
            {"question": "Which other drug is first-line?", "response": "Only one sentence."}]
    path = write_json(tmp_path / "naive.json", rows)
    with_options, without = load_training_records({"name": "naive_cot_5k", "path": str(path)})
    assert with_options.id == item_id("Which drug is first-line?", OPTS)
    assert with_options.Question == question_with_options("Which drug is first-line?", OPTS)
    assert without.id == without.stem_id == stem_id("Which other drug is first-line?")
    assert (without.Complex_CoT, without.Response) == ("Only one sentence.", "Only one sentence.")


def test_split_conclusion():
    assert split_conclusion("One.\n\nTwo.\n\n  Therefore B.  ") == ("One.\n\nTwo.", "Therefore B.")
    assert split_conclusion("First part. Second part. So the answer is C.") == (
        "First part. Second part.", "So the answer is C.")


def test_loaders_do_not_import_datasets_until_the_hub_is_used():
    import subprocess
    import sys
    code = ("import sys; from fgrft.data import load_benchmark; load_benchmark({'name': 'sample'}); "
            "print('datasets' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.stdout.strip() == "False"
