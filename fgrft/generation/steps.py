"""The six Stage 1 steps of each recipe: who runs each, what it sees, and the JSON it must return.

Two recipes (``recipe=``), each a :class:`Recipe` in :data:`RECIPES`:

* ``thesis`` (the default) is the thesis's notebook step for step (THESIS.md, "Stage 1"):

    P1    generator  student                  question, options                      (no gold)
    P2    verifier   teacher-judge            question, options, gold, P1's JSON
    P3    generator  guided corrector         question, options, gold, feedback, P1's JSON
    gate  verifier   validation gate (P2.5)   feedback, P3's JSON      (no question, no options)
    P3'   generator  revision                 P3's inputs again + the gate's note (a regeneration)
    P4    generator  conversational CoT       question (no options), P3's chain
    P5    generator  final response           question, P4's text   (no options, no decision)

  Its schemas state only what its prompts state: field names, verdict enums, the option
  letter, the counts the prompts give (3-5 angles, 2-4 differentials, 1-3 suggestions); no
  string length caps, and P2's guidance items are lists.

* ``fgrft_plus`` is this project's variant (prompts/README.md lists every difference and why):

    P1    generator  student: multi-angle reasoning          question, options           (no gold)
    P2    verifier   teacher-judge                           + gold, P1's analysis
    P3    generator  guided corrector ("stitch")             + P1's analysis, feedback (has gold)
    gate  verifier   validation gate (P2.5)                  + feedback, P3's chain
    P3'   generator  one revision: P3 again with the gate's note and the chain it judged
    P4    generator  conversational chain of thought         question, options, P3's chain
    P5    generator  final response                          question, options, P4's text, P3's decision

*What each step sees* is enforced by the recipe's context function (:func:`context`,
:func:`thesis_context`): a step's template only receives the
variables listed there, and templates render with ``StrictUndefined``, so a template that
reaches for anything else (the gold answer in P1, say) fails to render instead of leaking.

*Schemas* (``fgrft_plus``). Every answer is a JSON object with every property required, no extra properties
(OpenAI's strict mode), enums for verdicts (``Correct|Error``, ``Pass|Revise``) and option
letters, and bounded strings. The bounds are fitted to the step's output cap
(:func:`fitted_scale`): with every string at its maximum the answer still fits in
``max_tokens`` at a conservative 3 characters per token, so a constrained decoder closes the
object instead of being cut off mid-string (an answer cut by the cap is unusable JSON).
Full-size bounds apply from about 3,000 output tokens up; smaller caps shrink them
proportionally.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fgrft.records import Question, format_options

GENERATOR, VERIFIER = "generator", "verifier"
STEP_NAMES = ("p1", "p2", "p3", "gate", "p4", "p5")
CHAIN_FIELDS = ("observation", "key_facts", "medical_knowledge", "hypotheses",
                "differential_evaluation", "criteria_or_tests", "mechanism_link",
                "counterarguments", "synthesis", "decision")
P2_VERDICTS = ("Correct", "Error")
GATE_VERDICTS = ("Pass", "Revise")
# Upper bound on characters per generated token used to fit string bounds (English prose runs
# ~4; JSON punctuation and rare words fewer).
CHARS_PER_TOKEN_BOUND = 3
MIN_STRING = 8      # no bound is fitted below this many characters
MIN_SCALE = 0.02


# ----------------------------------------------------------------------------- schema helpers


def _text(chars: int, scale: float) -> dict:
    """A non-empty string of at most ``chars * scale`` characters (never an empty default)."""
    return {"type": "string", "minLength": 1, "maxLength": max(MIN_STRING, int(chars * scale))}


def _obj(**props: dict) -> dict:
    return {"type": "object", "properties": props, "required": list(props),
            "additionalProperties": False}


def _list(item: dict, lo: int, hi: int) -> dict:
    return {"type": "array", "items": item, "minItems": lo, "maxItems": hi}


_UNIT = {"type": "number", "minimum": 0, "maximum": 1}


def p1_schema(letters: str, scale: float) -> dict:
    return _obj(
        angles=_list(_obj(angle=_text(80, scale), notes=_text(500, scale),
                          conclusion=_text(200, scale)), 3, 5),
        knowledge=_obj(pathophysiology=_text(400, scale), typical_presentation=_text(300, scale),
                       diagnostic_criteria=_text(300, scale)),
        differentials=_list(_obj(diagnosis=_text(100, scale), supports=_text(250, scale),
                                 counters=_text(250, scale), likelihood=_UNIT), 2, 4),
        synthesis=_obj(best_hypothesis=_text(150, scale), why=_text(400, scale),
                       why_not_others=_text(400, scale)),
        option_alignment=_obj(letter={"type": "string", "enum": list(letters)},
                              why=_text(300, scale), confidence=_UNIT),
        final_answer={"type": "string", "enum": [f"The answer is: {x}" for x in letters]},
    )


def p2_schema(letters: str, scale: float) -> dict:
    return _obj(
        verdict={"type": "string", "enum": list(P2_VERDICTS)},
        correct_reasoning=_list(_text(200, scale), 0, 5),
        incorrect_reasoning=_list(_text(200, scale), 0, 5),
        correction_guidance=_obj(must_add=_text(250, scale), must_fix=_text(250, scale),
                                 key_knowledge=_text(250, scale)),
        improvement_suggestions=_list(_text(200, scale), 1, 3),
    )


def p3_schema(letters: str, scale: float) -> dict:
    sizes = {"decision": 200}
    chain = _obj(**{f: _text(sizes.get(f, 300), scale) for f in CHAIN_FIELDS})
    return _obj(reasoning_chain=chain)


def gate_schema(letters: str, scale: float) -> dict:
    # The note may be empty (Pass); a Revise without one is refused by the guard, not here,
    # because OpenAI's strict mode forbids the anyOf at the root that would express it.
    return _obj(verdict={"type": "string", "enum": list(GATE_VERDICTS)},
                revise_note={"type": "string", "maxLength": max(MIN_STRING, int(250 * scale))})


def p4_schema(letters: str, scale: float) -> dict:
    return _obj(natural_reasoning=_text(2600, scale))


def p5_schema(letters: str, scale: float) -> dict:
    return _obj(response=_text(1100, scale))


# ----------------------------------------------------------------------------- fitting


def _size(schema: Mapping[str, Any]) -> tuple[int, int]:
    """(structural chars, text chars) of the largest answer ``schema`` allows."""
    t = schema.get("type")
    if t == "object":
        struct, text = 2, 0
        for name, sub in schema["properties"].items():
            s, x = _size(sub)
            struct, text = struct + len(name) + 4 + s, text + x
        return struct, text
    if t == "array":
        s, x = _size(schema["items"])
        n = schema.get("maxItems", 1)
        return 2 + n * (s + 1), n * x
    if "enum" in schema:
        return max(len(json.dumps(e)) for e in schema["enum"]), 0
    if t == "string":
        return 2, schema.get("maxLength", 0)
    return 24, 0  # a number, written out with its digits


def fitted_scale(build: Callable[[str, float], dict], letters: str, max_tokens: int) -> float:
    """The largest scale <= 1 whose fullest answer fits ``max_tokens``."""
    struct, text = _size(build(letters, 1.0))
    room = max_tokens * CHARS_PER_TOKEN_BOUND - struct
    return max(MIN_SCALE, min(1.0, room / text)) if text else 1.0


def max_answer_chars(schema: Mapping[str, Any]) -> int:
    struct, text = _size(schema)
    return struct + text


# ----------------------------------------------------------------------------- steps


@dataclass(frozen=True)
class Step:
    name: str
    role: str
    template: str            # file under prompts/
    build_schema: Callable[[str, float], dict]
    expected_output_tokens: int   # a typical full-size answer (dry-run estimates)
    inputs: tuple[str, ...]       # earlier outputs its prompt embeds (dry-run prompt sizes)

    def schema(self, letters: str, max_tokens: int) -> dict:
        return self.build_schema(letters, fitted_scale(self.build_schema, letters, max_tokens))


STEPS: dict[str, Step] = {s.name: s for s in (
    Step("p1", GENERATOR, "p1_student.txt", p1_schema, 950, ()),
    Step("p2", VERIFIER, "p2_verifier.txt", p2_schema, 450, ("p1",)),
    Step("p3", GENERATOR, "p3_corrector.txt", p3_schema, 700, ("p1", "p2")),
    Step("gate", VERIFIER, "gate_check.txt", gate_schema, 60, ("p2", "p3")),
    Step("p4", GENERATOR, "p4_conversation.txt", p4_schema, 550, ("p3",)),
    Step("p5", GENERATOR, "p5_response.txt", p5_schema, 230, ("p4",)),
)}


# ----------------------------------------------------------------------------- what each sees


def compressed_feedback(question: Question, p2: Mapping[str, Any]) -> dict:
    """The teacher feedback handed to P3 and the gate (THESIS.md): P2's guidance, its lists of
    correct and incorrect points, and the gold answer as "letter: text"."""
    guidance = p2["correction_guidance"]
    return {"gold": f"{question.answer_idx}: {question.answer}",
            "must_add": guidance["must_add"], "must_fix": guidance["must_fix"],
            "key_knowledge": guidance["key_knowledge"],
            "correct_points": list(p2["correct_reasoning"]),
            "forbidden": list(p2["incorrect_reasoning"])}


def chain_text(chain: Mapping[str, str]) -> str:
    """P3's chain as numbered lines, in its fixed order."""
    return "\n".join(f"{i}. {f.replace('_', ' ').capitalize()}: {chain[f]}"
                     for i, f in enumerate(CHAIN_FIELDS, 1))


