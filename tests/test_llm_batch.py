"""The engine's mode=batch path against the batch fixture (real HTTP, the real openai SDK):
rounds, the response cache shared with sync mode, expiry, failures, refusals, crash healing,
budget reservation and cancellation."""
from __future__ import annotations

import asyncio
import logging

import pytest

from fgrft.config import PRICES_FILE
from fgrft.llm import (Budget, BudgetExhaustedError, EndpointSettings, Engine, Ledger,
                       SqliteResponseCache, load_prices)
from fgrft.llm.batch import BatchFailedError
from tests.support.batch_server import BatchScript, BatchServer

SCHEMA = {"type": "object", "properties": {"echo": {"type": "string", "maxLength": 400}},
          "required": ["echo"], "additionalProperties": False}


@pytest.fixture
def batch_server():
    with BatchServer(models=("m",)) as server:
        yield server


def endpoint(server, mode="batch", **kw) -> EndpointSettings:
    return EndpointSettings(base_url=server.base_url, model=kw.pop("model", "m"), kind="vllm",
                          name=kw.pop("name", "gen"), mode=mode, batch_poll_s=0.02, timeout_s=10,
                          **kw)


def ask(server, cache_dir, n=5, *, ledger=None, prefix="q", return_exceptions=False,
        before=None, **kw):
    """n calls gathered together (one round); returns (results, batcher stats)."""
    async def go():
        cache = SqliteResponseCache.in_dir(cache_dir)
        try:
            async with Engine(cache=cache, ledger=ledger or Ledger(load_prices(PRICES_FILE))) as engine:
                ep = engine.endpoint(endpoint(server, **kw))
                if before is not None:
                    before(engine)
                results = await asyncio.gather(*(
                    ep.call([{"role": "user", "content": f"{prefix}{i}"}], schema=SCHEMA,
                            sampling={"max_tokens": 64, "seed": 1})
                    for i in range(n)), return_exceptions=return_exceptions)
                stats = engine.batcher.stats.to_dict() if engine.batcher else {}
                return results, stats
        finally:
            cache.close()
    return asyncio.run(go())


def test_one_round_one_batch_answers_cached_for_sync_mode_and_charged_at_batch_prices(batch_server, tmp_path):
    ledger = Ledger(load_prices(PRICES_FILE))
    results, stats = ask(batch_server, tmp_path, 5, ledger=ledger, model="gpt-4o",
                         api_key_env=None)
    assert [r.parsed["echo"] for r in results] == [f"q{i}" for i in range(5)]
    assert (batch_server.creates, stats["rounds"], stats["rows_submitted"]) == (1, 1, 5)
    assert batch_server.total == 0  # nothing went through /chat/completions
    assert sorted(batch_server.rows.values()) == [1] * 5
    # Charged as batch rows, at the batch price (half of gpt-4o's standard rate).
    summary = ledger.summary()
    assert summary["mode"]["batch"]["calls"] == 5 and summary["mode"]["sync"]["calls"] == 0
    tally = ledger.models["gpt-4o"]
    standard = ledger.prices.lookup("gpt-4o").cost(tally.prompt, tally.cached, tally.completion)
    assert tally.cost_usd == pytest.approx(standard / 2)

    # The same calls in sync mode are cache hits: nothing sent, nothing paid twice.
    ledger = Ledger(load_prices(PRICES_FILE))
    results, _ = ask(batch_server, tmp_path, 5, ledger=ledger, mode="sync", model="gpt-4o")
    assert all(r.cached for r in results) and batch_server.total == 0
    assert (ledger.calls, ledger.cache_hits, batch_server.creates) == (0, 5, 1)


def test_sync_answers_are_not_resubmitted_as_batch_rows(batch_server, tmp_path):
    ask(batch_server, tmp_path, 3, mode="sync")
    assert batch_server.total == 3
    results, stats = ask(batch_server, tmp_path, 5)
    assert batch_server.creates == 1 and stats["rows_submitted"] == 2
    assert [r.cached for r in results] == [True, True, True, False, False]


def test_expired_batch_keeps_its_finished_rows_and_resubmits_only_the_missing_ones(batch_server, tmp_path):
    batch_server.script(BatchScript(delay_s=0.05, expire_after=3))
    results, stats = ask(batch_server, tmp_path, 5)
    assert all(r.outcome == "ok" for r in results)
    assert batch_server.creates == 2
    first, second = batch_server.batches.values()
    assert [line["custom_id"] for line in second.lines] == \
        [line["custom_id"] for line in first.lines][3:]
    assert stats["rows_submitted"] == 7 and stats["rows_resubmitted"] == 2
    assert sorted(batch_server.rows.values()) == [1, 1, 1, 2, 2]


