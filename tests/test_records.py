"""The hand-off record types: ids, option lines, JSONL round trips, error messages."""
import json

import pytest

from fgrft.records import (Gold, Prediction, Question, RecordError, TrainingMeta, TrainingRecord,
                           fold, item_id, question_with_options, read_jsonl, split_option_lines,
                           stem_id, training_record_from_row, write_jsonl)

OPTIONS = {"A": "Aspirin", "B": "Heparin", "C": "Warfarin"}


def test_ids_fold_case_and_whitespace_but_not_words():
    assert item_id("Which drug?", OPTIONS) == item_id("  which   DRUG?\n", OPTIONS)
    assert item_id("Which drug?", OPTIONS) != item_id("Which drugs?", OPTIONS)
    assert stem_id("Which drug?") == stem_id("which drug?")
    assert fold("  A\tB \n C ") == "a b c"


def test_item_id_depends_on_options_in_letter_order_and_stem_id_does_not():
    swapped = {"A": "Heparin", "B": "Aspirin", "C": "Warfarin"}
    assert item_id("Which drug?", OPTIONS) != item_id("Which drug?", swapped)
    # dict insertion order does not matter, letters do
    assert item_id("Which drug?", dict(reversed(list(OPTIONS.items())))) == item_id("Which drug?", OPTIONS)
    assert stem_id("Which drug?") == Question("s", "Which drug?", swapped, "A", "Heparin").stem_id


def test_item_id_ignores_option_lines_in_the_question_text():
    with_lines = question_with_options("Which drug?", OPTIONS)
    assert item_id(with_lines, OPTIONS) == item_id("Which drug?", OPTIONS)
    assert stem_id(with_lines) == stem_id("Which drug?")


def test_split_option_lines_round_trips_the_prompt_rendering():
    text = question_with_options("A 40-year-old man.\nWhich drug?", OPTIONS)
    assert text.endswith("\nA. Aspirin\nB. Heparin\nC. Warfarin")
    assert split_option_lines(text) == ("A 40-year-old man.\nWhich drug?", OPTIONS)


def test_split_option_lines_leaves_stems_without_a_full_run_alone():
    assert split_option_lines("Intro\nB. only b\nC. only c") == ("Intro\nB. only b\nC. only c", {})
    assert split_option_lines("Hepatitis A. Which test?") == ("Hepatitis A. Which test?", {})
    assert split_option_lines("Q?\n(A) one\n(B) two")[1] == {"A": "one", "B": "two"}


def test_question_computes_its_id_and_keeps_a_given_one():
    q = Question("MedQA_sample", "Which drug?", OPTIONS, "B", "Heparin")
    assert q.id == item_id("Which drug?", OPTIONS) and len(q.id) == 16
    assert Question("s", "Which drug?", OPTIONS, "B", "Heparin", id="fixed").id == "fixed"
    assert Question(**q.to_dict()) == q


def test_training_record_round_trip_and_raw_response_only_when_set(tmp_path):
    r = TrainingRecord(id="x", source="s", Question="Q?\nA. a\nB. b", Complex_CoT="think", Response="say",
                       gold=Gold("A", "a"), meta=TrainingMeta(student_letter="B", revised=True))
    assert "raw_response" not in r.to_dict()
    naive = TrainingRecord(id="y", source="s", Question="Q?", Complex_CoT="c", Response="r",
                           raw_response="c\n\nr")
    path = tmp_path / "records.jsonl"
    assert write_jsonl(path, [r, naive]) == 2
    back = [training_record_from_row(d) for _, d in read_jsonl(path)]
    assert back == [r, naive]
    assert back[0].gold == Gold("A", "a") and back[0].meta.revised is True
    assert json.loads(path.read_text().splitlines()[0])["schema_version"] == 1


def test_the_records_reader_drops_unknown_meta_keys():
    d = {"id": "x", "source": "s", "Question": "Q", "Complex_CoT": "c", "Response": "r",
         "meta": {"student_letter": "A", "something_new": 3}}
    assert training_record_from_row(d).meta.student_letter == "A"


def test_prediction_drops_head_and_tail_unless_the_thesis_scorer_set_them():
    p = Prediction(id="x", source="s", sample=0, question="Q", options=OPTIONS, answer_idx="A",
                   prompt="P", output="O")
    assert "head" not in p.to_dict() and "tail" not in p.to_dict()
    p.head, p.tail = "A", "B"
    assert Prediction.from_dict(p.to_dict()) == p


def test_read_jsonl_skips_blank_lines_and_names_the_broken_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    rows = read_jsonl(path)
    assert next(rows) == (0, {"a": 1})
    assert next(rows) == (2, {"a": 2})
    with pytest.raises(RecordError, match=r"x\.jsonl: record 3: broken JSON on line 4"):
        next(rows)


def test_read_jsonl_rejects_lines_that_are_not_objects(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text("[1, 2]\n")
    with pytest.raises(RecordError, match="record 0: expected a JSON object"):
        list(read_jsonl(path))


def test_record_error_names_file_record_and_field_and_keeps_the_reason():
    e = RecordError("missing", file="f.json", index=3, field="answer_idx")
    assert str(e) == "f.json: record 3: field 'answer_idx': missing"
    assert (e.file, e.index, e.field, e.reason) == ("f.json", 3, "answer_idx", "missing")
    assert str(RecordError("plain")) == "plain"