def dump(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1)


def _stem(q: Question) -> dict:
    return {"question": q.question, "options": format_options(q.options),
            "letters": ", ".join(sorted(q.options))}


def context(step: str, q: Question, outputs: Mapping[str, Any], *,
            revise_note: str | None = None) -> dict[str, Any]:
    """The template variables of ``step`` for question ``q`` given earlier ``outputs``
    (``p1``, ``p2``, ``p3`` = the current chain, ``p4``). Nothing else reaches a prompt."""
    base = _stem(q)
    if step == "p1":
        return base  # answer-agnostic: the stem and the options, nothing about the gold
    if step == "p2":
        return {**base, "gold_letter": q.answer_idx, "gold_text": q.answer,
                "student_analysis": dump(outputs["p1"])}
    if step == "p3":
        revision = None
        if revise_note is not None:
            revision = {"note": revise_note, "previous_chain": chain_text(outputs["p3"])}
        return {**base, "student_analysis": dump(outputs["p1"]),
                "feedback": dump(compressed_feedback(q, outputs["p2"])), "revision": revision}
    if step == "gate":
        return {**base, "feedback": dump(compressed_feedback(q, outputs["p2"])),
                "chain": chain_text(outputs["p3"])}
    if step == "p4":
        return {**base, "chain": chain_text(outputs["p3"])}
    if step == "p5":
        return {**base, "natural_reasoning": outputs["p4"]["natural_reasoning"],
                "decision": outputs["p3"]["decision"]}
    raise KeyError(f"unknown step {step!r}; steps: {', '.join(STEP_NAMES)}")


