"""Stage 1 chains as MLflow traces, and the per-question table.

    steps = StepLog(prices, local_models)        # fed by the engine's trace callback and by
    endpoint = steps.wrap(endpoint)              # the endpoints the pipeline calls through
    writer = TraceWriter(run_id)                 # skips questions this run already traced
    writer.finished(outcome, question, steps.pop(outcome.id))   # once its outcome is final
    writer.close()                               # waits until every trace is written

One trace per question: a root span with the question and its outcome (kept, drop reason,
verdicts, revisions) and one span per step call (P1, P2, P3, gate, the revision ``p3_rev1``,
P4, P5; a verifier step answered by the fallback model is a second span of that step), each
with its input messages and output (secrets redacted), model, tokens, cost, cache hit, attempts
and retries. Nothing is traced live: each trace is built from the step timings recorded in this
process once the question's outcome is final, with MLflow's explicit start and end times. A run
killed with ``kill -9`` therefore leaves no half-open trace, and the re-run (whose calls are
cache hits) traces the questions that were not traced yet; a question already traced in this
MLflow run is skipped, so re-running writes no duplicates. The traces are written when the
run's calls are done (writing one costs tracking-store commits, which would otherwise compete
with the calls for the CPU); ``make bench`` compares the calls' span with tracing on and off.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from fgrft.secrets import redact_obj

log = logging.getLogger(__name__)

QUESTION_TAG = "question_id"
RUN_TAG = "fgrft.run_id"
OUTCOME_TAG = "outcome"
# The per-question table's columns (one row per question of questions.jsonl).
QUESTION_COLUMNS = ("id", "kept", "reason", "step", "detail", "verdicts", "revised", "fallbacks", "calls",
                    "cache_hits", "cost_usd", "models")
QUESTIONS_TABLE = "questions_table.json"


@dataclass
class StepCall:
    """One call of a step (the engine's attempts of it in ``attempts``)."""

    step: str
    start_ns: int
    end_ns: int | None = None
    messages: Any = None
    output: Any = None
    error: str | None = None
    retries: int = 0   # transport resends of the answering attempt
    attempts: list[dict[str, Any]] = field(default_factory=list)


class StepLog:
    """What each question's step calls did in this process, by question id."""

    def __init__(self, prices: Any = None, local_models: Iterable[str] = ()):
        self.prices = prices
        self.local_models = set(local_models)
        self.calls: dict[str, list[StepCall]] = {}
        self._open: dict[tuple[str, str], StepCall] = {}
        self._lock = threading.Lock()

    # -- recording -------------------------------------------------------------------------
    def wrap(self, endpoint: Any) -> "_RecordingEndpoint":
        return _RecordingEndpoint(endpoint, self)

    def opened(self, qid: str | None, step: str | None, messages: Any) -> StepCall | None:
        if qid is None or step is None:
            return None
        call = StepCall(step=step, start_ns=time.time_ns(), messages=messages)
        with self._lock:
            self.calls.setdefault(qid, []).append(call)
            self._open[(qid, step)] = call
        return call

    def closed(self, qid: str, call: StepCall, output: Any = None, error: str | None = None) -> None:
        call.end_ns, call.output, call.error = time.time_ns(), output, error
        with self._lock:
            if self._open.get((qid, call.step)) is call:
                del self._open[(qid, call.step)]

    def event(self, event: Any) -> None:
        """The engine's trace callback: one attempt of a call (its fields as in traces.jsonl)."""
        if event.id is None or event.step is None:
            return
        now = time.time_ns()
        tokens = event.tokens
        cost = 0.0
        if not event.cached and self.prices is not None:
            cost = self.prices.cost(event.model, tokens, local=event.model in self.local_models) or 0.0
        attempt = {"attempt": event.attempt, "cached": event.cached, "model": event.model,
                   "outcome": event.outcome, "latency_s": round(event.latency_s, 4),
                   "tokens": tokens.to_dict(), "cost_usd": cost, "end_ns": now}
        with self._lock:
            call = self._open.get((event.id, event.step))
            if call is None:  # a call made around the recording endpoint: timed by the attempt
                call = StepCall(step=event.step, start_ns=now - int(event.latency_s * 1e9), end_ns=now)
                self.calls.setdefault(event.id, []).append(call)
            call.attempts.append(attempt)

    def pop(self, qid: str) -> list[StepCall]:
        with self._lock:
            return self.calls.pop(qid, [])

    # -- the table -------------------------------------------------------------------------
    @staticmethod
    def totals(calls: list[StepCall]) -> dict[str, Any]:
        attempts = [a for c in calls for a in c.attempts]
        return {"calls": sum(not a["cached"] for a in attempts),
                "cache_hits": sum(a["cached"] for a in attempts),
                "cost_usd": round(sum(a["cost_usd"] for a in attempts), 6)}


class _RecordingEndpoint:
    """An engine endpoint that records each call's timing, input and output in a StepLog."""

    def __init__(self, endpoint: Any, steps: StepLog):
        self._endpoint, self._steps = endpoint, steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._endpoint, name)

    async def call(self, messages: Any, **kwargs: Any) -> Any:
        qid = kwargs.get("id")
        call = self._steps.opened(qid, kwargs.get("step"), messages)
        try:
            result = await self._endpoint.call(messages, **kwargs)
        except BaseException as exc:
            if call is not None:
                self._steps.closed(qid, call, error=f"{type(exc).__name__}: {exc}")
            raise
        if call is not None:
            output = result.parsed if result.parsed is not None else result.text
            call.retries = int(getattr(result, "retries", 0) or 0)
            self._steps.closed(qid, call, output=output)
        return result


