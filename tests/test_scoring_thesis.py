"""The thesis ("legacy") scorer: every rule and quirk of THESIS.md, on crafted inputs."""
import json
import os
from pathlib import Path

import pytest

from fgrft.scoring import get_scorer, thesis_tuples, thesis_tuples_from_records
from fgrft.scoring.thesis import extract, truncate_to_final_response

ABCD = {"A": "Hypertension", "B": "Diabetes mellitus", "C": "Asthma", "D": "Gout"}
YES_NO = {"A": "yes", "B": "no", "C": "maybe"}


def head_tail(output, options=ABCD):
    e = extract(output, options)
    return e.head, e.tail, e.rule


# -- truncation -------------------------------------------------------------

def test_reads_only_text_after_the_last_final_response_marker():
    out = ("## Thinking\n\nthe answer is A\n\n## Final Response\n\nthe answer is B"
           "\n\n## Final Response\n\nthe answer is C")
    assert truncate_to_final_response(out) == "the answer is C"
    assert head_tail(out) == ("C", "C", "answer_is")


def test_marker_needs_both_newlines():
    # "## Final Response\n" with one newline is not the marker: the whole text is read.
    out = "the answer is A\n## Final Response\nthe answer is B"
    assert head_tail(out) == ("A", "B", "answer_is")


# -- rule 1 -----------------------------------------------------------------

def test_rule1_head_is_first_match_and_tail_is_last():
    out = "I think the answer is B. On reflection the answer is D."
    assert head_tail(out) == ("B", "D", "answer_is")


def test_rule1_is_case_sensitive():
    # "Answer is" (capital A) is not rule 1, so rule 2 reads the isolated letters.
    assert head_tail("The Answer is C, and (B) is best") == ("C", "B", "isolated_letter")
    assert head_tail("the answer is C, and (B) is best") == ("C", "C", "answer_is")


def test_rule1_answer_is_not_yields_n_which_is_never_correct():
    assert head_tail("The answer is Not obvious but probably A.") == ("N", "N", "answer_is")
    tuples = thesis_tuples([("the answer is Not clear", ABCD, "A", "s")])
    assert tuples["s"] == [0.0, 0, 1, 0]


def test_rule1_accepts_any_letter_a_to_n_and_lazy_whitespace():
    assert head_tail("the answer is F")[:2] == ("F", "F")
    assert head_tail("so the answer is\n\n  D")[:2] == ("D", "D")
    assert head_tail("the answer isB")[:2] == ("B", "B")
    # A colon breaks rule 1 ("answer is: B" is not "answer is\s*?[A-N]").
    assert head_tail("the answer is: B")[2] == "isolated_letter"


def test_rule1_wins_over_isolated_letters():
    assert head_tail("(A) and (C) are tempting, but the answer is D")[:2] == ("D", "D")


# -- rule 2 -----------------------------------------------------------------

def test_rule2_delimiters_are_consumed():
    assert head_tail("B,C") == ("B", "B", "isolated_letter")
    assert head_tail("B, C") == ("B", "C", "isolated_letter")


def test_rule2_excludes_article_a_followed_by_space():
    assert head_tail("A patient with gout should get D.") == ("D", "D", "isolated_letter")
    # Only "A " is excluded: "A" before a newline or a full stop is a letter.
    assert head_tail("A\nbecause of the history")[:2] == ("A", "A")
    assert head_tail("vitamin A. Nothing else.")[:2] == ("A", "A")


def test_rule2_only_item_letters_upper_case_and_isolated():
    # D does not exist for a three-option item; lower-case letters never count.
    assert head_tail("D. b. the data favour it", YES_NO)[2] != "isolated_letter"
    assert head_tail("DNA and RNA are nucleic acids")[2] != "isolated_letter"
    assert head_tail("choice c is it")[2] != "isolated_letter"


@pytest.mark.parametrize("text,letter", [
    ("*B*", "B"), ("'C'", "C"), ('"D"', "D"), ("#A.", "A"), ("this is B", "B"), ("(C)", "C"),
    ("C", "C"),
])
def test_rule2_accepted_delimiters(text, letter):
    assert head_tail(text) == (letter, letter, "isolated_letter")


# -- rule 3 -----------------------------------------------------------------

def test_rule3_tail_is_latest_last_occurrence_head_is_latest_first_occurrence():
    options = {"A": "alpha", "B": "beta", "C": "gamma", "D": "delta"}
    # alpha: first 0, last 11; beta: first 6, last 6.
    assert head_tail("alpha beta alpha", options) == ("B", "A", "option_text")


def test_rule3_is_case_insensitive_and_ties_go_to_the_earlier_option():
    options = {"A": "iron", "B": "IRON deficiency", "C": "zinc", "D": "copper"}
    # "iron" and "iron deficiency" both start (first and last) at the same index.
    assert head_tail("likely iron deficiency", options) == ("A", "A", "option_text")
    swapped = {"A": "IRON deficiency", "B": "iron", "C": "zinc", "D": "copper"}
    assert head_tail("likely iron deficiency", swapped) == ("A", "A", "option_text")


# -- rule 4 -----------------------------------------------------------------

def test_rule4_most_similar_option_text():
    assert head_tail("diabetic ketoacidosis", ABCD) == ("B", "B", "similarity")


