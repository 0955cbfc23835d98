"""Prices, the ledger, budget_usd (judged by what reached the fault server) and dry-run numbers."""
from __future__ import annotations

import asyncio

import pytest

from fgrft.llm import (Budget, BudgetExhaustedError, ConfigError, EndpointSettings, Engine, Ledger,
                       PlannedCall, PriceTable, RetryPolicy, RunStoppedError, SqliteResponseCache,
                       Usage, estimate, load_prices)
from fgrft.config import PRICES_FILE
from tests.support.fault_server import FaultServer, reply_json

FAST = RetryPolicy(max_retries=2, base_delay_s=0.005, max_delay_s=0.01)
# Every answer reports 1,000 prompt and 1,000 completion tokens: $0.0125 on gpt-4o.
USAGE = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000,
         "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}
CALL_USD = 0.0125


@pytest.fixture(scope="module")
def prices():
    return load_prices(PRICES_FILE)


# ----------------------------------------------------------------------------- the price table


def test_the_price_table_is_versioned_and_covers_the_project_models(prices):
    assert PRICES_FILE.name == "prices.yaml"
    assert prices.version >= 1 and len(prices.as_of) == 10
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-5", "gpt-5-mini", "o3"):
        price = prices.lookup(model)
        assert price is not None and price.completion > price.prompt >= price.cached_prompt > 0
    assert prices.lookup("local").completion == prices.lookup("embedded").prompt == 0


def test_snapshot_and_provider_names_bill_as_their_family_but_prefixes_do_not(prices):
    assert prices.lookup("gpt-4o-2024-08-06") == prices.lookup("gpt-4o")
    assert prices.lookup("openai/gpt-5-mini") == prices.lookup("gpt-5-mini")
    assert prices.lookup("gpt-4o-mini") != prices.lookup("gpt-4o")
    assert prices.lookup("o3-mini") is None  # cheaper than o3: must not borrow its price
    assert prices.price_for("my-finetune", local=True).prompt == 0
    assert prices.price_for("my-finetune") is None


def test_cost_bills_cached_prompt_at_its_rate_and_reasoning_once(prices):
    # gpt-4o: 800 uncached x 2.50 + 200 cached x 1.25 + 500 completion x 10.00 (the 300
    # reasoning tokens are inside the 500), per million.
    usage = Usage(prompt=1000, cached=200, completion=500, reasoning=300)
    assert prices.cost("gpt-4o", usage) == pytest.approx((800 * 2.5 + 200 * 1.25 + 500 * 10) / 1e6)
    assert prices.cost("unknown-model", usage) is None


def test_a_broken_price_table_is_refused():
    with pytest.raises(ConfigError, match="missing 'as_of'"):
        PriceTable.from_mapping({"version": 1, "models": {}})
    with pytest.raises(ConfigError, match="numeric"):
        PriceTable.from_mapping({"version": 1, "as_of": "2025-01-01", "models": {"m": {"prompt": 1}}})
    with pytest.raises(ConfigError, match="negative"):
        PriceTable.from_mapping({"version": 1, "as_of": "2025-01-01",
                                 "models": {"m": {"prompt": -1, "cached_prompt": 0, "completion": 0}}})


# ----------------------------------------------------------------------------- the ledger


def test_ledger_tallies_tokens_per_model_and_cache_hits_cost_nothing(prices):
    ledger = Ledger(prices)
    usage = Usage(prompt=1000, cached=0, completion=1000, reasoning=100)
    assert ledger.record("gpt-4o", usage, cached=False) == pytest.approx(CALL_USD)
    assert ledger.record("gpt-4o", usage, cached=True) == 0.0
    ledger.record("served-llama", usage, cached=False, local=True)
    ledger.record("mystery", usage, cached=False)
    assert set(ledger.summary()) == {"calls", "cache_hits", "tokens", "cost_usd", "mode"}  # the contract's
    summary = ledger.summary(details=True)
    assert (summary["calls"], summary["cache_hits"]) == (3, 1)
    assert summary["tokens"]["gpt-4o"] == {"prompt": 1000, "cached": 0, "completion": 1000, "reasoning": 100}
    assert set(summary["tokens"]) == {"gpt-4o", "served-llama", "mystery"}
    assert summary["cost_usd"] == pytest.approx(CALL_USD)
    assert summary["unpriced_models"] == ["mystery"]
    assert summary["prices"] == {"version": prices.version, "as_of": prices.as_of}


