"""The six-step chain per question, in process, against a real OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import asyncio

from fgrft.config import PRICES_FILE
from tests.support.step_responder import StepResponder, step_of
from fgrft.data import load_source
from fgrft.llm import EndpointSettings, Engine, Ledger, RetryPolicy, load_prices
from fgrft.generation.prompts import load_prompts
from fgrft.generation.run import Fallback, Pipeline, RunSettings
from tests.support.fault_server import error, length, refusal, truncated

PROMPTS = load_prompts("fgrft_plus")
QUESTIONS = load_source({"name": "sample"}).questions


def run(server, questions=QUESTIONS[:1], *, max_revisions=1, regate=False, fallback=None,
        concurrency=8, window=8, retries=2, prompts=PROMPTS, shared_lane=False):
    async def go():
        policy = RetryPolicy(max_retries=retries, base_delay_s=0.01, max_delay_s=0.02)
        async with Engine(ledger=Ledger(load_prices(PRICES_FILE)), retry=policy) as engine:
            def ep(model, name):
                return engine.endpoint(EndpointSettings(base_url=server.base_url, model=model, kind="vllm",
                                                      name=name, concurrency=concurrency, timeout_s=10))
            fb = None
            if fallback is not None:
                fb = Fallback(ep("fb-model", "verifier_fallback"), 0.3, fallback)
            roles = {"generator": ep("gen-model", "generator"),
                     "verifier": ep("gen-model" if shared_lane else "ver-model", "verifier")}
            pipeline = Pipeline(roles,
                                prompts, RunSettings(max_tokens={"generator": 1024, "verifier": 1024},
                                                     sampling={"p1": {"temperature": 0.7}, "p2": {"temperature": 0.3}},
                                                     max_revisions=max_revisions, regate=regate, run_id="run-1"),
                                fb)
            outcomes = await pipeline.run_all(questions, window=window)
            return outcomes, pipeline
    return asyncio.run(go())


def steps_sent(server):
    return [(step_of(r), r.body["model"]) for r in server.requests]


def gate_says(*verdicts):
    """A gate override answering with these verdicts in turn (per question: one question)."""
    seq = list(verdicts)

    def override(request, answer):
        verdict = seq.pop(0) if len(seq) > 1 else seq[0]
        return {"verdict": verdict, "revise_note": "Name the crystal type." if verdict == "Revise" else ""}
    return override


def test_a_good_chain_is_kept_with_its_record(fault_server):
    fault_server.responder = StepResponder()
    (o,), _ = run(fault_server)
    assert o.kept and o.reason is None
    assert steps_sent(fault_server) == [("p1", "gen-model"), ("p2", "ver-model"), ("p3", "gen-model"),
                                        ("gate", "ver-model"), ("p4", "gen-model"), ("p5", "gen-model")]
    r = o.record.to_dict()
    q = QUESTIONS[0]
    assert r["id"] == q.id and r["source"] == q.source
    assert r["Question"] == q.text_with_options and r["Question"].endswith("D. Febuxostat")
    assert r["gold"] == {"letter": q.answer_idx, "text": q.answer}
    assert r["Response"].startswith(f"The answer is {q.answer_idx}.")
    m = r["meta"]
    assert m["verifier_verdict"] == "Correct" and m["gate_verdict"] == "Pass" and m["revised"] is False
    assert m["student_letter"] == "A" and m["run_id"] == "run-1"
    assert m["prompt_hashes"] == PROMPTS.hashes
    assert m["models"] == {"p1": "gen-model", "p2": "ver-model", "p3": "gen-model", "gate": "ver-model",
                           "p4": "gen-model", "p5": "gen-model"}
    # per-step sampling and a response_format with the step's schema on every call
    p1 = fault_server.requests[0].body
    assert p1["temperature"] == 0.7 and p1["max_tokens"] == 1024 and "seed" in p1
    assert p1["response_format"]["json_schema"]["strict"] is True


def test_revise_runs_p3_once_more_with_the_note_and_is_accepted_without_regate(fault_server):
    fault_server.responder = StepResponder({"gate": gate_says("Revise")})
    (o,), _ = run(fault_server)
    assert o.kept and o.revised == 1
    assert [s for s, _ in steps_sent(fault_server)] == ["p1", "p2", "p3", "gate", "p3", "p4", "p5"]
    revision = fault_server.requests[4].last_content
    assert "Name the crystal type." in revision and "Your previous chain:" in revision
    assert o.record.meta.revised is True and o.record.meta.gate_verdict == "Revise"
    assert "p3_rev1" in o.models


def test_thesis_recipe_regenerates_from_p1_and_keeps_an_uncommitted_final_counted(fault_server):
    thesis = load_prompts("thesis")
    q = QUESTIONS[0]
    chains = iter(["FIRST CHAIN OBSERVATION", "SECOND CHAIN OBSERVATION"])

    def p3(request, answer):
        answer["reasoning_chain"]["observation"] = next(chains)
        return answer
    fault_server.responder = StepResponder({
        "p3": p3, "gate": gate_says("Revise"),
        "p5": lambda req, a: {"response": "Colchicine-free NSAID therapy settles the acute flare."}})
    (o,), _ = run(fault_server, prompts=thesis)
    assert o.kept and o.revised == 1 and o.final_uncommitted
    assert [s for s, _ in steps_sent(fault_server)] == ["p1", "p2", "p3", "gate", "p3", "p4", "p5"]
    first, revision = fault_server.requests[2].last_content, fault_server.requests[4].last_content
    assert "Name the crystal type." in revision and "Name the crystal type." not in first
    assert "FIRST CHAIN OBSERVATION" in fault_server.requests[3].last_content  # the gate saw it
    assert "FIRST CHAIN OBSERVATION" not in revision  # a regeneration, not an edit of that chain
    assert "SECOND CHAIN OBSERVATION" in fault_server.requests[5].last_content  # P4 gets the new one
    p5 = fault_server.requests[6].last_content
    assert q.question in p5 and q.options[q.answer_idx] not in p5.split("Reasoning:")[0]
    assert o.record.Response.startswith("Colchicine-free")
    # a final text that commits to another option is dropped under the thesis recipe too
    other = next(x for x in sorted(q.options) if x != q.answer_idx)
    fault_server.responder = StepResponder({"p5": lambda req, a: {"response": f"The answer is {other}."}})
    (o,), _ = run(fault_server, prompts=thesis)
    assert (o.kept, o.reason) == (False, "final_disagrees_with_gold")


def test_regate_drops_a_chain_the_gate_still_rejects(fault_server):
    fault_server.responder = StepResponder({"gate": gate_says("Revise")})
    (o,), _ = run(fault_server, regate=True)
    assert not o.kept and o.reason == "gate_failed" and o.step == "gate_rev1"
    assert [s for s, _ in steps_sent(fault_server)] == ["p1", "p2", "p3", "gate", "p3", "gate"]


def test_regate_keeps_a_chain_that_passes_after_revision(fault_server):
    fault_server.responder = StepResponder({"gate": gate_says("Revise", "Pass")})
    (o,), _ = run(fault_server, regate=True)
    assert o.kept and o.verdicts == {"p2": "Correct", "gate": "Revise", "gate_rev1": "Pass"}
    assert o.record.meta.gate_verdict == "Pass" and o.record.meta.revised is True


def test_no_revisions_left_means_gate_failed(fault_server):
    fault_server.responder = StepResponder({"gate": gate_says("Revise")})
    (o,), _ = run(fault_server, max_revisions=0)
    assert o.reason == "gate_failed" and len(fault_server.requests) == 4


def test_revise_without_a_note_is_a_parse_failure_not_a_pass(fault_server):
    fault_server.responder = StepResponder({"gate": lambda req, a: {"verdict": "Revise", "revise_note": " "}})
    (o,), _ = run(fault_server)
    assert (o.reason, o.step) == ("parse_failure", "gate")


def test_a_missing_verdict_is_a_parse_failure(fault_server):
    def no_verdict(request, answer):
        answer.pop("verdict")
        return answer
    fault_server.responder = StepResponder({"p2": no_verdict})
    (o,), _ = run(fault_server)
    assert (o.reason, o.step) == ("parse_failure", "p2") and "verdict" in o.detail
    # the engine re-asked (new seeds) before giving up; nothing after P2 ran
    assert [s for s, _ in steps_sent(fault_server)] == ["p1", "p2", "p2", "p2"]


def test_a_decision_off_the_gold_stops_before_p4(fault_server):
    def wrong(request, answer):
        answer["reasoning_chain"]["decision"] = "The answer is D: Febuxostat."
        return answer
    fault_server.responder = StepResponder({"p3": wrong})
    (o,), _ = run(fault_server)
    assert (o.reason, o.step) == ("decision_disagrees_with_gold", "p3")
    assert "p4" not in [s for s, _ in steps_sent(fault_server)]


def test_a_final_response_off_the_gold_is_dropped(fault_server):
    fault_server.responder = StepResponder({"p5": lambda req, a: {"response": "The answer is D (Febuxostat)."}})
    (o,), _ = run(fault_server)
    assert (o.reason, o.step) == ("final_disagrees_with_gold", "p5") and o.record is None


def test_output_faults_map_to_reasons(fault_server):
    q = QUESTIONS[:1]
    fault_server.responder = StepResponder()
    fault_server.push(truncated({"x": 1}))            # P1's first attempt: repaired by a re-ask
    (o,), _ = run(fault_server, q)
    assert o.kept
    fault_server.reset()
    fault_server.push(length({"angles": []}))         # cut by the output cap: never repaired
    (o,), _ = run(fault_server, q)
    assert (o.reason, o.step) == ("parse_failure", "p1") and fault_server.total == 1
    fault_server.reset()
    fault_server.push(refusal())
    (o,), _ = run(fault_server, q)
    assert (o.reason, o.step) == ("refused", "p1")


def test_the_fallback_answers_only_after_the_configured_failures(fault_server):
    def p2_length(request, answer):
        if request.body["model"] == "ver-model":
            return length(answer)
        return answer
    fault_server.responder = StepResponder({"p2": p2_length})
    (o,), _ = run(fault_server, fallback=2)
    assert o.kept and o.fallbacks == 1
    p2 = [(m, r.body.get("temperature"), r.body["seed"]) for r in fault_server.requests
          if step_of(r) == "p2" for m in [r.body["model"]]]
    assert [m for m, _, _ in p2] == ["ver-model", "ver-model", "fb-model"]
    assert p2[2][1] == 0.3 and len({s for _, _, s in p2}) == 3  # a new seed per try
    assert o.record.meta.models["p2"] == "fb-model" and o.record.meta.models["gate"] == "ver-model"


def test_no_fallback_when_the_primary_recovers(fault_server):
    failures = [length({})]

    def p2_once(request, answer):
        return failures.pop() if failures else answer
    fault_server.responder = StepResponder({"p2": p2_once})
    (o,), _ = run(fault_server, fallback=3)
    assert o.kept and o.fallbacks == 0 and o.record.meta.models["p2"] == "ver-model"
    assert [m for s, m in steps_sent(fault_server) if s == "p2"] == ["ver-model", "ver-model"]


def test_transport_and_fatal_errors(fault_server):
    fault_server.responder = StepResponder()
    fault_server.push(error(503), error(503))        # outlives retries=1
    (o,), pipeline = run(fault_server, retries=1)
    assert (o.reason, o.step) == ("api_error", "p1") and pipeline.fatal is None
    fault_server.reset()
    fault_server.push(error(401, "bad key"))
    outcomes, pipeline = run(fault_server, QUESTIONS[:3], concurrency=1, window=1)
    assert [o.reason for o in outcomes] == ["api_error"] * 3
    assert pipeline.fatal is not None and fault_server.total == 1  # nothing sent after it


def test_questions_run_concurrently_within_the_lane_limit(fault_server):
    fault_server.latency_s = 0.05
    fault_server.responder = StepResponder()
    outcomes, _ = run(fault_server, QUESTIONS, concurrency=3, window=6)
    assert all(o.kept for o in outcomes) and [o.id for o in outcomes] == [q.id for q in QUESTIONS]
    assert fault_server.total == 6 * len(QUESTIONS)
    # two lanes (generator and verifier models) of 3: full, never above their limits
    assert 3 < fault_server.peak_in_flight <= 6


def test_a_freed_slot_goes_to_the_chain_furthest_along_and_new_questions_fill_idle_slots(fault_server):
    """One lane of 2 for both roles: admission keeps both slots busy, and whenever calls queue,
    the further-along chain's call is sent first; every question still finishes."""
    fault_server.latency_s = 0.03
    fault_server.responder = StepResponder()
    questions = QUESTIONS * 1
    outcomes, pipeline = run(fault_server, questions, concurrency=2, window=50, shared_lane=True)
    assert all(o.kept for o in outcomes)
    assert fault_server.total == 6 * len(questions) and fault_server.peak_in_flight == 2
    order = [(r.last_content, step_of(r)) for r in fault_server.requests]
    # Questions start one at a time as slots free up (not all P1s first): the first P2 is sent
    # before the third question's P1.
    steps = [s for _, s in order]
    assert steps.index("p2") < [i for i, s in enumerate(steps) if s == "p1"][2]
    # Breadth-first would send every P1 before any P5; further-along-first finishes chains.
    assert steps.index("p5") < len(steps) - len(questions)