def test_rule4_ties_go_to_the_later_option():
    same = {"A": "xyz", "B": "xyz", "C": "xyz"}
    assert head_tail("qqq", same) == ("C", "C", "similarity")


def test_rule4_lowercases_the_text():
    # Upper-case text matches the lower-cased option only after lowering.
    options = {"A": "Bradycardia", "B": "kidney stone"}
    assert head_tail("KIDNEY STONES?", options)[0] == "B"


# -- aggregation --------------------------------------------------------------

def test_head_wins_only_when_strictly_greater():
    rows = [("the answer is A ... the answer is B", ABCD, "A", "s"),
            ("the answer is B ... the answer is A", ABCD, "A", "s")]
    # head 1, tail 1: a tie -> tail.
    assert thesis_tuples(rows)["s"] == [0.5, 1, 2, 1]
    rows.append(("the answer is A ... the answer is C", ABCD, "a", "s"))  # answer_idx case-insensitive
    assert thesis_tuples(rows)["s"] == [2 / 3, 2, 3, 1]


def test_tied_head_and_tail_choose_the_tail_side():
    # The tuple cannot show the side on a tie; the per-item answer it reports can.
    from fgrft.scoring.thesis import SourceCounts
    assert SourceCounts(head_correct=3, tail_correct=3, total=5).chosen_side == "tail"
    assert SourceCounts(head_correct=4, tail_correct=3, total=5).chosen_side == "head"
    assert SourceCounts(head_correct=4, tail_correct=3, total=5).as_tuple() == [0.8, 4, 5, 3]


def test_empty_outputs_are_dropped_and_missing_source_is_unknown():
    rows = [("", ABCD, "A", "s"), ("   \n", ABCD, "A", "s"), ("the answer is A", ABCD, "A", "s"),
            ("the answer is B", ABCD, "A", None)]
    out = thesis_tuples(rows)
    assert out["s"] == [1.0, 1, 1, 1]
    assert out["unknown"] == [0.0, 0, 1, 0]


def test_records_form_ignores_extra_fields():
    recs = [{"question": "q", "options": ABCD, "answer_idx": "C", "output": "the answer is C",
             "source": "MedQA_USLME_test", "extra": 1},
            {"question": "q", "options": ABCD, "answer_idx": "C", "output": "Asthma"}]
    assert thesis_tuples_from_records(recs) == {"MedQA_USLME_test": [1.0, 1, 1, 1],
                                                "unknown": [1.0, 1, 1, 1]}


PUBLISHED = [
    ("MedQA_USLME_test", [0.58916, 750, 1273, 707]),
    ("PubMedQA_test", [0.768, 768, 1000, 763]),
    ("MedMCQA_validation", [0.536, 536, 1000, 532]),
    ("MedQA_USLME_test", [0.68657, 874, 1273, 868]),
    ("MedQA_USLME_test", [0.67557, 857, 1273, 860]),
    ("MedQA_USLME_test", [0.64572, 697, 1273, 822]),
    ("PubMedQA_test", [0.778, 768, 1000, 778]),
    ("MedQA_USLME_test", [0.61351, 781, 1273, 524]),
    ("MedMCQA_validation", [0.568, 568, 1000, 508]),
    ("MedQA_USLME_test", [0.41555, 529, 1273, 525]),
    ("PubMedQA_test", [0.291, 291, 1000, 290]),
]


@pytest.mark.parametrize("source,published", PUBLISHED)
def test_published_tuple_shapes_are_reproduced(source, published):
    """Outputs crafted to have the published head/tail counts give the published tuple."""
    _, head, total, tail = published
    both = min(head, tail)
    kinds = ([("the answer is A. Final: the answer is A", "A")] * both
             + [("the answer is A. Final: the answer is B", "A")] * (head - both)
             + [("the answer is B. Final: the answer is A", "A")] * (tail - both))
    kinds += [("the answer is C", "A")] * (total - len(kinds))
    options = YES_NO if source == "PubMedQA_test" else ABCD
    rows = [(out, options, gold, source) for out, gold in kinds]
    rows += [("", options, "A", source)] * 3  # empty outputs: dropped
    got = thesis_tuples(rows)[source]
    assert got[1:] == published[1:]
    assert got[0] == pytest.approx(published[0], abs=1e-5)


def test_registry_exposes_the_thesis_scorer():
    e = get_scorer("thesis").extract("the answer is B", ABCD)
    assert (e.letter, e.head, e.tail) == ("B", "B", "B")
    assert get_scorer("thesis").extract("", ABCD).letter is None
    with pytest.raises(ValueError):
        get_scorer("lenient")


@pytest.mark.realdata
def test_gold_letter_statements_score_perfectly_on_real_items(benchmark_dir):
    data = json.loads(Path(os.path.join(benchmark_dir, "eval_data_medmcqa.json")).read_text())
    rows = [(f"## Final Response\n\nThe answer is {it['answer_idx']}. {it['answer']}",
             it["options"], it["answer_idx"], src)
            for src, items in data.items() for it in items]
    for src, (acc, head, total, tail) in thesis_tuples(rows).items():
        assert acc == 1.0 and head == tail == total == 1000, src
