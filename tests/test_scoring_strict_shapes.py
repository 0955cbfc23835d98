"""The strict scorer on the shapes real 7-8B model outputs take.

Each example is a short response written for this file, one per shape: the
sentences that must not fool the scorer into a commitment, and the ways real
responses commit to an answer while naming other options too.
"""
import pytest

from fgrft.scoring.strict import extract

MEDIA = {"A": "MacConkey medium", "B": "Mitis salivarius bacitracin agar", "C": "Nutrient agar",
         "D": "Tellurite medium"}
PPE = {"A": "Gloves", "B": "Face shield", "C": "Gown", "D": "Mask"}
FEVER = {"A": "Pyogenic meningitis", "B": "Tubercular meningitis", "C": "Herpes encephalitis",
         "D": "Cerebral malaria"}
PLASTIC = {"A": "Poly propylene", "B": "Poly sulphone", "C": "Poly sulphide", "D": "Liquid crystal plastic"}
DOSE = {"A": "20 mg doxycycline", "B": "40 mg doxycycline", "C": "80 mg doxycycline",
        "D": "150 mg doxycycline"}
SCORE = {"A": "3", "B": "8", "C": "12", "D": "15"}


def letter(output, options=PPE):
    return extract(output, options).letter


# -- sentences that name a letter without committing to it ----------------------

@pytest.mark.parametrize("output", [
    "The wrong answer is A.",
    "An incorrect answer would be A.",
    "Answer: B is wrong",
    "A is the correct answer? No. The answer is not A.",
    "Option A is the least likely.",
    "Option A is likely a distractor.",
    "Is the answer C?",
])
def test_sentences_that_do_not_commit(output):
    assert letter(output) is None


@pytest.mark.parametrize("output", [
    "A. Face shield",
    "The answer is C. Mask.",
    "**D. Gloves**",
])
def test_a_letter_with_another_options_text_is_a_conflict(output):
    e = extract(output, PPE)
    assert (e.letter, e.rule) == (None, "conflict")


def test_a_letter_whose_text_starts_like_another_option_is_not_a_conflict():
    options = {"A": "Facially", "B": "Lingually", "C": "Facially, lingually & occlusally"}
    assert letter("The correct answer is C. Facially, lingually, and occlusally.", options) == "C"


def test_a_later_retraction_cancels_the_commitment():
    e = extract("The answer is B. On second thought, B is incorrect.", PPE)
    assert (e.letter, e.rule) == (None, "retracted")
    assert letter("The answer is B. A is incorrect.") == "B"  # retracting another letter


def test_the_last_commitment_wins_over_an_earlier_one():
    out = "The answer is A.\n\nWait, the mask comes off last, so:\n\nB. Face shield\n"
    assert letter(out) == "B"


# -- an answer line, then a discussion of the other options ----------------------

@pytest.mark.parametrize("output", [
    "C. Gown\n\nGloves (A) are removed first in some protocols, the face shield (B) and the "
    "mask (D) come later.",
    "C. Gown\n\nExplanation: removing gloves (option A) first contaminates the hands; option B "
    "and option D are removed last.",
    "C. Gown\n\nThe other options are wrong:\n\nA. Gloves are removed at the very end, with "
    "hand hygiene.\nB. The face shield is handled by its strap.",
    "**C. Gown**\n\nGloves (A) and mask (D) are removed later.",
    "The order is outermost first, so the answer is:\n\n(C) Gown\n\nnot the mask (D).",
])
def test_an_answer_line_with_references_to_other_options(output):
    assert letter(output) == "C"


def test_an_answer_line_after_a_walk_through_of_glossed_options():
    out = ("A. Gloves - removed after the face shield.\nB. Face shield: removed after the gown.\n"
           "C. Gown - removed first.\nD. Mask - removed last.\n\n"
           "So the item to remove first among these is:\n\n**C. Gown**.")
    assert letter(out) == "C"