def test_batch_prices_the_ledger_mode_and_budget_reservations(prices):
    usage = Usage(prompt=1000, cached=0, completion=1000)
    # Batch rows bill at the Batch API price (half of gpt-4o's rates); a model without a batch
    # price is charged its standard price in batch mode, never less.
    assert prices.cost("gpt-4o", usage, mode="batch") == pytest.approx(CALL_USD / 2)
    table = PriceTable.from_mapping({"version": 1, "as_of": "2025-01-01", "models": {
        "plain": {"prompt": 2.5, "cached_prompt": 1.25, "completion": 10}}})
    assert table.cost("plain", usage, mode="batch") == table.cost("plain", usage) == CALL_USD
    with pytest.raises(ConfigError, match="'gpt' batch needs numeric"):
        PriceTable.from_mapping({"version": 1, "as_of": "2025-01-01", "models": {
            "gpt": {"prompt": 1, "cached_prompt": 1, "completion": 1, "batch": {"prompt": 1}}}})

    ledger = Ledger(prices, Budget(0.05))
    ledger.record("gpt-4o", usage, cached=False)
    ledger.record("gpt-4o", usage, cached=False, mode="batch")
    assert ledger.summary()["mode"] == {"sync": {"calls": 1, "cost_usd": CALL_USD},
                                        "batch": {"calls": 1, "cost_usd": CALL_USD / 2}}
    with pytest.raises(ValueError, match="mode"):
        ledger.record("gpt-4o", usage, cached=False, mode="bulk")
    budget = ledger.budget
    assert budget.reserve(0.03) and budget.reserved_usd == pytest.approx(0.03)
    assert not budget.reserve(0.01) and budget.reserved_usd == pytest.approx(0.03)  # 0.01875 + 0.03 + 0.01 > 0.05
    budget.release(0.03)
    assert budget.reserve(0.01) and not budget.exhausted


def test_budget_validation_and_exhaustion():
    assert Budget.from_setting(None) is None
    with pytest.raises(ConfigError):
        Budget(-1)
    budget = Budget(0.02)
    budget.check()
    budget.charge(0.02)
    assert budget.exhausted and budget.remaining_usd == 0
    with pytest.raises(BudgetExhaustedError, match="budget_usd=0.02") as info:
        budget.check()
    assert isinstance(info.value, RunStoppedError)  # pipelines stop on it like on a fatal error


# ----------------------------------------------------------------------------- budget through the engine


def run_calls(server, key_env, contents, *, ledger, cache=None, concurrency=1):
    async def go():
        async with Engine(retry=FAST, ledger=ledger, cache=cache) as engine:
            ep = engine.endpoint(EndpointSettings(base_url=server.base_url, model="gpt-4o", kind="openai",
                                                api_key_env=key_env, concurrency=concurrency, timeout_s=5))
            return await asyncio.gather(*(ep.call([{"role": "user", "content": c}]) for c in contents),
                                        return_exceptions=True)
    return asyncio.run(go())


@pytest.fixture
def priced_server():
    with FaultServer(responder=lambda r: reply_json({"echo": r.last_content}, usage=USAGE),
                     latency_s=0.02) as server:
        yield server


def test_budget_stops_new_calls_exactly_when_spent(priced_server, api_key, prices, tmp_path):
    ledger = Ledger(prices, Budget(4 * CALL_USD))
    with SqliteResponseCache.in_dir(tmp_path) as cache:
        results = run_calls(priced_server, api_key, [f"q{i}" for i in range(10)], ledger=ledger, cache=cache)
        kinds = [type(r).__name__ for r in results]
        assert kinds == ["CallResult"] * 4 + ["BudgetExhaustedError"] * 6
        assert priced_server.total == 4, "no request may be sent once the budget is spent"
        assert ledger.cost_usd == pytest.approx(4 * CALL_USD) and len(cache) == 4

        # Cache hits cost nothing, so a spent (here: zero) budget still replays them.
        replay = Ledger(prices, Budget(0))
        results = run_calls(priced_server, api_key, [f"q{i}" for i in range(4)], ledger=replay, cache=cache)
        assert all(r.cached for r in results) and priced_server.total == 4
        assert replay.cost_usd == 0 and replay.cache_hits == 4 and replay.calls == 0