def test_failed_rows_are_retried_up_to_batch_max_tries_then_fail(batch_server, tmp_path):
    batch_server.script(BatchScript(fail_rows=2), BatchScript(fail_rows=1))
    results, stats = ask(batch_server, tmp_path, 4, batch_max_tries=2, return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], BatchFailedError)
    assert "2 batch(es)" in str(failed[0])
    assert stats["rows_submitted"] == 4 + 2 and stats["rows_resubmitted"] == 2
    # A re-run tries the dropped row again (alone: the others are cached), as sync mode would.
    results, stats = ask(batch_server, tmp_path, 4, batch_max_tries=2)
    assert [r.cached for r in results] == [True, True, True, False]
    assert stats["rows_submitted"] == 1 and stats["rows_resubmitted"] == 1
    assert sorted(batch_server.rows.values()) == [1, 1, 2, 3]


def test_a_failed_validation_is_reported_and_a_token_limit_refusal_is_not_a_try(batch_server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="fgrft.llm.batch")
    batch_server.script(BatchScript(token_limit=True), BatchScript(validation_error="bad line"))
    results, stats = ask(batch_server, tmp_path, 3, batch_max_tries=2)
    assert all(r.outcome == "ok" for r in results)
    assert batch_server.creates == 3 and stats["token_limit_refusals"] == 1
    assert "invalid_request: bad line (line 1)" in caplog.text
    # refused (not a try) + failed (a try) + completed
    assert stats["rows_resubmitted"] == 3


def test_max_enqueued_tokens_sends_a_round_in_waves_and_files_respect_the_row_limit(batch_server, tmp_path):
    def small_files(engine):
        engine.batcher.max_requests_per_file = 2
    results, stats = ask(batch_server, tmp_path, 5, max_enqueued_tokens=10_000, before=small_files)
    assert all(r.outcome == "ok" for r in results)
    # (the files of one wave are created concurrently, in any order)
    assert sorted(len(b.lines) for b in batch_server.batches.values()) == [1, 2, 2]
    assert stats["rounds"] == 1 and stats["rows_submitted"] == 5

    # Each request is estimated at about 116 tokens (prompt and schema, plus the 64-token cap):
    # a cap of 250 allows 2 per wave, and a wave goes only when the one before has ended.
    batch_server.batches.clear()
    batch_server.default = BatchScript(delay_s=0.05)
    results, _ = ask(batch_server, tmp_path, 5, prefix="w", max_enqueued_tokens=250)
    assert all(r.outcome == "ok" for r in results)
    batches = list(batch_server.batches.values())
    assert [len(b.lines) for b in batches] == [2, 2, 1]
    assert all(later.created >= earlier.ended for earlier, later in zip(batches, batches[1:]))


def test_a_crash_between_create_and_its_record_is_healed_through_batches_list(batch_server, tmp_path):
    class Crash(BaseException):
        pass

    def crash_on_record(engine):
        store = engine.batcher.store
        original = store.update_batch_intent

        def update(round_key, **fields):
            if "batch_id" in fields:
                raise Crash()
            original(round_key, **fields)
        store.update_batch_intent = update

    with pytest.raises(BaseException):
        ask(batch_server, tmp_path, 4, before=crash_on_record)
    assert batch_server.creates == 1
    with SqliteResponseCache.in_dir(tmp_path) as cache:
        (intent,) = cache.batch_intents()
    assert intent["batch_id"] is None and intent["status"] == "intent"

    results, stats = ask(batch_server, tmp_path, 4)
    assert all(r.outcome == "ok" for r in results)
    assert batch_server.creates == 1 and stats["reattached"] == 1 and stats["rows_submitted"] == 0
    assert sorted(batch_server.rows.values()) == [1] * 4


