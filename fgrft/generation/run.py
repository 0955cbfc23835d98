"""Run the six-step chain for many questions concurrently through the call engine.

    pipeline = Pipeline(endpoints={"generator": gen, "verifier": ver}, prompts=load_prompts(cfg.recipe),
                        settings=RunSettings(...), fallback=Fallback(...) or None)
    outcomes = await pipeline.run_all(questions, window=128, on_outcome=progress.finished)

Per question the chain is sequential (each step needs the last one's answer):

    P1 -> P2 -> P3 -> gate --Pass--------------------------------> P4 -> P5
                          \\-Revise-> P3' (the gate's note) [-> gate again if regate] -/

The recipe (``prompts.recipe``) decides each step's inputs and schema, what a revision sees
(recipe ``thesis``: P3's own inputs plus the note, a regeneration; ``fgrft_plus``: also the
rejected chain, an edit) and the final-answer rule (:func:`fgrft.generation.guards.check_final`).

At most ``max_revisions`` revisions. Without ``regate`` (the thesis) the revised chain is
accepted without a second gate; with it, the gate runs after every revision and a chain it
still sends back once the revisions are used up is dropped (``gate_failed``). A gate verdict
of Revise with ``max_revisions=0`` is ``gate_failed`` too. Then the chain's decision, P4's
format and P5's answer are checked (:mod:`fgrft.generation.guards`); a question is kept only if
every step returned a schema-valid answer and every check passed.

Questions run concurrently: a question is admitted when its first lane would otherwise idle,
and queued calls are served further-along chains first, so the lanes stay full while
questions keep finishing (rather than every question's P1 queueing ahead of any P2), which
matters when a budget stops the run: what finished is kept.

The verifier's ``fallback`` (the thesis: gpt-4o at 0.3 after 3 failed tries) takes over a
verifier step only after ``after_failures`` failed calls to the primary model; a failed call
is one the engine gave up on (unusable output after its own re-asks, or transport retries
exhausted). Each try sends a different seed, so a try is never a cache hit of the last one.
Which model answered each step is recorded in the record's ``meta.models``.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from fgrft.llm import (BatchFailedError, BudgetExhaustedError, Endpoint, FatalAPIError,
                       OutputError, RetryExhaustedError, RunStoppedError, Sampling)
from fgrft.generation import guards
from fgrft.generation.guards import Rejected
from fgrft.generation.prompts import PromptSet
from fgrft.records import Gold, Question, TrainingMeta, TrainingRecord, question_with_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fallback:
    endpoint: Endpoint
    temperature: float | None
    after_failures: int = 3


@dataclass(frozen=True)
class RunSettings:
    max_tokens: Mapping[str, int]                  # role -> output cap
    sampling: Mapping[str, Mapping[str, Any]]      # step name -> sampling keys
    max_revisions: int = 1
    regate: bool = False
    run_id: str | None = None


@dataclass
class Outcome:
    """What happened to one question (one line of questions.jsonl)."""

    id: str
    kept: bool = False
    reason: str | None = None       # one of guards.REASONS when dropped
    step: str | None = None         # the step that dropped it
    detail: str = ""
    revised: int = 0                # revisions made
    verdicts: dict[str, str] = field(default_factory=dict)   # step label -> verdict
    models: dict[str, str] = field(default_factory=dict)     # step label -> model
    fallbacks: int = 0
    student_letter: str | None = None
    p2_contradicts_gold: bool = False   # P2 said Correct about a wrong student answer
    final_uncommitted: bool = False     # kept although P5's text commits to no option (thesis)
    record: TrainingRecord | None = None

    def to_dict(self) -> dict:
        return {"schema_version": 1, "id": self.id, "kept": self.kept, "reason": self.reason,
                "step": self.step, "detail": self.detail, "revised": self.revised,
                "verdicts": self.verdicts, "models": self.models, "fallbacks": self.fallbacks,
                "student_letter": self.student_letter,
                "p2_contradicts_gold": self.p2_contradicts_gold,
                "final_uncommitted": self.final_uncommitted}


def derived_seed(question_id: str, label: str, salt: Any = 0, tries: int = 0) -> int:
    digest = hashlib.sha256(f"fgrft-stage1:{salt}:{question_id}:{label}:{tries}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Pipeline:
    def __init__(self, endpoints: Mapping[str, Endpoint], prompts: PromptSet,
                 settings: RunSettings, fallback: Fallback | None = None):
        self.endpoints = dict(endpoints)
        self.prompts = prompts
        self.settings = settings
        self.fallback = fallback
        self.fatal: FatalAPIError | None = None  # the first fatal API error seen, if any

    def _all_endpoints(self) -> list[Endpoint]:
        return list(self.endpoints.values()) + ([self.fallback.endpoint] if self.fallback else [])

    @property
    def batcher(self):
        """The engine's batch path when any endpoint (fallback included) is in batch mode."""
        return next((ep.engine.batcher for ep in self._all_endpoints() if ep.cfg.mode == "batch"),
                    None)

    # -- one call -----------------------------------------------------------------------
    def _sampling(self, step: str, role: str, q: Question, label: str, tries: int,
                  temperature: Any = ...) -> Sampling:
        keys = dict(self.settings.sampling.get(step) or {})
        salt = keys.pop("seed", 0)
        keys.setdefault("max_tokens", self.settings.max_tokens[role])
        if temperature is not ...:
            keys["temperature"] = temperature
        return Sampling.from_mapping({**keys, "seed": derived_seed(q.id, label, salt, tries)})

    async def _ask(self, ep: Endpoint, step: str, label: str, q: Question, messages: list[dict],
                   sampling: Sampling, done: int) -> dict:
        recipe_step = self.prompts.recipe.steps[step]
        schema = recipe_step.schema("".join(sorted(q.options)), sampling.max_tokens)
        # Chains further along go first (``done`` = steps this question has answered).
        # The step's typical answer size sizes a batch's budget reservation (as the dry run).
        expected = min(recipe_step.expected_output_tokens, sampling.max_tokens or 1 << 30)
        result = await ep.call(messages, schema=schema, schema_name=f"fgrft_{step}",
                               sampling=sampling, id=q.id, step=label, priority=done,
                               expected_output_tokens=expected)
        return result.parsed

    async def call(self, step: str, label: str, q: Question, outcome: Outcome,
                   messages: list[dict]) -> dict:
        """One step's answer, from the role's model (or, for the verifier, its fallback)."""
        role = self.prompts.recipe.steps[step].role
        ep = self.endpoints[role]
        fb = self.fallback if role == "verifier" else None
        tries = fb.after_failures if fb is not None else 1
        for t in range(tries):
            try:
                parsed = await self._ask(ep, step, label, q, messages,
                                         self._sampling(step, role, q, label, t),
                                         len(outcome.models))
                outcome.models[label] = ep.cfg.model
                return parsed
            except (OutputError, RetryExhaustedError) as exc:
                if fb is None:
                    raise
                log.info("%s %s: %s failed (try %d of %d): %s", q.id, label, ep.cfg.model, t + 1,
                         tries, exc)
        # The primary model failed `after_failures` times: the fallback answers this step.
        outcome.fallbacks += 1
        sampling = self._sampling(step, role, q, label, tries, temperature=fb.temperature)
        parsed = await self._ask(fb.endpoint, step, label, q, messages, sampling,
                                 len(outcome.models))
        outcome.models[label] = fb.endpoint.cfg.model
        return parsed

    # -- one question -------------------------------------------------------------------
    async def run_one(self, q: Question) -> Outcome:
        outcome = Outcome(id=q.id)
        try:
            await self._chain(q, outcome)
        except _StepFailed as failed:
            outcome.reason, outcome.step, outcome.detail = failed.reason, failed.step, failed.detail
        return outcome

    async def _chain(self, q: Question, out: Outcome) -> None:
        p = self.prompts
        s = self.settings
        outputs: dict[str, Any] = {}

        async def step(name: str, label: str, **render) -> dict:
            try:
                messages = p.messages(name, q, outputs, **render)
                return await self.call(name, label, q, out, messages)
            except BaseException as exc:  # noqa: BLE001 - mapped to a drop reason, or re-raised
                if isinstance(exc, FatalAPIError) and self.fatal is None:
                    self.fatal = exc
                raise _StepFailed.from_exception(exc, label) from exc

        def check(label: str, fn: Callable, *args) -> Any:
            try:
                return fn(*args)
            except Rejected as r:
                raise _StepFailed(r.reason, label, r.detail) from r

        guards.check_answer_blind(p, q)
        outputs["p1"] = await step("p1", "p1")
        out.student_letter = guards.student_letter(outputs["p1"])

        outputs["p2"] = await step("p2", "p2")
        out.verdicts["p2"] = outputs["p2"]["verdict"]
        out.p2_contradicts_gold = (out.verdicts["p2"] == "Correct"
                                   and out.student_letter != q.answer_idx)

        outputs["p3"] = (await step("p3", "p3"))["reasoning_chain"]
        verdict, note = check("gate", guards.gate_verdict, await step("gate", "gate"))
        out.verdicts["gate"] = verdict
        while verdict == "Revise":
            if out.revised >= s.max_revisions:
                raise _StepFailed("gate_failed", _last_gate(out),
                                  f"the gate said Revise after {out.revised} revision(s): {note}")
            out.revised += 1
            label = f"p3_rev{out.revised}"
            outputs["p3"] = (await step("p3", label, revise_note=note))["reasoning_chain"]
            if not s.regate:
                break  # the thesis: one revision, accepted without a second gate
            gate_label = f"gate_rev{out.revised}"
            verdict, note = check(gate_label, guards.gate_verdict,
                                  await step("gate", gate_label))
            out.verdicts[gate_label] = verdict

        rule = p.recipe.final_rule
        check(_last_p3(out), guards.check_decision, outputs["p3"], q, rule)
        outputs["p4"] = await step("p4", "p4")
        check("p4", guards.check_nonempty, outputs["p4"]["natural_reasoning"], "P4")
        check("p4", guards.check_target_format, outputs["p4"]["natural_reasoning"], "P4")
        p5 = await step("p5", "p5")
        check("p5", guards.check_nonempty, p5["response"], "P5")
        check("p5", guards.check_target_format, p5["response"], "P5")
        out.final_uncommitted = not check("p5", guards.check_final, p5["response"], q, rule)

        out.kept = True
        out.record = TrainingRecord(
            id=q.id, source=q.source, Question=question_with_options(q.question, q.options),
            Complex_CoT=outputs["p4"]["natural_reasoning"], Response=p5["response"],
            gold=Gold(letter=q.answer_idx, text=q.answer),
            meta=TrainingMeta(student_letter=out.student_letter, verifier_verdict=out.verdicts["p2"],
                              gate_verdict=out.verdicts[_last_gate(out)], revised=out.revised > 0,
                              prompt_hashes=dict(p.hashes), models=dict(out.models),
                              run_id=s.run_id))

    # -- many questions -----------------------------------------------------------------
    async def run_all(self, questions: Iterable[Question], *, window: int,
                      on_outcome: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Every question's outcome, in input order. A fatal API error stops new calls (the
        remaining questions end as ``api_error``) and is kept in ``self.fatal`` for the caller
        to raise once the files are written.

        Admission is by ready calls: a question starts when the lane of its first step would
        otherwise leave a slot idle (nothing queued, a slot free), so a finished call's slot
        goes at once to the next ready call of any question, and new questions fill the gaps
        while older chains are between steps. Queued calls are served further-along chains
        first (see :meth:`call`), so questions finish steadily and a stopped run keeps them.
        At most ``window`` questions are in flight (a memory bound, not a pacing one).

        The drain: once no more than a lane's worth of questions is left to start, they all
        start at once and every lane serves the chains with the least done first, so the
        young chains catch up and the last questions finish together while the lanes are
        still full, instead of the last-started ones running their steps alone."""
        questions = list(questions)
        outcomes: list[Outcome | None] = [None] * len(questions)
        limiter = self.endpoints[self.prompts.recipe.steps["p1"].role].lane.limiter
        wake = asyncio.Event()
        live = 0
        # With a batch endpoint every question is admitted at once and is a worker of the
        # batcher: a round goes out when every unfinished question waits on a batch call
        # (step-synchronous rounds; the sync role's calls run in between).
        batcher = self.batcher
        if batcher is not None:
            batcher.set_workers(len(questions))

        async def one(i: int, q: Question) -> None:
            nonlocal live
            try:
                outcomes[i] = await self.run_one(q)
                if on_outcome is not None:
                    on_outcome(outcomes[i])
            finally:
                live -= 1
                wake.set()
                if batcher is not None:
                    batcher.set_workers(batcher.workers - 1)

        def blocked() -> bool:
            if batcher is not None:
                return False
            return live >= max(1, window) or limiter.room <= 0

        tasks: list[asyncio.Task] = []
        limiters = {id(ep.lane.limiter): ep.lane.limiter for ep in self._all_endpoints()}
        draining = False
        limiter.listeners.append(wake.set)
        try:
            for i, q in enumerate(questions):
                if not draining and batcher is None and len(questions) - i <= limiter.limit:
                    draining = True
                    for lim in limiters.values():
                        lim.set_order(lowest_first=True)
                while blocked() and not draining:
                    wake.clear()
                    await wake.wait()
                live += 1
                tasks.append(asyncio.create_task(one(i, q)))
                if batcher is None:
                    # Let it run up to its first lane (or finish from the cache) before the
                    # room is counted again.
                    await asyncio.sleep(0)
            await asyncio.gather(*tasks)
        finally:
            limiter.listeners.remove(wake.set)
            for lim in limiters.values():
                lim.set_order(lowest_first=False)
            for task in tasks:
                task.cancel()
        return outcomes  # type: ignore[return-value]


def _last_gate(out: Outcome) -> str:
    return [k for k in out.verdicts if k.startswith("gate")][-1]


def _last_p3(out: Outcome) -> str:
    return f"p3_rev{out.revised}" if out.revised else "p3"


class _StepFailed(Exception):
    def __init__(self, reason: str, step: str, detail: str = ""):
        self.reason, self.step, self.detail = reason, step, detail
        super().__init__(f"{step}: {reason}: {detail}")

    @classmethod
    def from_exception(cls, exc: BaseException, step: str) -> "_StepFailed":
        """The drop reason for an exception raised while running ``step``; anything that is
        not about one call (a bug, a cancellation) is re-raised as is."""
        if isinstance(exc, Rejected):
            return cls(exc.reason, step, exc.detail)
        if isinstance(exc, BudgetExhaustedError):  # before RunStoppedError: it is one
            return cls("budget", step, str(exc))
        if isinstance(exc, OutputError):
            reason = "refused" if exc.outcome in ("refusal", "content_filter") else "parse_failure"
            return cls(reason, step, str(exc))
        if isinstance(exc, BatchFailedError):
            return cls("batch_failed", step, str(exc))
        if isinstance(exc, (RetryExhaustedError, FatalAPIError, RunStoppedError)):
            return cls("api_error", step, str(exc))
        raise exc
