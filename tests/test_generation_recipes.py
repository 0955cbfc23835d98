"""The two Stage 1 recipes without any server: what each step's request carries, with realistic
step outputs (a P3 decision that names the gold letter and text, P2 lists that quote the gold).

Invariance is checked on the request a step would send (messages and schema), so a leak through
either the prompt or the schema fails."""
from __future__ import annotations

import dataclasses

import pytest

from fgrft.data import load_source
from fgrft.llm import check_schema, validate
from fgrft.llm.config import Sampling
from fgrft.llm.profiles import Profile, build_request
from fgrft.generation import guards
from fgrft.generation.guards import Rejected
from fgrft.generation.prompts import load_prompts
from fgrft.generation.steps import CHAIN_FIELDS, RECIPES, STEP_NAMES, THESIS_STEPS

PROFILE = Profile(kind="openai", reasoning=False, structured="json_schema")


@pytest.fixture(scope="module")
def thesis():
    return load_prompts("thesis")


@pytest.fixture(scope="module")
def plus():
    return load_prompts("fgrft_plus")


@pytest.fixture(scope="module")
def gout():
    (q,) = [q for q in load_source({"name": "sample"}).questions if q.answer == "Indomethacin"]
    return q


def realistic_outputs(q, lists: bool = True) -> dict:
    """Step outputs as a capable model writes them for ``q``: P2 and P3 name the gold."""
    gold = f"{q.answer_idx}: {q.answer}"
    item = (lambda s: [s]) if lists else (lambda s: s)
    p1 = {"angles": [{"angle": "crystals", "notes": "Needle-shaped negatively birefringent crystals.",
                      "intermediate_conclusion": "Acute gout."}],
          "final_answer": "The answer is: A",
          "option_alignment": {"chosen_letter": "A", "why": "Lowers urate.", "confidence": 0.6}}
    p2 = {"verdict": "Error",
          "correct_reasoning": ["The crystals identify acute gouty arthritis."],
          "incorrect_reasoning": ["Allopurinol is not started during an acute flare."],
          "correction_guidance": {"must_add": item(f"An NSAID such as {q.answer} treats the flare."),
                                  "must_fix": item("Urate-lowering drugs wait until the flare settles."),
                                  "key_knowledge": item(f"The answer is {gold}.")},
          "improvement_suggestions": ["Separate acute from chronic management."]}
    chain = {f: f"{f.replace('_', ' ')} of the case." for f in CHAIN_FIELDS}
    chain["decision"] = f"The answer is {q.answer_idx}: {q.answer}."
    p4 = {"natural_reasoning": "Okay, so a red hot big toe after a night of drinking. Hmm, the crystals "
                               "are needle-shaped and negatively birefringent, so this is gout. Wait, "
                               "the question asks what to give now, during the flare, so an NSAID."}
    return {"p1": p1, "p2": p2, "p3": chain, "p4": p4}


def request(prompts, step, q, outputs, **kw) -> dict:
    schema = prompts.recipe.steps[step].schema("".join(sorted(q.options)), 2048)
    return build_request(PROFILE, "gpt-4o", prompts.messages(step, q, outputs, **kw),
                         Sampling(temperature=0.5, max_tokens=2048), schema=schema,
                         schema_name=f"fgrft_{step}")


def other_gold(q):
    letter = next(x for x in sorted(q.options) if x != q.answer_idx)
    return dataclasses.replace(q, answer_idx=letter, answer=q.options[letter])


def other_options(q):
    """The same stem and gold, the other options reworded and reordered."""
    options = {k: (v if k == q.answer_idx else f"{v} (oral)") for k, v in q.options.items()}
    return dataclasses.replace(q, options=options, id="")


def test_thesis_p5_never_changes_with_options_gold_or_the_decision(thesis, gout):
    q, outputs = gout, realistic_outputs(gout)
    base = request(thesis, "p5", q, outputs)
    assert q.answer not in base["messages"][0]["content"]
    for changed_q, changed_out in [
            (other_gold(q), realistic_outputs(other_gold(q))),     # another gold, and its decision
            (other_options(q), outputs),                           # other option texts
            (q, {**outputs, "p3": {**outputs["p3"], "decision": "The answer is D: Febuxostat."}})]:
        assert request(thesis, "p5", changed_q, changed_out) == base


def test_thesis_gate_never_changes_with_question_or_options(thesis, gout):
    q, outputs = gout, realistic_outputs(gout)
    base = request(thesis, "gate", q, outputs)
    reworded = dataclasses.replace(other_options(q), question=q.question.replace("26-year-old", "40-year-old"))
    assert request(thesis, "gate", reworded, outputs) == base
    text = base["messages"][0]["content"]
    assert "great toe" not in text and "Probenecid" not in text  # no stem, no non-gold option
    assert f'"gold": "{q.answer_idx}: {q.answer}"' in text       # the compressed feedback carries it


def test_thesis_p4_sees_the_chain_and_the_question_but_no_options(thesis, gout):
    q, outputs = gout, realistic_outputs(gout)
    text = thesis.render("p4", q, outputs)
    assert q.question in text and outputs["p3"]["mechanism_link"] in text
    assert "Probenecid" not in text and "Febuxostat" not in text
    assert request(thesis, "p4", other_options(q), outputs) == request(thesis, "p4", q, outputs)


