"""The strict scorer: only an unambiguous commitment counts."""
import pytest

from fgrft.scoring import get_scorer
from fgrft.scoring.strict import extract, final_section

PROSTATE = {"A": "PSA level", "B": "TRUS guided biopsy", "C": "MRI of the pelvis",
            "D": "Watchful waiting"}
VITAMIN = {"A": "Vitamin D deficiency", "B": "Hypoparathyroidism", "C": "Renal failure",
           "D": "Paget disease"}
PERSONALITY = {"A": "Schizoid", "B": "Histrionic", "C": "Type A personality", "D": "Avoidant"}
YES_NO = {"A": "yes", "B": "no", "C": "maybe"}
NUMBERS = {"A": "2", "B": "4", "C": "6", "D": "8"}


def letter(output, options=PROSTATE):
    return extract(output, options).letter


# -- answer statements ------------------------------------------------------

@pytest.mark.parametrize("output,expected", [
    ("The answer is B", "B"),
    ("The answer is B.", "B"),
    ("Answer: C", "C"),
    ("**Answer:** D", "D"),
    ("The correct answer is: **B. TRUS guided biopsy**", "B"),
    ("The best option is option (C).", "C"),
    ("Final answer - A because PSA is cheap", "A"),
    ("The answer is therefore D.", "D"),
    ("I would choose B.", "B"),
    ("The answer is A because the history says so.", "A"),
    ("B is the correct answer.", "B"),
    ("A. is wrong. B. is correct.", "B"),
    ("The answer is TRUS-Guided  Biopsy.", "B"),
    ("the answer is watchful waiting", "D"),
    ("I'd go with TRUS guided biopsy (Option B).", "B"),
    ("The final answer is: $\\boxed{B}$", "B"),
    ("The final answer is $\\boxed{\\text{D}}$.", "D"),
])
def test_answer_statements(output, expected):
    e = extract(output, PROSTATE)
    assert (e.letter, e.rule) == (expected, "statement")


def test_statement_outranks_option_text():
    out = ("Vitamin D deficiency is the classic cause of this picture, and many would say so, "
           "but the calcium is low with a high PTH... the answer is B")
    assert letter(out, VITAMIN) == "B"


def test_last_statement_wins():
    assert letter("The answer is A. Wait, re-reading the stem, the answer is C.") == "C"
    assert letter("Answer: D\n\nOn reflection the correct answer is B") == "B"


@pytest.mark.parametrize("output", [
    "The answer is A or B.",
    "The answer is B/C",
    "The answer is either A or C.",
    "The correct answer is B, C",
    "The answer is PSA level or MRI of the pelvis.",
    "The answer is A. Hmm, or maybe the answer is B or D.",
])
def test_two_options_with_equal_standing_are_unparsed(output):
    e = extract(output, PROSTATE)
    assert e.letter is None and e.rule == "ambiguous"


def test_second_letter_that_starts_a_new_clause_is_not_an_alternative():
    assert letter("The answer is B, and A is wrong because PSA is non-specific.") == "B"


# -- negation -----------------------------------------------------------------

@pytest.mark.parametrize("output", [
    "A. is wrong",
    "The answer is not A.",
    "Option A is incorrect.",
    "Options A and C are incorrect.",
    "Option A (PSA level) would not be helpful here.",
    "I would rule out (B).",
])
def test_negated_letters_commit_to_nothing(output):
    assert letter(output) is None


def test_negated_statement_followed_by_but():
    assert letter("The answer is not A but C.") == "C"


def test_negated_mentions_leave_the_remaining_one():
    out = "Option A is incorrect; PSA is non-specific. Option C is less likely. **D.** fits best."
    assert letter(out) == "D"


# -- letters in prose --------------------------------------------------------

@pytest.mark.parametrize("output,options", [
    ("Patients with a Type A personality are prone to this.", PROSTATE),
    ("Vitamin A toxicity and hepatitis B infection are unrelated here.", PROSTATE),
    ("Answer: A patient with these findings needs urgent review.", PROSTATE),
    ("Answer: A 45-year-old man with this picture is common.", PROSTATE),
    ("Plan B is to wait and see; grade C evidence supports it.", PROSTATE),
])
def test_capital_letters_inside_prose_are_not_options(output, options):
    assert letter(output, options) is None


def test_genus_abbreviations_are_not_lettered_answers():
    drugs = {"A": "Metronidazole", "B": "Vancomycin", "C": "Ciprofloxacin", "D": "Clindamycin"}
    assert letter("C. difficile colitis is likely here.", drugs) is None
    assert letter("The answer is C. difficile toxin.", drugs) is None
    assert letter("H. pylori is the cause; the answer is A.", drugs) == "A"
    assert letter("B. vancomycin", drugs) == "B"  # lower-case, but B's own text
    e = extract("The answer is B. vancomycin, with A. is wrong", drugs)
    assert (e.letter, e.rule) == ("B", "statement")


def test_type_a_personality_is_option_text_not_letter_a():
    assert letter("These patients show a Type A personality pattern.", PERSONALITY) == "C"