def traced_question_ids(run_id: str) -> set[str]:
    """Questions this MLflow run already holds a trace of."""
    import mlflow

    done: set[str] = set()
    token = None
    client = mlflow.MlflowClient()
    experiment = client.get_run(run_id).info.experiment_id
    while True:
        page = client.search_traces(experiment_ids=[experiment], run_id=run_id, max_results=500,
                                    page_token=token, include_spans=False)
        done |= {t.info.tags[QUESTION_TAG] for t in page if QUESTION_TAG in t.info.tags}
        token = page.token
        if not token:
            return done


class TraceWriter:
    """One trace per finished question (see the module doc), written once no call is left in
    flight: tracing then takes nothing from the calls' event loop."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.skipped = 0
        self.written = 0
        self.done = traced_question_ids(run_id)
        import mlflow

        self.experiment_id = mlflow.MlflowClient().get_run(run_id).info.experiment_id
        self._pending: list[tuple[Any, Any, list[StepCall]]] = []

    def finished(self, outcome: Any, question: Any, calls: list[StepCall]) -> None:
        if outcome.id in self.done:
            self.skipped += 1
            return
        self.done.add(outcome.id)
        self._pending.append((outcome, question, calls))

    def close(self) -> None:
        import mlflow

        started = time.monotonic()
        pending, self._pending = self._pending, []
        for item in pending:
            try:
                write_trace(self.run_id, *item, experiment_id=self.experiment_id)
                self.written += 1
            except Exception as e:  # noqa: BLE001 - a trace is a view; the run's files are the record
                log.warning("traces: question %s not traced: %s", item[0].id, str(e).splitlines()[0])
        try:
            mlflow.flush_trace_async_logging()
        except Exception as e:  # noqa: BLE001
            log.warning("traces: flushing to MLflow failed: %s", e)
        log.info("traces: %d questions traced in %.1fs, %d traced by an earlier invocation",
                 self.written, time.monotonic() - started, self.skipped)


def _question_inputs(outcome: Any, question: Any) -> dict[str, Any]:
    if question is None:
        return {"id": outcome.id}
    return {"id": question.id, "source": question.source, "question": question.question,
            "options": dict(question.options), "gold": question.answer_idx}


def write_trace(run_id: str, outcome: Any, question: Any, calls: list[StepCall],
                experiment_id: str | None = None) -> None:
    """One question's trace from its recorded step calls, with their recorded times."""
    import mlflow

    client = mlflow.MlflowClient()
    experiment_id = experiment_id or client.get_run(run_id).info.experiment_id
    now = time.time_ns()
    start = min((c.start_ns for c in calls), default=now)
    end = max((c.end_ns or c.start_ns for c in calls), default=now)
    result = outcome.to_dict()
    result.pop("schema_version", None)
    totals = StepLog.totals(calls)
    root = client.start_trace(
        name=f"question {outcome.id}", span_type="CHAIN", start_time_ns=start, run_id=run_id,
        experiment_id=experiment_id,
        inputs=redact_obj(_question_inputs(outcome, question)),
        attributes={"outcome": "kept" if outcome.kept else f"dropped: {outcome.reason}", **totals},
        tags={QUESTION_TAG: outcome.id, RUN_TAG: run_id,
              OUTCOME_TAG: "kept" if outcome.kept else str(outcome.reason)})
    for call in calls:
        last = call.attempts[-1] if call.attempts else {}
        model = last.get("model") or outcome.models.get(call.step)
        attributes = {
            "step": call.step, "model": model,
            "attempts": len(call.attempts),
            "attempt_outcomes": [a["outcome"] for a in call.attempts],
            "retries": call.retries,
            "cache_hit": bool(call.attempts) and all(a["cached"] for a in call.attempts),
            "cost_usd": round(sum(a["cost_usd"] for a in call.attempts), 6),
            "tokens": _sum_tokens(a["tokens"] for a in call.attempts),
        }
        span = client.start_span(
            name=call.step, trace_id=root.trace_id, parent_id=root.span_id, span_type="LLM",
            inputs=redact_obj({"messages": call.messages}) if call.messages is not None else None,
            attributes=attributes, start_time_ns=call.start_ns)
        outputs = {"error": call.error} if call.error else call.output
        client.end_span(root.trace_id, span.span_id, outputs=redact_obj(outputs),
                        status="ERROR" if call.error else "OK",
                        end_time_ns=call.end_ns or last.get("end_ns") or call.start_ns)
    client.end_trace(root.trace_id, outputs=redact_obj(result), end_time_ns=max(end, start))