def test_a_walk_through_of_option_lines_is_not_an_answer():
    out = ("A. Gloves\n\nThese are removed last.\n\nB. Face shield\n\nRemoved after the gown."
           "\n\nC. Gown\n\nRemoved before the shield.")
    assert letter(out) is None


def test_an_echoed_option_list_is_not_an_answer():
    out = "Given the options:\nA. Gloves\nB. Face shield\nC. Gown\nD. Mask\n\nI cannot tell."
    assert letter(out) is None
    out = "Given the options:\nA. Gloves\nB. Face shield\nC. Gown\nD. Mask\n\nThe answer would be:\n\nC. Gown or D. Mask."
    assert extract(out, PPE).rule == "ambiguous"


def test_the_first_line_naming_an_option_in_a_sentence_is_its_answer():
    out = "D. Mask is removed first here. Gloves (A) and the gown (C) follow."
    assert letter(out) == "D"
    walk = "A. Gloves are removed last.\nB. Face shield comes off after the gown."
    assert letter(walk) is None


def test_a_reworded_option_text_under_its_letter():
    out = "Plastic carriers are usually made of:\n\nA. Polypropylene\n\nIt is flexible (unlike B or C)."
    assert letter(out, PLASTIC) == "A"


def test_a_letter_label_stated_as_the_complement_of_is():
    out = "The selective medium for S. mutans is B. Mitus Salivarius Bacitracin agar, which inhibits others."
    assert letter(out, MEDIA) == "B"
    assert letter("The correct answer for this question is: **D. Tellurite medium**", MEDIA) == "D"


def test_a_strong_statement_outranks_a_bare_is_correct():
    out = ("The correct answer is B. Face shield.\n\nOption C is correct as gowns are bulky, and "
           "option D is also correct.")
    assert letter(out) == "B"
    assert letter("Option C is correct.") == "C"  # alone, it still answers


# -- an option's exact text stated as the answer ---------------------------------

@pytest.mark.parametrize("output,expected", [
    ("The most likely diagnosis is cerebral malaria. Pyogenic meningitis and herpes "
     "encephalitis are other possible diagnoses.", "D"),
    ("Herpes encephalitis (HSV) is the correct answer; pyogenic meningitis is less likely.", "C"),
    ("The answer is A.\n\nIf the question is about malaria, then cerebral malaria would be the "
     "most relevant among the given options.", "D"),
    ("The diagnosis is not cerebral malaria.", None),
    ("The likely diagnosis is pyogenic meningitis or tubercular meningitis.", None),
])
def test_option_text_as_the_answer(output, expected):
    assert letter(output, FEVER) == expected


def test_an_option_named_wrong_by_letter_is_not_read_back_from_its_text():
    out = ("The only complete ring is the cricoid. The other options (A, B, and D) are not complete "
           "rings. Tellurite medium is a different thing.")
    assert letter(out, MEDIA) is None


# -- shapes left unparsed on purpose ---------------------------------------------

def test_a_paraphrase_of_an_option_stays_unparsed():
    assert letter("The subantimicrobial dose of doxycycline is 40 mg.", DOSE) is None


def test_numbers_in_prose_are_not_read_as_options():
    assert letter("The maximum GCS is 15, so an intubated patient scores 8.", SCORE) is None
    assert letter("The answer is 8.", SCORE) == "B"


def test_the_option_that_answers_an_except_question():
    out = ("A. Gloves - removed last.\nB. Face shield - removed after the gown.\n\n"
           "So **D. Mask** is the option that is not removed before the gown.")
    assert letter(out) == "D"
    assert letter('The statement that is false is C: "Gown first, always".') == "C"


def test_a_lone_option_text_counts_only_where_no_letter_is_named():
    # Letters named, one of them retracted: the options are being discussed, so the one
    # option text left over is a mention, not the answer.
    out = ("The correct answer is:\n\nB. Face shield is incorrect because it comes off later. "
           "The gown and the mask do not fit either.")
    assert letter(out) is None
    assert letter("The first item to come off is the gown, by convention.") == "C"