def test_calls_in_flight_when_the_budget_runs_out_finish_and_are_kept(priced_server, api_key, prices,
                                                                     tmp_path):
    concurrency = 4
    ledger = Ledger(prices, Budget(2.5 * CALL_USD))
    with SqliteResponseCache.in_dir(tmp_path) as cache:
        results = run_calls(priced_server, api_key, [f"q{i}" for i in range(20)], ledger=ledger,
                            cache=cache, concurrency=concurrency)
        ok = [r for r in results if not isinstance(r, BaseException)]
        stopped = [r for r in results if isinstance(r, BudgetExhaustedError)]
        sent = priced_server.total
        assert len(ok) + len(stopped) == 20
        # Every request that went out came back, was kept and was paid for...
        assert len(ok) == sent == len(cache) and ledger.cost_usd == pytest.approx(sent * CALL_USD)
        # ...and at most the calls in flight overshoot: 3 calls reach the cap, 3 more may be
        # on the wire when it is reached.
        assert 3 <= sent <= 3 + concurrency - 1
        assert ledger.budget.exhausted


def test_a_budget_on_an_unpriced_paid_model_is_refused_before_any_call(fault_server, api_key, prices):
    ledger = Ledger(prices, Budget(1.0))
    engine = Engine(ledger=ledger)
    with pytest.raises(ConfigError, match="no price"):
        engine.endpoint(EndpointSettings(base_url=fault_server.base_url, model="gpt-9-preview",
                                       api_key_env=api_key))
    # A self-hosted model without a price is free, so a budget is fine there.
    engine.endpoint(EndpointSettings(base_url=fault_server.base_url, model="served", kind="vllm"))
    assert fault_server.total == 0


# ----------------------------------------------------------------------------- dry run


def test_dry_run_estimate_per_model_and_per_step(prices):
    plan = [
        PlannedCall(step="p1", model="gpt-4o", prompt_tokens=1000, output_tokens=500, count=10),
        PlannedCall(step="verify", model="gpt-5-mini", prompt_chars=4000, output_tokens=2000, count=10),
        PlannedCall(step="verify", model="gpt-4o", prompt_chars=401, output_tokens=100),
        PlannedCall(step="p1", model="served", prompt_tokens=50, output_tokens=50, count=4, local=True),
        PlannedCall(step="p1", model="gpt-9-preview", prompt_tokens=10, output_tokens=10),
    ]
    result = estimate(plan, prices)
    gpt4o = result.per_model["gpt-4o"]
    # 10 x (1000 in, 500 out) + 1 x (ceil(401 / 4) = 101 in, 100 out)
    assert (gpt4o.calls, gpt4o.prompt_tokens, gpt4o.completion_tokens) == (11, 10101, 5100)
    assert gpt4o.cost_usd == pytest.approx((10101 * 2.5 + 5100 * 10) / 1e6)
    mini = result.per_model["gpt-5-mini"]
    assert (mini.prompt_tokens, mini.completion_tokens) == (10000, 20000)
    assert mini.cost_usd == pytest.approx((10000 * 0.25 + 20000 * 2.0) / 1e6)
    assert result.per_model["served"].cost_usd == 0
    assert result.unpriced == ["gpt-9-preview"]
    assert result.per_step["p1"].calls == 15 and result.per_step["verify"].calls == 11
    assert result.total.calls == 26
    assert result.total.cost_usd == pytest.approx(gpt4o.cost_usd + mini.cost_usd)
    assert result.per_step["p1"].cost_usd + result.per_step["verify"].cost_usd == pytest.approx(
        result.total.cost_usd)
    as_dict = result.to_dict()
    assert as_dict["total"]["calls"] == 26 and as_dict["prices"]["version"] == prices.version
    text = result.format()
    assert "gpt-5-mini" in text and "unpriced" in text and "total" in text


def test_a_planned_call_needs_exactly_one_prompt_size():
    with pytest.raises(ConfigError):
        PlannedCall(step="p1", model="gpt-4o", output_tokens=1)
    with pytest.raises(ConfigError):
        PlannedCall(step="p1", model="gpt-4o", output_tokens=1, prompt_tokens=1, prompt_chars=4)