@pytest.mark.parametrize("recipe", ["thesis", "fgrft_plus"])
def test_p1_request_never_changes_with_the_gold(recipe, gout):
    prompts = load_prompts(recipe)
    q = gout
    base = request(prompts, "p1", q, {})
    for letter in sorted(q.options):
        moved = dataclasses.replace(q, answer_idx=letter, answer=q.options[letter])
        assert request(prompts, "p1", moved, {}) == base
    guards.check_answer_blind(prompts, q)


def test_thesis_revision_regenerates_from_p1_with_the_note(thesis, plus, gout):
    q, outputs = gout, realistic_outputs(gout)
    rejected = {**outputs["p3"], "observation": "A REJECTED OBSERVATION."}
    revision = thesis.render("p3", q, {**outputs, "p3": rejected}, revise_note="Name the crystals.")
    first = thesis.render("p3", q, outputs)
    assert "Name the crystals." in revision and "A REJECTED OBSERVATION." not in revision
    assert revision.replace("Name the crystals.", "") != first  # the note is the only addition
    assert outputs["p1"]["angles"][0]["notes"] in revision and "must_add" in revision
    # the project's variant edits the rejected chain instead
    assert "A REJECTED OBSERVATION." in plus.render("p3", q, {**outputs, "p3": rejected},
                                                     revise_note="Name the crystals.")


def test_thesis_steps_see_exactly_the_tables_inputs(thesis, gout):
    q, outputs = gout, realistic_outputs(gout)
    ctx = {s: set(thesis.recipe.context(s, q, outputs)) for s in STEP_NAMES}
    assert ctx["p1"] == {"question", "options", "letters"}
    assert ctx["p2"] == {"question", "options", "letters", "gold_letter", "gold_text", "student_analysis"}
    assert ctx["p3"] == ctx["p2"] | {"feedback", "revise_note"}
    assert ctx["gate"] == {"feedback", "chain"}
    assert ctx["p4"] == {"question", "chain"}
    assert ctx["p5"] == {"question", "natural_reasoning"}


def test_thesis_schemas_state_only_what_the_prompts_state(gout):
    for step in STEP_NAMES:
        schema = THESIS_STEPS[step].schema("ABCD", 256)   # a small cap changes nothing
        assert schema == THESIS_STEPS[step].schema("ABCD", 8192)
        check_schema(schema, strict=True)
        assert "maxLength" not in repr(schema) and "minLength" not in repr(schema)
    p2 = THESIS_STEPS["p2"].schema("ABCD", 2048)["properties"]
    guidance = p2["correction_guidance"]["properties"]
    assert all(g["type"] == "array" and "minItems" not in g and "maxItems" not in g for g in guidance.values())
    # P2's guidance as lists, empty lists included, is valid; a single string is not
    out = realistic_outputs(gout)["p2"]
    assert validate(out, THESIS_STEPS["p2"].schema("ABCD", 2048)) == []
    empty = {**out, "correction_guidance": {"must_add": [], "must_fix": [], "key_knowledge": []}}
    assert validate(empty, THESIS_STEPS["p2"].schema("ABCD", 2048)) == []
    assert validate(realistic_outputs(gout, lists=False)["p2"], THESIS_STEPS["p2"].schema("ABCD", 2048))
    # a 3,000-character natural reasoning is fine under thesis, cut under fgrft_plus's caps
    long_text = {"natural_reasoning": "Okay. " * 500}
    assert validate(long_text, THESIS_STEPS["p4"].schema("ABCD", 2048)) == []
    assert validate(long_text, RECIPES["fgrft_plus"].steps["p4"].schema("ABCD", 2048))


def test_final_answer_rule_follows_the_recipe(gout):
    q = gout
    thesis_rule, plus_rule = RECIPES["thesis"].final_rule, RECIPES["fgrft_plus"].final_rule
    committed = "Indomethacin is the treatment of choice: the answer is B."
    uncommitted = "An NSAID settles the acute flare; urate lowering waits until it has resolved."
    wrong = "The answer is D (Febuxostat): it lowers urate."
    assert guards.check_final(committed, q, thesis_rule) is True
    assert guards.check_final(uncommitted, q, thesis_rule) is False    # kept, counted
    with pytest.raises(Rejected) as r:
        guards.check_final(wrong, q, thesis_rule)
    assert r.value.reason == "final_disagrees_with_gold"
    assert guards.check_final(committed, q, plus_rule) is True
    for text in (uncommitted, wrong):
        with pytest.raises(Rejected):
            guards.check_final(text, q, plus_rule)
    with pytest.raises(Rejected):
        guards.check_nonempty("  ", "P5")


def test_json_object_mode_sends_json_mode_and_no_schema():
    schema = THESIS_STEPS["p5"].schema("ABCD", 512)
    messages = [{"role": "user", "content": "x"}]
    sampling = Sampling(temperature=0.6, max_tokens=512)
    strict = build_request(PROFILE, "gpt-4o", messages, sampling, schema=schema, schema_name="fgrft_p5")
    mode = build_request(dataclasses.replace(PROFILE, structured="json_object"), "gpt-4o", messages,
                         sampling, schema=schema, schema_name="fgrft_p5")
    assert strict["response_format"]["json_schema"]["schema"] == schema
    assert mode["response_format"] == {"type": "json_object"}


def test_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="fgrft_plus"):
        load_prompts("thesis_v2")