def empty_outputs() -> dict[str, Any]:
    """Earlier outputs with every text empty: rendering a template with them measures the
    prompt's own size, to which a dry run adds the expected size of the embedded answers."""
    return {"p1": {},
            "p2": {"correction_guidance": {"must_add": "", "must_fix": "", "key_knowledge": ""},
                   "correct_reasoning": [], "incorrect_reasoning": []},
            "p3": {f: "" for f in CHAIN_FIELDS},
            "p4": {"natural_reasoning": ""}}


# ----------------------------------------------------------------------------- the thesis recipe
# Schemas that add no constraint the thesis's prompts did not state: no string length caps,
# lists unbounded unless the prompt gives a count. Objects still list every property as
# required and forbid extras (OpenAI's strict mode needs that of any schema it enforces).

_STR = {"type": "string"}


def _strs(lo: int = 0, hi: int | None = None) -> dict:
    out: dict[str, Any] = {"type": "array", "items": _STR}
    if lo:
        out["minItems"] = lo
    if hi is not None:
        out["maxItems"] = hi
    return out


def thesis_p1_schema(letters: str, scale: float) -> dict:
    return _obj(
        angles=_list(_obj(angle=_STR, notes=_STR, intermediate_conclusion=_STR), 3, 5),
        medical_knowledge=_obj(pathophysiology=_STR, typical_presentations=_STR,
                               diagnostic_criteria_or_tests=_STR),
        differentials=_list(_obj(diagnosis=_STR, supports=_STR, counters=_STR, likelihood=_UNIT),
                            2, 4),
        synthesis=_obj(best_hypothesis=_STR, why=_STR, why_others_fail=_STR),
        option_alignment=_obj(chosen_letter={"type": "string", "enum": list(letters)}, why=_STR,
                              confidence=_UNIT),
        final_answer={"type": "string", "enum": [f"The answer is: {x}" for x in letters]},
    )