def test_budget_reserves_before_submitting_and_cancels_in_flight_batches_when_spent(batch_server, tmp_path):
    # Two files (2 rows each); the first finishes fast and its real usage is far above the
    # estimate, which spends the budget: the second, still running, is cancelled.
    batch_server.script(BatchScript(delay_s=0.02, usage_scale=2000),
                        BatchScript(delay_s=30, cancel_s=0.1))
    ledger = Ledger(load_prices(PRICES_FILE), budget=Budget(0.002))  # fits the 4 rows' estimate (about $0.0004 each)

    def small_files(engine):
        engine.batcher.max_requests_per_file = 2
    results, stats = ask(batch_server, tmp_path, 4, ledger=ledger, model="gpt-4o",
                         before=small_files, return_exceptions=True)
    assert batch_server.cancels == 1 and stats["cancelled"] == 1
    second = list(batch_server.batches.values())[1]
    assert second.status == "cancelled"
    ok = [r for r in results if not isinstance(r, BaseException)]
    stopped = [r for r in results if isinstance(r, BudgetExhaustedError)]
    assert len(ok) + len(stopped) == 4 and len(ok) >= 2 and stopped
    assert ledger.budget.spent_usd > 0.002 and ledger.budget.reserved_usd == 0
    assert batch_server.creates == 2  # nothing resubmitted after the stop

    # A budget too small for even one row's estimate submits nothing.
    batch_server.batches.clear()
    results, _ = ask(batch_server, tmp_path, 2, prefix="z", ledger=Ledger(load_prices(PRICES_FILE), budget=Budget(1e-7)),
                     model="gpt-4o", return_exceptions=True)
    assert all(isinstance(r, BudgetExhaustedError) for r in results)
    assert not batch_server.batches


def test_batch_settings_are_checked_before_anything_starts():
    from fgrft.llm import ConfigError

    with pytest.raises(ConfigError, match="mode must be one of"):
        EndpointSettings(base_url="http://x/v1", model="m", mode="bulk")
    with pytest.raises(ConfigError, match="batch_max_tries must be >= 1"):
        EndpointSettings(base_url="http://x/v1", model="m", mode="batch", batch_max_tries=0)

    async def without_a_durable_cache():
        async with Engine() as engine:
            engine.endpoint(EndpointSettings(base_url="http://x/v1", model="m", kind="vllm", mode="batch"))
    with pytest.raises(ConfigError, match="needs the SQLite response cache"):
        asyncio.run(without_a_durable_cache())


def test_a_question_whose_row_never_gets_an_answer_is_dropped_as_batch_failed(tmp_path):
    from tests.support.step_responder import StepResponder
    from fgrft.data import load_source
    from fgrft.generation.prompts import load_prompts
    from fgrft.generation.run import Pipeline, RunSettings

    questions = load_source({"name": "sample"}).questions[:3]

    async def go(server):
        cache = SqliteResponseCache.in_dir(tmp_path)
        try:
            async with Engine(cache=cache, ledger=Ledger(load_prices(PRICES_FILE))) as engine:
                gen = engine.endpoint(endpoint(server, model="gen-model", name="generator"))
                ver = engine.endpoint(endpoint(server, model="ver-model", name="verifier",
                                               batch_max_tries=1))
                settings = RunSettings(max_tokens={"generator": 1024, "verifier": 1024},
                                       sampling={}, run_id="r")
                pipeline = Pipeline({"generator": gen, "verifier": ver}, load_prompts("fgrft_plus"), settings)
                return await pipeline.run_all(questions, window=8), engine.batcher.stats
        finally:
            cache.close()

    with BatchServer(responder=StepResponder(), models=("gen-model", "ver-model")) as server:
        # Round 1: the P1s. Round 2: the P2s, of which the last row fails.
        server.script(BatchScript(), BatchScript(fail_rows=1))
        outcomes, stats = asyncio.run(go(server))
    assert [o.kept for o in outcomes].count(True) == 2
    (dropped,) = [o for o in outcomes if not o.kept]
    assert (dropped.reason, dropped.step) == ("batch_failed", "p2")
    assert stats.rounds == 6 and stats.rows_submitted == 3 + 3 + 2 * 4


def test_transient_api_failures_are_retried_and_a_create_whose_answer_was_lost_is_not_repeated(
        batch_server, tmp_path):
    def quick_retries(engine):
        engine.batcher.api_retry_base_s = 0.01
    batch_server.fault("files.create", 503)
    batch_server.fault("batches.create", 500, after=True)   # created, but the answer is lost
    batch_server.fault("batches.retrieve", 502)
    results, stats = ask(batch_server, tmp_path, 3, before=quick_retries)
    assert all(r.outcome == "ok" for r in results)
    assert batch_server.creates == 1 and sorted(batch_server.rows.values()) == [1, 1, 1]
    assert len(batch_server.files) == 2   # the upload that went through and the output file