def _sum_tokens(tokens: Iterable[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for t in tokens:
        for k, v in t.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def question_rows(outcomes: Iterable[Any], totals: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The per-question table: each outcome with its calls, cache hits and cost."""
    empty = {"calls": 0, "cache_hits": 0, "cost_usd": 0.0}
    return [{**o.to_dict(), **totals.get(o.id, empty)} for o in outcomes]


class QuestionViews:
    """What Stage 1 shows in MLflow besides its files: a trace per question (``traces=true``)
    and, at the end, the per-question table. Fed once per final outcome."""

    def __init__(self, trace: bool, run_id: str, prices: Any, questions: Mapping[str, Any]):
        import mlflow

        active = mlflow.active_run()
        self.tracking = active is not None and active.info.run_id == run_id
        self.steps = StepLog(prices)
        self.questions = questions
        self.totals: dict[str, dict[str, Any]] = {}
        self.writer = TraceWriter(run_id) if trace and self.tracking else None

    def on_event(self, event: Any) -> None:
        self.steps.event(event)

    def finished(self, outcome: Any) -> None:
        calls = self.steps.pop(outcome.id)
        self.totals[outcome.id] = StepLog.totals(calls)
        if self.writer is not None:
            self.writer.finished(outcome, self.questions.get(outcome.id), calls)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def log_table(self, outcomes: Iterable[Any]) -> None:
        if self.tracking:
            from fgrft.mlflow_lineage import log_table

            log_table(question_rows(outcomes, self.totals), QUESTION_COLUMNS, QUESTIONS_TABLE)
