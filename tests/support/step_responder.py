"""The scripted Stage 1 responder: schema-valid answers for every pipeline step.

Used by the pipeline tests and by ``benchmarks/pipeline.py`` (the fault and batch servers
answer with it). :class:`StepResponder` runs every chain through all six steps and keeps every
question; :class:`MixResponder` gives the benchmark's realistic mix of verdicts, drops,
revisions and unusable verifier answers.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from tests.support.fault_server import Action, Request, reply, reply_json

MODEL = "bench-model"
_GOLD = re.compile(r'"gold": "([A-N]): ')
_CORRECT = re.compile(r"Correct answer: ([A-N]): ")
_CONCLUSION = re.compile(r"Conclusion reached: .*?answer is ([A-N])\b")
_WORDS = ("The findings fit the mechanism described and the key laboratory result supports it "
          "while the alternatives leave the central finding unexplained. ")


# ----------------------------------------------------------------------------- responder


def step_of(request: Request) -> str | None:
    """The pipeline step a request is for, from its schema's name (``fgrft_<step>``)."""
    fmt = (request.body or {}).get("response_format") or {}
    name = (fmt.get("json_schema") or {}).get("name") or ""
    return name[len("fgrft_"):] if name.startswith("fgrft_") else None


def schema_of(request: Request) -> dict:
    return (request.body or {})["response_format"]["json_schema"]["schema"]


def instance(schema: dict, text: str = _WORDS) -> Any:
    """A valid instance of ``schema`` (the subset the pipeline uses): first enum values,
    minimum numbers, at least one array item, strings cut to their maxLength."""
    if "enum" in schema:
        return schema["enum"][0]
    t = schema.get("type")
    if t == "object":
        return {k: instance(v, text) for k, v in schema["properties"].items()}
    if t == "array":
        n = min(max(schema.get("minItems", 0), 1), schema.get("maxItems", 1))
        return [instance(schema["items"], text) for _ in range(n)]
    if t == "string":
        limit = schema.get("maxLength", 200)
        return (text * (1 + limit // len(text)))[:min(limit, 120)].strip() or "x"
    if t in ("number", "integer"):
        return schema.get("minimum", 0)
    raise ValueError(f"no instance for schema {schema}")


def gold_letter(request: Request) -> str | None:
    for pattern in (_GOLD, _CORRECT, _CONCLUSION):
        m = pattern.search(request.last_content)
        if m:
            return m.group(1)
    return None


class StepResponder:
    """Answers each step with schema-valid JSON; the chain agrees with the gold answer.

    ``overrides`` maps a step to a function ``(request, answer) -> Action | dict`` that may
    replace the answer (a gate that says Revise, a final answer that disagrees, a fault).
    """

    def __init__(self, overrides: dict[str, Callable[[Request, dict], Any]] | None = None):
        self.overrides = dict(overrides or {})
        self.steps: Counter[str] = Counter()

    def __call__(self, request: Request) -> Action:
        step = step_of(request)
        if step is None:
            return reply("not a pipeline request")
        self.steps[step] += 1
        answer = instance(schema_of(request))
        gold = gold_letter(request)
        if step == "p3":
            answer["reasoning_chain"]["decision"] = f"The answer is {gold}."
        elif step == "p5":
            answer["response"] = f"The answer is {gold}. " + answer["response"]
        elif step == "gate":
            answer["revise_note"] = ""
        override = self.overrides.get(step)
        if override is not None:
            answer = override(request, answer)
            if isinstance(answer, Action):
                return answer
        return reply_json(answer)


FALLBACK_MODEL = "bench-fallback"
# The realistic mix's odds, per chain step (see the module docstring).
MIX = {"p2_error": 0.5, "gate_revise": 0.33, "decision_off": 0.06, "p4_heading": 0.04,
       "final_off": 0.06, "verifier_unusable": 0.03}


def _draw(request: Request, what: str) -> float:
    """A uniform number in [0, 1) fixed by the request's model, step and content (not its seed,
    so every re-ask of an unusable answer draws the same)."""
    text = f"{what}:{(request.body or {}).get('model')}:{step_of(request)}:{request.last_content}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2 ** 64


class MixResponder(StepResponder):
    """:class:`StepResponder` with the realistic mix's random verdicts, drops, revisions and
    unusable verifier answers (the fallback model always answers usably)."""

    def __call__(self, request: Request) -> Action:
        step = step_of(request)
        model = (request.body or {}).get("model")
        if (step in ("p2", "gate") and model != FALLBACK_MODEL
                and _draw(request, "unusable") < MIX["verifier_unusable"]):
            self.steps[step] += 1
            return reply('{"verdict": ', kind="unusable")
        return super().__call__(request)

    def _mixed(self, step: str, request: Request, answer: dict) -> dict:
        gold = gold_letter(request) or "A"
        wrong = "B" if gold != "B" else "C"
        if step == "p2":
            answer["verdict"] = "Error" if _draw(request, "p2") < MIX["p2_error"] else "Correct"
        elif step == "gate":
            revise = _draw(request, "gate") < MIX["gate_revise"]
            answer["verdict"] = "Revise" if revise else "Pass"
            answer["revise_note"] = "Name the mechanism explicitly." if revise else ""
        elif step == "p3" and _draw(request, "p3") < MIX["decision_off"]:
            answer["reasoning_chain"]["decision"] = f"The answer is {wrong}."
        elif step == "p4" and _draw(request, "p4") < MIX["p4_heading"]:
            answer["natural_reasoning"] = "## Thinking\n" + answer["natural_reasoning"]
        elif step == "p5" and _draw(request, "p5") < MIX["final_off"]:
            answer["response"] = f"The answer is {wrong}."
        return answer

    def __init__(self):
        super().__init__({s: (lambda step: lambda r, a: self._mixed(step, r, a))(s)
                          for s in ("p2", "gate", "p3", "p4", "p5")})


def write_questions(path: Path, n: int) -> list[str]:
    """``n`` distinct questions: the bundled sample repeated, each copy's stem marked."""
    from fgrft.data import bundled_path

    rows = next(iter(json.loads(bundled_path("source_sample.json").read_text()).values()))
    out = []
    for i in range(n):
        row = dict(rows[i % len(rows)])
        row["question"] = f"{row['question']} (Case {i + 1}.)"
        out.append(row)
    path.write_text(json.dumps({"bench_questions": out}))
    return [r["question"] for r in out]
