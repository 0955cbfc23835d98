"""Stage 1 steps without any server: prompts (who sees the gold), schemas, guards, progress."""
from __future__ import annotations

import dataclasses
import io
import json
import re

import jinja2
import pytest

from tests.support.step_responder import instance
from fgrft.data import load_source
from fgrft.llm import check_schema, validate
from fgrft.generation import guards
from fgrft.generation.guards import LeakError, Rejected
from fgrft.generation.progress import Progress
from fgrft.generation.prompts import PromptSet, load_prompts
from fgrft.generation.steps import (CHAIN_FIELDS, STEP_NAMES, STEPS, compressed_feedback,
                                  max_answer_chars)


@pytest.fixture(scope="module")
def prompts():
    return load_prompts("fgrft_plus")


@pytest.fixture(scope="module")
def question():
    # The gout item: gold B "Indomethacin", which also appears among the options.
    (q,) = [q for q in load_source({"name": "sample"}).questions if q.answer == "Indomethacin"]
    return q


def outputs_for(letters: str = "ABCD", max_tokens: int = 2048) -> dict:
    out = {name: instance(STEPS[name].schema(letters, max_tokens)) for name in ("p1", "p2", "p4")}
    out["p3"] = instance(STEPS["p3"].schema(letters, max_tokens))["reasoning_chain"]
    return out


def rendered(prompts, q):
    outputs = outputs_for()
    texts = {step: prompts.render(step, q, outputs) for step in STEP_NAMES}
    texts["p3_revision"] = prompts.render("p3", q, outputs, revise_note="Name the crystals.")
    return texts


def test_p1_is_answer_agnostic_and_the_verifier_steps_get_the_gold(prompts, question):
    q = question
    texts = rendered(prompts, q)
    other = guards.with_other_gold(q)
    assert other.answer_idx != q.answer_idx
    # P1 is byte-identical whatever the gold: nothing about the answer reaches it.
    assert texts["p1"] == prompts.render("p1", other)
    # The gold text occurs in P1 only where the options list it (once), never as "the answer".
    assert texts["p1"].count(q.answer) == (q.question + "\n" + "\n".join(q.options.values())).count(q.answer)
    assert f"{q.answer_idx}: {q.answer}" not in texts["p1"]
    assert not re.search(rf"answer\W+(is\W+)?{q.answer_idx}\b", texts["p1"], re.I)
    assert "gold" not in texts["p1"].lower() and "correct answer" not in texts["p1"].lower()
    # P2, P3 (and its revision) and the gate see the gold as "letter: text"; P2 changes with it.
    gold = f"{q.answer_idx}: {q.answer}"
    for step in ("p2", "p3", "p3_revision", "gate"):
        assert gold in texts[step], step
    assert prompts.render("p2", other, outputs_for()) != texts["p2"]
    # The verifier sees the question, the options and P1's analysis.
    p1_json = json.dumps(outputs_for()["p1"], ensure_ascii=False, indent=1)
    assert q.question in texts["p2"] and "D. Febuxostat" in texts["p2"] and p1_json in texts["p2"]
    # P4 and P5 get no gold of their own (they work from the chain).
    for step in ("p4", "p5"):
        assert gold not in texts[step]
    # The revision carries the gate's note and the chain it judged.
    assert "Name the crystals." in texts["p3_revision"] and "Name the crystals." not in texts["p3"]


def test_a_template_that_reaches_for_the_gold_fails_instead_of_leaking(prompts, question):
    leaky = PromptSet({**prompts.texts, "p1": prompts.texts["p1"] + "\nHint: {{ gold_letter }}"}, prompts.recipe)
    with pytest.raises(jinja2.UndefinedError):
        leaky.render("p1", question)
    guards.check_answer_blind(prompts, question)  # the real templates pass


def test_the_answer_blind_guard_catches_a_gold_dependent_p1(prompts, question, monkeypatch):
    import dataclasses

    real = prompts.recipe.context

    def leaking(step, q, outputs, **kw):
        variables = real(step, q, outputs, **kw)
        if step == "p1":
            variables = {**variables, "question": variables["question"] + f" ({q.answer_idx})"}
        return variables

    leaky = PromptSet(prompts.texts, dataclasses.replace(prompts.recipe, context=leaking))
    with pytest.raises(LeakError):
        guards.check_answer_blind(leaky, question)


def test_feedback_is_the_compressed_teacher_feedback(question):
    p2 = instance(STEPS["p2"].schema("ABCD", 2048))
    fb = compressed_feedback(question, p2)
    assert set(fb) == {"gold", "must_add", "must_fix", "key_knowledge", "correct_points", "forbidden"}
    assert fb["gold"] == "B: Indomethacin"
    assert fb["forbidden"] == p2["incorrect_reasoning"] and fb["correct_points"] == p2["correct_reasoning"]


def test_prompts_are_identified_by_content_hash(prompts):
    assert set(prompts.hashes) == set(STEP_NAMES)
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in prompts.hashes.values())
    assert len(set(prompts.hashes.values())) == len(STEP_NAMES)
    edited = PromptSet({**prompts.texts, "p4": prompts.texts["p4"] + " "}, prompts.recipe)
    changed = {s for s in STEP_NAMES if edited.hashes[s] != prompts.hashes[s]}
    assert changed == {"p4"} and edited.combined_hash != prompts.combined_hash