def thesis_p2_schema(letters: str, scale: float) -> dict:
    return _obj(
        verdict={"type": "string", "enum": list(P2_VERDICTS)},
        correct_reasoning=_strs(),
        incorrect_reasoning=_strs(),
        correction_guidance=_obj(must_add=_strs(), must_fix=_strs(), key_knowledge=_strs()),
        improvement_suggestions=_strs(1, 3),
    )


def thesis_p3_schema(letters: str, scale: float) -> dict:
    return _obj(reasoning_chain=_obj(**{f: _STR for f in CHAIN_FIELDS}))


def thesis_gate_schema(letters: str, scale: float) -> dict:
    return _obj(verdict={"type": "string", "enum": list(GATE_VERDICTS)}, revise_note=_STR)


def thesis_p4_schema(letters: str, scale: float) -> dict:
    return _obj(natural_reasoning=_STR)


def thesis_p5_schema(letters: str, scale: float) -> dict:
    return _obj(response=_STR)


THESIS_STEPS: dict[str, Step] = {s.name: s for s in (
    Step("p1", GENERATOR, "p1_student.txt", thesis_p1_schema, 950, ()),
    Step("p2", VERIFIER, "p2_verifier.txt", thesis_p2_schema, 500, ("p1",)),
    Step("p3", GENERATOR, "p3_corrector.txt", thesis_p3_schema, 700, ("p1", "p2")),
    Step("gate", VERIFIER, "gate_check.txt", thesis_gate_schema, 60, ("p2", "p3")),
    Step("p4", GENERATOR, "p4_conversation.txt", thesis_p4_schema, 550, ("p3",)),
    Step("p5", GENERATOR, "p5_response.txt", thesis_p5_schema, 230, ("p4",)),
)}


def thesis_context(step: str, q: Question, outputs: Mapping[str, Any], *,
                   revise_note: str | None = None) -> dict[str, Any]:
    """The thesis's inputs per step (THESIS.md's Stage 1 table), nothing more."""
    stem = {"question": q.question, "options": format_options(q.options),
            "letters": ", ".join(sorted(q.options))}
    gold = {"gold_letter": q.answer_idx, "gold_text": q.answer}
    if step == "p1":
        return stem
    if step == "p2":
        return {**stem, **gold, "student_analysis": dump(outputs["p1"])}
    if step == "p3":
        # A revision is P3 again from P1's analysis with the gate's note, not an edit of the
        # chain the gate rejected.
        return {**stem, **gold, "student_analysis": dump(outputs["p1"]),
                "feedback": dump(compressed_feedback(q, outputs["p2"])),
                "revise_note": revise_note}
    if step == "gate":
        return {"feedback": dump(compressed_feedback(q, outputs["p2"])),
                "chain": dump({"reasoning_chain": dict(outputs["p3"])})}
    if step == "p4":
        return {"question": q.question, "chain": dump(dict(outputs["p3"]))}
    if step == "p5":
        return {"question": q.question, "natural_reasoning": outputs["p4"]["natural_reasoning"]}
    raise KeyError(f"unknown step {step!r}; steps: {', '.join(STEP_NAMES)}")


# ----------------------------------------------------------------------------- recipes

FINAL_MUST_NAME_GOLD = "must_name_gold"       # no letter, or another letter: dropped
FINAL_MUST_NOT_NAME_OTHER = "must_not_name_other"  # another letter dropped; none kept, counted


@dataclass(frozen=True)
class Recipe:
    """One way of running the six steps: prompts, schemas, inputs and the final-answer rule."""

    name: str
    prompt_subdir: str            # under prompts/ ("" = prompts/ itself)
    steps: dict[str, Step]
    context: Callable[..., dict[str, Any]]
    final_rule: str               # FINAL_MUST_NAME_GOLD | FINAL_MUST_NOT_NAME_OTHER
    revision_edits_chain: bool    # a revision sees the rejected chain (else regenerates from P1)


RECIPES: dict[str, Recipe] = {
    # P5 never sees the options, so a final text that names no letter is the thesis's normal
    # output (0 of its 1,000 published responses start with "The answer is"): kept, counted.
    "thesis": Recipe("thesis", "thesis", THESIS_STEPS, thesis_context, FINAL_MUST_NOT_NAME_OTHER,
                     revision_edits_chain=False),
    # The project's variant keeps its templates where they always were (prompts/*.txt).
    "fgrft_plus": Recipe("fgrft_plus", "", STEPS, context, FINAL_MUST_NAME_GOLD,
                         revision_edits_chain=True),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ValueError(f"recipe={name!r} is not a Stage 1 recipe; recipes: "
                         f"{', '.join(RECIPES)}") from None