def test_letters_must_be_valid_for_the_item():
    assert letter("The answer is D.", YES_NO) is None
    assert letter("The answer is E.") is None
    assert letter("(E) is the best choice") is None


# -- labelled options --------------------------------------------------------

@pytest.mark.parametrize("output,expected", [
    ("B. TRUS-guided biopsy", "B"),
    ("b) trus guided BIOPSY is the next step", "B"),  # lower-case label: read as option text
    ("**C.**\n\nMRI stages the tumour.", "C"),
    ("**D**", "D"),
    ("TRUS guided biopsy (Option B) confirms the diagnosis.", "B"),
    ("The next step is option B.", "B"),
    ("(C)", "C"),
    ("D", "D"),
    ("\n  B.\n", "B"),
    ("so \\boxed{C}", "C"),
])
def test_labelled_options(output, expected):
    assert letter(output) == expected


def test_several_labelled_letters_are_ambiguous():
    out = "A. PSA level - non-specific\nB. TRUS guided biopsy - diagnostic\nC. MRI - staging"
    e = extract(out, PROSTATE)
    assert e.letter is None and e.rule == "ambiguous"


def test_a_negated_list_entry_drops_out():
    out = "A. PSA level - not specific\nB. TRUS guided biopsy - diagnostic"
    assert letter(out) == "B"


def test_option_lists_do_not_choose():
    assert letter("Options B and D are both reasonable.") is None
    assert letter("Either choice A or choice C could be argued.") is None


# -- option text alone --------------------------------------------------------

def test_one_option_text_alone_counts():
    e = extract("The next step should be a trus guided biopsy of the prostate.", PROSTATE)
    assert (e.letter, e.rule) == ("B", "option_text")


def test_two_option_texts_are_ambiguous():
    assert letter("PSA level and TRUS guided biopsy are both used.") is None


def test_denied_option_text_does_not_count():
    assert letter("PSA level is not specific; TRUS guided biopsy confirms it.") == "B"
    assert letter("Rather than watchful waiting, the patient needs an MRI of the pelvis.") == "C"


def test_text_inside_a_longer_option_belongs_to_the_longer_option():
    options = {"A": "Iron deficiency", "B": "Iron deficiency anaemia", "C": "Thalassaemia"}
    assert letter("This is iron-deficiency anaemia.", options) == "B"


def test_generic_option_texts_are_not_read_from_prose():
    assert letter("It is 2 or 3 times more common.", NUMBERS) is None
    assert letter("The answer is 6.", NUMBERS) == "C"


def test_no_similarity_guessing():
    e = extract("Probably a biopsy of some kind.", PROSTATE)
    assert e.letter is None and e.rule == "no_answer"


# -- PubMedQA yes/no/maybe ---------------------------------------------------

@pytest.mark.parametrize("output,expected", [
    ("Yes, the intervention reduced mortality. There is no doubt about it.", "A"),
    ("No. The trial found no benefit.", "B"),
    ("Maybe.", "C"),
    ("**Yes**", "A"),
    ("Based on the data, the answer is no.", "B"),
    ("The answer is maybe; the evidence is mixed.", "C"),
    ("The evidence is mixed and there is no clear effect.", None),
    ("No significant difference was found, so the answer is yes.", "A"),
    ("The answer is yes or no depending on the subgroup.", None),
    ("Answer: B", "B"),
])
def test_yes_no_maybe(output, expected):
    assert letter(output, YES_NO) == expected


# -- sections ---------------------------------------------------------------

def test_final_response_section_is_what_counts():
    out = "## Thinking\n\nThe answer is A, surely.\n\n## Final Response\n\nThe answer is C."
    e = extract(out, PROSTATE)
    assert (e.letter, e.section) == ("C", "final")


def test_answer_only_in_thinking_is_unparsed_when_final_response_commits_to_nothing():
    out = "## Thinking\n\nSo the answer is B.\n\n## Final Response\n\nA biopsy is needed."
    e = extract(out, PROSTATE)
    assert (e.letter, e.rule, e.section) == (None, "no_answer", "final")


def test_without_a_final_section_the_whole_output_is_read():
    out = "## Thinking\n\nLet me think. So the answer is B."
    e = extract(out, PROSTATE)
    assert (e.letter, e.section) == ("B", "whole")


def test_final_section_heading_variants():
    assert final_section("x\n### Final Answer: B")[0].strip() == "B"
    assert final_section("x\n## Final Response\n\nyes\n## Final Response\n\nno")[0].strip() == "no"
    assert final_section("no heading")[1] == "whole"


def test_empty_output_is_unparsed():
    for out in ("", "  \n\t"):
        e = extract(out, PROSTATE)
        assert (e.letter, e.rule) == (None, "empty")


def test_registry_exposes_the_strict_scorer():
    scorer = get_scorer("strict")
    assert scorer.name == "strict"
    assert scorer.extract("Answer: B", PROSTATE).letter == "B"
    with pytest.raises(ValueError):
        extract("Answer: B", {})