@pytest.mark.parametrize("max_tokens", [384, 768, 2048, 8192])
@pytest.mark.parametrize("step", STEP_NAMES)
def test_schemas_are_strict_bounded_and_fit_the_output_cap(step, max_tokens):
    schema = STEPS[step].schema("ABCD", max_tokens)
    check_schema(schema, strict=True)  # what OpenAI's strict mode accepts

    def strings(node):
        if node.get("type") == "string" and "enum" not in node:
            yield node
        for sub in list((node.get("properties") or {}).values()) + [node.get("items") or {}]:
            if sub:
                yield from strings(sub)

    assert all("maxLength" in s for s in strings(schema))
    if step != "p1" or max_tokens >= 768:  # P1's floors do not fit a toy 384-token cap
        assert max_answer_chars(schema) <= 3 * max_tokens
    assert not validate(instance(schema), schema)


def test_verdicts_are_enums_and_nothing_defaults():
    assert STEPS["p2"].schema("ABCD", 2048)["properties"]["verdict"]["enum"] == ["Correct", "Error"]
    gate = STEPS["gate"].schema("ABCD", 2048)
    assert gate["properties"]["verdict"]["enum"] == ["Pass", "Revise"]
    assert validate({"revise_note": ""}, gate)  # a missing verdict is an error, not a Pass
    chain = STEPS["p3"].schema("ABC", 2048)["properties"]["reasoning_chain"]
    assert list(chain["properties"]) == list(CHAIN_FIELDS)
    assert validate({"reasoning_chain": {f: "" for f in CHAIN_FIELDS}}, STEPS["p3"].schema("ABC", 2048))
    p1 = STEPS["p1"].schema("ABC", 2048)["properties"]
    assert p1["option_alignment"]["properties"]["letter"]["enum"] == ["A", "B", "C"]
    assert p1["final_answer"]["enum"][-1] == "The answer is: C"


def test_guards(question):
    q = question
    assert guards.gate_verdict({"verdict": "Pass", "revise_note": "  "}) == ("Pass", "")
    assert guards.gate_verdict({"verdict": "Revise", "revise_note": "Add X."}) == ("Revise", "Add X.")
    with pytest.raises(Rejected) as r:
        guards.gate_verdict({"verdict": "Revise", "revise_note": ""})
    assert r.value.reason == "parse_failure"
    guards.check_decision({"decision": "The answer is B: Indomethacin."}, q)
    for text in ("The answer is A: Allopurinol.", "It is either B or C.", "Unclear."):
        with pytest.raises(Rejected) as r:
            guards.check_decision({"decision": text}, q)
        assert r.value.reason == "decision_disagrees_with_gold"
    guards.check_final("The answer is B (Indomethacin). NSAIDs treat the acute flare.", q)
    with pytest.raises(Rejected) as r:
        guards.check_final("The answer is D (Febuxostat).", q)
    assert r.value.reason == "final_disagrees_with_gold"
    with pytest.raises(Rejected) as r:
        guards.check_target_format("Okay, so...\n## Final Response\nB", "P4")
    assert r.value.reason == "format_violation"
    guards.check_target_format("Okay, so the crystals point to gout. # not a heading", "P4")
    assert guards.student_letter({"final_answer": "The answer is: C"}) == "C"


def test_progress_counts_what_it_is_told():
    counters = type("C", (), {"calls": 7, "cache_hits": 2, "cost_usd": 0.125})()
    out = io.StringIO()
    p = Progress(4, counters, stream=out, tty=True)
    outcome = dataclasses.make_dataclass("O", [("kept", bool), ("revised", int)])
    p.finished(outcome(True, 1))
    p.finished(outcome(False, 0))
    p.draw()
    line = out.getvalue()
    assert line.startswith("\r") and "[############............]" in line
    assert "2/4 done | kept 1 | dropped 1 | revised 1 | calls 7 | cache hits 2 | $0.1250" in line
    assert Progress(1, counters, stream=io.StringIO()).tty is False  # not a terminal: log lines


def test_step_sampling_refuses_steps_a_role_does_not_run_and_misspelt_keys():
    from fgrft.llm import ConfigError
    from fgrft.generation.job import step_sampling

    ok = {"generator": {"steps": {"p1": {"temperature": 0.7}, "p5": {}}},
          "verifier": {"steps": {"p2": {"temperature": 0.3}, "gate": {}}}}
    assert step_sampling(ok) == {"p1": {"temperature": 0.7}, "p5": {}, "p2": {"temperature": 0.3}, "gate": {}}
    with pytest.raises(ConfigError, match="generator.steps.p2"):
        step_sampling({**ok, "generator": {"steps": {"p2": {}}}})
    with pytest.raises(ConfigError, match="unknown key"):
        step_sampling({**ok, "verifier": {"steps": {"gate": {"temprature": 0.3}}}})
