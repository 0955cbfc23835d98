"""Stage 1 traces from recorded step calls: attempts joined to their calls, totals, redaction."""
from __future__ import annotations

import json
from types import SimpleNamespace

import mlflow

from fgrft.llm import Usage
from fgrft.llm.accounting import ModelPrice, PriceTable
from fgrft.generation.run import Outcome
from fgrft.generation.traces import StepLog, question_rows, write_trace


def event(qid, step, attempt=0, cached=False, outcome="ok", model="m", completion=10):
    return SimpleNamespace(id=qid, step=step, attempt=attempt, cached=cached, model=model, outcome=outcome,
                           latency_s=0.01, tokens=Usage(prompt=100, completion=completion))


class FakeEndpoint:
    """Answers like the engine's endpoint would, reporting each attempt to the step log."""

    cfg = SimpleNamespace(model="m")

    def __init__(self, log: StepLog, outcomes: list[str]):
        self.log, self.outcomes = log, outcomes

    async def call(self, messages, *, id, step, **kwargs):
        for attempt, outcome in enumerate(self.outcomes):
            self.log.event(event(id, step, attempt, outcome=outcome))
        return SimpleNamespace(parsed={"verdict": "Pass"}, text='{"verdict": "Pass"}', retries=2)


def test_attempts_join_their_call_and_totals_count_calls_cache_hits_and_cost():
    import asyncio

    prices = PriceTable(version=1, as_of="test", models={"m": ModelPrice(prompt=1.0, cached_prompt=0.5, completion=2.0)})
    log = StepLog(prices)
    ep = log.wrap(FakeEndpoint(log, ["malformed", "ok"]))
    assert ep.cfg.model == "m"  # everything else passes through to the endpoint
    asyncio.run(ep.call([{"role": "user", "content": "hi"}], id="q1", step="gate"))
    log.event(event("q1", "p4", cached=True))  # an attempt without a recorded call
    calls = log.pop("q1")
    assert [c.step for c in calls] == ["gate", "p4"]
    gate = calls[0]
    assert [a["outcome"] for a in gate.attempts] == ["malformed", "ok"] and gate.retries == 2
    assert gate.output == {"verdict": "Pass"} and gate.messages[0]["content"] == "hi"
    assert gate.start_ns <= gate.attempts[0]["end_ns"] <= gate.end_ns
    totals = StepLog.totals(calls)
    assert totals == {"calls": 2, "cache_hits": 1, "cost_usd": round(2 * (100 * 1.0 + 10 * 2.0) / 1e6, 6)}
    assert log.pop("q1") == []
    rows = question_rows([Outcome(id="q1", kept=True), Outcome(id="q2", reason="contaminated")], {"q1": totals})
    assert rows[0]["calls"] == 2 and rows[1]["calls"] == 0 and rows[1]["reason"] == "contaminated"


def test_trace_inputs_and_outputs_are_redacted(tmp_path, monkeypatch):
    secret = "sk-fgrft-trace-secret-0123456789"
    monkeypatch.setenv("SOME_PROVIDER_API_KEY", secret)
    log = StepLog()
    call = log.opened("q1", "p1", [{"role": "user", "content": f"key {secret}"}])
    log.event(event("q1", "p1"))
    log.closed("q1", call, output={"answer": f"echo {secret}"})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.MlflowClient().create_experiment("t", artifact_location=str(tmp_path / "a"))
        run = mlflow.MlflowClient().create_run(experiment)
        outcome = Outcome(id="q1", reason="parse_failure", step="p2", detail=f"bad {secret}")
        write_trace(run.info.run_id, outcome, None, log.pop("q1"))
        mlflow.flush_trace_async_logging()
        (trace,) = mlflow.MlflowClient().search_traces(experiment_ids=[experiment], run_id=run.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)
    text = json.dumps(trace.to_dict())
    assert "key ***" in text and "echo ***" in text and secret not in text
    assert trace.info.tags["outcome"] == "parse_failure" and [s.name for s in trace.data.spans] == ["question q1", "p1"]
