"""The call engine against the live fault server, plus unit tests of its parts.

Every engine test counts what reached the server: a retry that did not happen, a fatal error
that was retried, or a limit that did not hold shows up as a wrong count or a wrong peak.
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback

import httpx2
import openai
import pytest

from fgrft.llm import (CallResult, Clock, ConfigError, EndpointConfig, Engine, FatalAPIError,
                       OutputError, RetryExhaustedError, RetryPolicy, RunStoppedError, Sampling,
                       SchemaError, TokenBucket, build_request, check_schema, estimate_tokens,
                       profile_for, redact, request_key, validate)
from fgrft.llm.lanes import Limiter
from fgrft.llm.profiles import derive_seed, is_reasoning_model
from fgrft.llm.retry import classify, parse_retry_after
from fgrft.llm.structured import response_format
from tests.support.fault_server import (FaultServer, bad_body, drop, error, hang, length,
                                        null_content, rate_limit, refusal, reply, reply_json,
                                        server_error, truncated)
from tests.fixtures_llm import TEST_KEY

SCHEMA = {"type": "object", "properties": {"echo": {"type": "string", "maxLength": 200}},
          "required": ["echo"], "additionalProperties": False}
MSG = [{"role": "user", "content": "hello"}]
FAST = RetryPolicy(max_retries=8, base_delay_s=0.005, max_delay_s=0.02)
TRACE_FIELDS = {"schema_version", "id", "step", "attempt", "cache_key", "cached", "model",
                "tokens", "latency_s", "outcome"}


def endpoint_cfg(server: FaultServer, key_env: str | None, **kw) -> EndpointConfig:
    kw = {"base_url": server.base_url, "name": "generator", "model": "fault-model",
          "timeout_s": 2.0, **kw}
    return EndpointConfig(api_key_env=key_env, **kw)


def call_once(server, key_env, *, engine_kw=None, cfg_kw=None, messages=MSG, **call_kw):
    """One engine, one endpoint, one call (schema'd unless told otherwise)."""
    async def go():
        async with Engine(**{"retry": FAST, **(engine_kw or {})}) as engine:
            ep = engine.endpoint(endpoint_cfg(server, key_env, **(cfg_kw or {})))
            return await ep.call(messages, **{"schema": SCHEMA, **call_kw})
    return asyncio.run(go())


def call_many(server, key_env, contents, *, engine_kw=None, cfg_kw=None, **call_kw):
    """Many calls through one endpoint at once; returns (results or exceptions, engine)."""
    async def go():
        async with Engine(**{"retry": FAST, **(engine_kw or {})}) as engine:
            ep = engine.endpoint(endpoint_cfg(server, key_env, **(cfg_kw or {})))
            results = await asyncio.gather(
                *(ep.call([{"role": "user", "content": c}], schema=SCHEMA, **call_kw)
                  for c in contents), return_exceptions=True)
            return results, ep
    return asyncio.run(go())


# ----------------------------------------------------------------------------- happy path


def test_structured_call_returns_a_checked_result(fault_server, api_key):
    result = call_once(fault_server, api_key,
                       sampling=Sampling(temperature=0.7, top_p=0.9, max_tokens=64, seed=11))
    assert isinstance(result, CallResult)
    assert result.outcome == "ok" and result.parsed == {"echo": "hello"}
    assert result.text == '{"echo": "hello"}'
    assert result.usage.prompt > 0 and result.usage.completion > 0
    assert (result.attempt, result.retries, result.cached) == (0, 0, False)
    assert result.model == "fault-model" and result.finish_reason == "stop"
    assert 0 < result.latency_s < 2 and len(result.cache_key) == 64

    (request,) = fault_server.requests
    body = request.body
    assert request.headers["authorization"] == f"Bearer {TEST_KEY}"
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "response", "strict": True, "schema": SCHEMA}}
    assert (body["temperature"], body["top_p"], body["max_tokens"], body["seed"]) == (0.7, 0.9, 64, 11)
    # The engine owns retries: the SDK must not have retried or been asked to.
    assert fault_server.counts == {"ok": 1}


def test_plain_text_call_without_schema(fault_server, api_key):
    fault_server.push(reply("just prose"))
    result = call_once(fault_server, api_key, schema=None)
    assert result.parsed is None and result.text == "just prose"
    assert "response_format" not in fault_server.requests[0].body


def test_reasoning_profile_sends_max_completion_tokens_and_no_temperature(fault_server, api_key):
    call_once(fault_server, api_key, cfg_kw={"model": "gpt-5-mini"},
              sampling=Sampling(temperature=0.3, top_p=0.5, max_tokens=300, seed=1,
                                reasoning_effort="low"))
    body = fault_server.requests[0].body
    assert body["model"] == "gpt-5-mini"
    assert body["max_completion_tokens"] == 300 and "max_tokens" not in body
    assert "temperature" not in body and "top_p" not in body
    assert body["reasoning_effort"] == "low" and body["seed"] == 1


def test_vllm_profile_puts_its_knobs_in_extra_body_and_needs_no_key(fault_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-never-go-to-a-local-server-123")
    call_once(fault_server, None, cfg_kw={"kind": "vllm"},
              sampling=Sampling(temperature=0.5, top_k=20, min_p=0.05, seed=3,
                                extra={"repetition_penalty": 1.1}))
    request = fault_server.requests[0]
    # extra_body is merged into the JSON body by the SDK.
    assert (request.body["top_k"], request.body["min_p"], request.body["repetition_penalty"]) == (20, 0.05, 1.1)
    assert request.body["response_format"]["json_schema"]["schema"] == SCHEMA
    assert request.headers["authorization"] == "Bearer EMPTY"


def test_vllm_structured_outputs_via_extra_body(fault_server):
    call_once(fault_server, None, cfg_kw={"kind": "vllm", "structured": "extra_body"})
    body = fault_server.requests[0].body
    assert body["structured_outputs"] == {"json": SCHEMA} and "response_format" not in body


def test_vllm_only_parameters_are_refused_for_openai_before_any_call(fault_server, api_key):
    with pytest.raises(ConfigError, match="top_k is a vLLM"):
        call_once(fault_server, api_key, sampling=Sampling(top_k=5))
    assert fault_server.total == 0


def test_missing_key_is_a_config_error_naming_the_variable(fault_server, monkeypatch):
    monkeypatch.delenv("FGRFT_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="FGRFT_UNSET_KEY is not set"):
        call_once(fault_server, "FGRFT_UNSET_KEY")
    with pytest.raises(ConfigError, match="api_key_env is not configured"):
        call_once(fault_server, None)
    assert fault_server.total == 0


# ----------------------------------------------------------------------------- transport retries


def test_transient_faults_are_retried_until_success(fault_server, api_key):
    fault_server.push(server_error(), server_error(503), rate_limit(0.01), drop(),
                      error(408), error(409), bad_gateway := server_error(502))
    assert bad_gateway.kind == "502"
    result = call_once(fault_server, api_key)
    assert result.outcome == "ok" and result.retries == 7 and result.attempt == 0
    assert fault_server.counts == {"500": 1, "503": 1, "429": 1, "drop": 1, "408": 1,
                                   "409": 1, "502": 1, "ok": 1}


def test_a_hang_past_the_timeout_is_retried(fault_server, api_key):
    fault_server.push(hang(10))
    start = time.monotonic()
    result = call_once(fault_server, api_key, cfg_kw={"timeout_s": 0.3})
    assert result.outcome == "ok" and result.retries == 1
    assert time.monotonic() - start >= 0.3
    assert fault_server.counts == {"hang": 1, "ok": 1}


def test_retry_budget_is_bounded(fault_server, api_key):
    fault_server.push(*[server_error()] * 5)
    with pytest.raises(RetryExhaustedError, match=r"'generator'.*fault-model.*after 2 retries"):
        call_once(fault_server, api_key, engine_kw={"retry": RetryPolicy(
            max_retries=2, base_delay_s=0.001, max_delay_s=0.002)})
    assert fault_server.total == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_fatal_status_stops_the_run_at_once(fault_server, api_key, status):
    fault_server.push(error(status, "nope"))

    async def go():
        async with Engine(retry=FAST) as engine:
            ep = engine.endpoint(endpoint_cfg(fault_server, api_key))
            with pytest.raises(FatalAPIError) as info:
                await ep.call(MSG, schema=SCHEMA)
            with pytest.raises(RunStoppedError):
                await ep.call(MSG, schema=SCHEMA)
            return info.value

    exc = asyncio.run(go())
    message = str(exc)
    assert f"HTTP {status}" in message and "'generator'" in message
    assert fault_server.base_url in message and "fault-model" in message and "nope" in message
    assert exc.status == status
    assert fault_server.total == 1, "a fatal status must be sent exactly once"


def test_a_fatal_error_stops_calls_waiting_in_the_lane(fault_server, api_key):
    fault_server.push(error(401))
    results, _ = call_many(fault_server, api_key, [f"q{i}" for i in range(10)],
                           cfg_kw={"concurrency": 1})
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["FatalAPIError"] + ["RunStoppedError"] * 9
    assert fault_server.total == 1


def test_exhausted_quota_is_fatal_not_retried(fault_server, api_key):
    fault_server.push(rate_limit(0.01, code="insufficient_quota"))
    with pytest.raises(FatalAPIError, match="insufficient_quota"):
        call_once(fault_server, api_key)
    assert fault_server.total == 1


def test_the_key_never_appears_in_errors_or_logs(fault_server, api_key, caplog):
    caplog.set_level(logging.DEBUG)  # every logger, the SDK's and httpx2's included
    # A retried failure (logged), then a 401 whose body echoes the key, as real servers do.
    fault_server.push(rate_limit(0.01), server_error(), error(401, echo_auth=True))
    with pytest.raises(FatalAPIError) as info:
        call_once(fault_server, api_key)
    exc = info.value
    # The server did get (and echo) the key, so finding none below means it was kept out.
    assert fault_server.requests[-1].headers["authorization"] == f"Bearer {TEST_KEY}"
    assert "Incorrect API key provided: ***" in str(exc)
    shown = "".join(traceback.format_exception(exc)) + repr(exc) + str(exc.args)
    assert TEST_KEY not in shown and TEST_KEY[:12] not in shown
    assert exc.__cause__ is None and exc.__context__ is None
    assert "retry 1/8" in caplog.text  # the retries were logged...
    assert TEST_KEY not in caplog.text  # ...without the key


# ----------------------------------------------------------------------------- lanes and limits


def test_in_flight_calls_never_exceed_the_lane_bound(api_key):
    with FaultServer(latency_s=0.05) as server:
        results, ep = call_many(server, api_key, [f"q{i}" for i in range(12)],
                                cfg_kw={"concurrency": 3})
        assert all(r.outcome == "ok" for r in results)
        assert [r.parsed["echo"] for r in results] == [f"q{i}" for i in range(12)]
        assert server.peak_in_flight == 3 and ep.lane.peak_in_flight == 3


def test_roles_sharing_a_lane_get_the_larger_concurrency(api_key):
    with FaultServer(latency_s=0.05) as server:
        async def go():
            async with Engine(retry=FAST) as engine:
                gen = engine.endpoint(endpoint_cfg(server, api_key, name="generator", concurrency=2))
                ver = engine.endpoint(endpoint_cfg(server, api_key, name="verifier", concurrency=5,
                                                   base_url=server.base_url + "/"))
                other = engine.endpoint(endpoint_cfg(server, api_key, model="other-model"))
                assert gen.lane is ver.lane and gen.lane is not other.lane
                assert gen.lane.concurrency == 5
                calls = [ep.call([{"role": "user", "content": str(i)}], schema=SCHEMA)
                         for i, ep in enumerate([gen, ver] * 8)]
                await asyncio.gather(*calls)
                return gen.lane.peak_in_flight
        assert asyncio.run(go()) == 5
        assert server.peak_in_flight == 5


def test_a_lane_refuses_two_keys(fault_server, api_key):
    engine = Engine()
    engine.endpoint(endpoint_cfg(fault_server, api_key))
    with pytest.raises(ConfigError, match="differ in kind or api_key_env"):
        engine.endpoint(endpoint_cfg(fault_server, None, kind="vllm"))


def test_rpm_bucket_spaces_calls(fault_server, api_key):
    # 1,200 RPM = one call per 50 ms; burst_s=0 leaves a bucket of one call.
    results, _ = call_many(fault_server, api_key, [f"q{i}" for i in range(6)],
                           cfg_kw={"concurrency": 6, "rpm": 1200}, engine_kw={"burst_s": 0})
    assert all(r.outcome == "ok" for r in results)
    # Judged at the server, where network jitter blurs single gaps: the first call may arrive
    # late (connection setup) and bunch with the second, but no 100 ms window may hold more
    # than 3 calls (2 by rate plus the bucket of one), and 6 calls need at least 5 intervals.
    arrivals = sorted(r.arrived for r in fault_server.requests)
    per_window = [sum(1 for b in arrivals if a <= b < a + 0.1) for a in arrivals]
    assert max(per_window) <= 3, per_window
    assert arrivals[-1] - arrivals[0] >= 0.2, arrivals


def test_retry_after_pauses_the_whole_lane(fault_server, api_key):
    fault_server.push(rate_limit(0.4))

    async def go():
        async with Engine(retry=FAST) as engine:
            ep = engine.endpoint(endpoint_cfg(fault_server, api_key, concurrency=4))
            first = asyncio.create_task(ep.call([{"role": "user", "content": "A"}], schema=SCHEMA))
            while fault_server.total < 1:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)  # B starts after A's 429, while the lane is paused
            second = await ep.call([{"role": "user", "content": "B"}], schema=SCHEMA)
            return await first, second

    a, b = asyncio.run(go())
    assert (a.retries, b.retries) == (1, 0)
    reqs = fault_server.requests
    limited = reqs[0]
    assert limited.last_content == "A"
    later = {r.last_content: r.arrived - limited.arrived for r in reqs[1:]}
    assert later["A"] >= 0.38 and later["B"] >= 0.38, later
    assert fault_server.counts == {"429": 1, "ok": 2}


def test_many_calls_through_one_lane(api_key):
    """A small throughput smoke test (the 3,000-call benchmark lives outside the suite)."""
    with FaultServer(latency_s=0.05) as server:
        start = time.monotonic()
        results, ep = call_many(server, api_key, [f"q{i}" for i in range(200)],
                                cfg_kw={"concurrency": 32})
        wall = time.monotonic() - start
        assert all(r.outcome == "ok" for r in results) and server.total == 200
        assert ep.lane.peak_in_flight == 32 and 16 <= server.peak_in_flight <= 32
        assert wall < 10, wall  # sequential would take 10 s


# ----------------------------------------------------------------------------- output problems


@pytest.mark.parametrize("action, outcome", [
    (length({"echo": "x" * 60}), "length"),
    (null_content(), "empty"),
    (reply("   "), "empty"),
    (refusal("I can't help with that."), "refusal"),
    (reply('{"echo": "x"}', finish_reason="content_filter"), "content_filter"),
])
def test_unusable_answers_are_errors_and_never_retried(fault_server, api_key, action, outcome):
    fault_server.push(action)
    with pytest.raises(OutputError) as info:
        call_once(fault_server, api_key)
    assert info.value.outcome == outcome and info.value.result.outcome == outcome
    assert info.value.result.usage.completion > 0  # the spent tokens are still reported
    assert "'generator'" in str(info.value)
    assert fault_server.total == 1


def test_malformed_output_is_retried_with_the_attempt_folded_into_the_seed(fault_server, api_key):
    fault_server.push(truncated({"echo": "x" * 40}), bad_body())
    events = []
    result = call_once(fault_server, api_key, engine_kw={"trace": events.append},
                       sampling=Sampling(seed=7), id="q1", step="generate")
    assert result.outcome == "ok" and result.attempt == 2
    seeds = [r.body["seed"] for r in fault_server.requests]
    assert seeds[0] == 7 and len(set(seeds)) == 3
    assert seeds[1:] == [derive_seed(7, 1), derive_seed(7, 2)]
    assert [e.outcome for e in events] == ["malformed", "malformed", "ok"]
    assert [e.attempt for e in events] == [0, 1, 2]
    assert len({e.cache_key for e in events}) == 3


@pytest.mark.parametrize("output_retries", [0, 2])
def test_malformed_output_retries_are_bounded(fault_server, api_key, output_retries):
    fault_server.push(*[truncated({"echo": "x" * 40})] * 4)
    with pytest.raises(OutputError) as info:
        call_once(fault_server, api_key, engine_kw={"output_retries": output_retries})
    assert info.value.outcome == "malformed" and info.value.result.attempt == output_retries
    assert fault_server.total == output_retries + 1


def test_off_schema_json_is_invalid_and_retried(fault_server, api_key):
    fault_server.push(reply_json({"echo": 5}), reply_json({"echo": "x", "extra": 1}))
    events = []
    result = call_once(fault_server, api_key, engine_kw={"trace": events.append})
    assert result.parsed == {"echo": "hello"}
    assert [e.outcome for e in events] == ["invalid", "invalid", "ok"]


# ----------------------------------------------------------------------------- cache and trace hooks


class DictCache:
    def __init__(self):
        self.data, self.gets, self.puts = {}, 0, 0

    def get(self, key):
        self.gets += 1
        return self.data.get(key)

    def put(self, key, response):
        self.puts += 1
        self.data[key] = response


class AsyncDictCache(DictCache):
    async def get(self, key):
        return DictCache.get(self, key)

    async def put(self, key, response):
        DictCache.put(self, key, response)


@pytest.mark.parametrize("cache_cls", [DictCache, AsyncDictCache])
def test_cache_is_consulted_before_every_network_attempt(fault_server, api_key, cache_cls):
    cache = cache_cls()
    sampling = Sampling(temperature=0.5, seed=1)
    first = call_once(fault_server, api_key, engine_kw={"cache": cache}, sampling=sampling)
    assert (first.cached, cache.gets, cache.puts, fault_server.total) == (False, 1, 1, 1)
    events = []
    second = call_once(fault_server, api_key, engine_kw={"cache": cache, "trace": events.append},
                       sampling=sampling)
    assert second.cached and second.parsed == first.parsed and second.cache_key == first.cache_key
    assert second.latency_s == 0.0 and second.usage == first.usage
    assert fault_server.total == 1, "a cache hit must not reach the server"
    assert [(e.cached, e.outcome) for e in events] == [(True, "ok")]
    # Any sampling change is a different request.
    call_once(fault_server, api_key, engine_kw={"cache": cache},
              sampling=Sampling(temperature=0.6, seed=1))
    assert fault_server.total == 2


def test_cache_replays_failed_attempts_so_a_resume_pays_nothing_twice(fault_server, api_key):
    cache = DictCache()
    fault_server.push(truncated({"echo": "x" * 40}))
    first = call_once(fault_server, api_key, engine_kw={"cache": cache}, sampling=Sampling(seed=5))
    assert first.attempt == 1 and fault_server.total == 2 and cache.puts == 2
    again = call_once(fault_server, api_key, engine_kw={"cache": cache}, sampling=Sampling(seed=5))
    assert (again.attempt, again.cached, again.parsed) == (1, True, first.parsed)
    assert fault_server.total == 2


def test_trace_events_carry_the_contract_fields(fault_server, api_key):
    events = []
    call_once(fault_server, api_key, engine_kw={"trace": events.append}, id="q7", step="verify")
    fault_server.push(error(403))
    with pytest.raises(FatalAPIError):
        call_once(fault_server, api_key, engine_kw={"trace": events.append}, id="q8", step="verify")
    ok, fatal = (e.to_dict() for e in events)
    assert set(ok) == TRACE_FIELDS and set(ok["tokens"]) == {"prompt", "cached", "completion",
                                                              "reasoning"}
    assert (ok["id"], ok["step"], ok["attempt"], ok["cached"], ok["outcome"]) == (
        "q7", "verify", 0, False, "ok")
    assert ok["schema_version"] == 1 and ok["tokens"]["prompt"] > 0
    assert (fatal["id"], fatal["outcome"], fatal["model"]) == ("q8", "fatal", "fault-model")


# ----------------------------------------------------------------------------- units: requests and keys


def _profile(model="gpt-4o", kind="openai", **kw):
    return profile_for(EndpointConfig(base_url="http://x/v1", model=model, kind=kind, **kw))


@pytest.mark.parametrize("model, reasoning", [
    ("gpt-5", True), ("gpt-5-mini", True), ("gpt-5.1", True), ("o1", True), ("o3-mini", True),
    ("o4-mini-2025-04-16", True), ("openai/gpt-5", True), ("gpt-4o", False),
    ("gpt-4o-mini", False), ("gpt-4.1", False), ("o10x", False), ("llama-o3", False),
])
def test_reasoning_models_are_recognised_by_name(model, reasoning):
    assert is_reasoning_model(model) is reasoning


def test_profile_comes_from_config_not_the_name_alone():
    assert _profile("gpt-5").reasoning
    assert not _profile("gpt-5", kind="vllm").reasoning        # vLLM-served: takes temperature
    assert _profile("my-proxy-model", reasoning=True).reasoning  # explicit config wins
    assert not _profile("gpt-5-chat-latest", reasoning=False).reasoning


def test_request_key_changes_with_everything_that_shapes_the_answer():
    profile = _profile()
    base = dict(temperature=0.5, top_p=0.9, max_tokens=100, seed=1, stop=("END",))

    def key(model="gpt-4o", messages=MSG, schema=SCHEMA, attempt=0, kind="openai", **sampling):
        req = build_request(profile, model, messages, Sampling(**{**base, **sampling}),
                            schema=schema, attempt=attempt)
        return request_key(kind, req, schema, attempt)

    variants = [key(), key(temperature=0.6), key(top_p=0.8), key(max_tokens=101), key(seed=2),
                key(stop=("STOP",)), key(presence_penalty=0.1), key(model="gpt-4.1"),
                key(messages=[{"role": "user", "content": "hello!"}]), key(attempt=1),
                key(kind="vllm"), key(schema={**SCHEMA, "required": []}), key(schema=None)]
    assert len(set(variants)) == len(variants)
    assert key() == key()
    reordered = {"required": ["echo"], "additionalProperties": False, "type": "object",
                 "properties": {"echo": {"maxLength": 200, "type": "string"}}}
    assert key(schema=reordered) == key()


def test_derive_seed_keeps_attempt_zero_and_is_reproducible():
    assert derive_seed(42, 0) == 42 and derive_seed(None, 3) is None
    assert derive_seed(42, 1) == derive_seed(42, 1) != derive_seed(42, 2)
    assert 0 <= derive_seed(42, 1) < 2 ** 31


def test_reasoning_effort_needs_a_reasoning_model():
    with pytest.raises(ConfigError, match="reasoning_effort"):
        build_request(_profile(), "gpt-4o", MSG, Sampling(reasoning_effort="low"))


def test_config_mappings_refuse_misspelt_keys():
    with pytest.raises(ConfigError, match="temprature"):
        Sampling.from_mapping({"temprature": 0.5})
    cfg = EndpointConfig.from_mapping({"base_url": "http://x/v1", "model": "m", "rpm": 60,
                                       "sampling": {}}, name="verifier", ignore=("sampling",))
    assert (cfg.label, cfg.rpm) == ("verifier", 60)
    with pytest.raises(ConfigError, match="unknown key"):
        EndpointConfig.from_mapping({"base_url": "http://x/v1", "model": "m", "rmp": 60})
    with pytest.raises(ConfigError, match="timeout_s"):
        EndpointConfig(base_url="http://x/v1", model="m", timeout_s=0)
    with pytest.raises(ConfigError, match="kind"):
        EndpointConfig(base_url="http://x/v1", model="m", kind="anthropic")


# ----------------------------------------------------------------------------- units: retry decisions


def _status_error(status, body=None, headers=None):
    request = httpx2.Request("POST", "http://x/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body)


@pytest.mark.parametrize("status, retry", [(408, True), (409, True), (429, True), (500, True),
                                           (503, True), (400, False), (401, False),
                                           (403, False), (404, False), (422, False)])
def test_status_classification(status, retry):
    assert classify(_status_error(status)).retry is retry


def test_other_failures_are_classified():
    request = httpx2.Request("POST", "http://x")
    assert classify(openai.APITimeoutError(request=request)).reason == "timeout"
    assert classify(openai.APIConnectionError(request=request)).reason == "connection"
    assert classify(TimeoutError()).retry
    assert classify(ValueError("a bug")) is None  # bugs surface, they are not retried
    quota = _status_error(429, {"error": {"code": "insufficient_quota", "message": "m"}})
    assert not classify(quota).retry
    assert not classify(_status_error(500, headers={"x-should-retry": "false"})).retry
    assert classify(_status_error(400, headers={"x-should-retry": "true"})).retry


def test_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < parse_retry_after({"retry-after": date}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None and parse_retry_after({}) is None


def test_backoff_is_exponential_capped_and_seeded():
    import random
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=8.0, seed=3)
    delays = [policy.backoff(i, random.Random(3)) for i in range(6)]
    assert delays == [policy.backoff(i, random.Random(3)) for i in range(6)]
    for i, d in enumerate(delays):
        cap = min(8.0, 2.0 ** i)
        assert cap / 2 <= d <= cap


def test_redact_masks_known_secrets_and_key_shapes():
    text = "bad key sk-proj-abcdef123456 and Bearer tok_987654321 and mysecretvalue99"
    out = redact(text, ["mysecretvalue99"])
    assert "abcdef123456" not in out and "tok_987654321" not in out and "mysecret" not in out
    assert redact("EMPTY placeholder", ["EMPTY"]) == "EMPTY placeholder"


# ----------------------------------------------------------------------------- units: lanes


class FakeClock(Clock):
    def __init__(self):
        self.t = 0.0

    def now(self):
        return self.t

    async def sleep(self, seconds):
        self.t += max(0.0, seconds)
        await asyncio.sleep(0)


def test_token_bucket_spaces_requests_at_the_rate():
    clock = FakeClock()

    async def go():
        bucket = TokenBucket(60, burst_s=2.0, clock=clock)  # 1/s, bursts of 2
        stamps = []
        for _ in range(5):
            await bucket.acquire()
            stamps.append(round(clock.t, 6))
        return stamps

    assert asyncio.run(go()) == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_token_bucket_lets_an_oversized_request_through_and_charges_the_debt():
    clock = FakeClock()

    async def go():
        bucket = TokenBucket(6000, burst_s=1.0, clock=clock)  # 100 tokens/s, capacity 100
        await bucket.acquire(300)   # larger than the bucket: goes at once, 200 in debt
        t_big = clock.t
        await bucket.acquire(50)    # waits for the debt plus its own 50 tokens
        return t_big, clock.t

    t_big, t_next = asyncio.run(go())
    assert t_big == 0.0 and t_next == pytest.approx(2.5)


def test_limiter_bounds_and_grows():
    async def go():
        limiter = Limiter(1)
        await limiter.acquire()
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(0)
        assert not waiter.done() and limiter.in_flight == 1
        limiter.raise_limit(2)
        await asyncio.wait_for(waiter, 1)
        assert (limiter.in_flight, limiter.peak) == (2, 2)
        limiter.release()
        limiter.release()
        assert limiter.in_flight == 0

    asyncio.run(go())


def test_limiter_serves_waiters_by_priority_then_arrival_and_skips_cancelled_ones():
    async def go():
        limiter = Limiter(1)
        freed = []
        limiter.listeners.append(lambda: freed.append(limiter.in_flight))
        await limiter.acquire()
        order = []

        async def wait(name, priority):
            await limiter.acquire(priority)
            order.append(name)

        tasks = {name: asyncio.create_task(wait(name, p))
                 for name, p in (("new-a", 0), ("far", 4), ("new-b", 0), ("gone", 9), ("mid", 2))}
        await asyncio.sleep(0)
        assert (limiter.waiting, limiter.room) == (5, -5)
        tasks["gone"].cancel()
        await asyncio.sleep(0)
        assert limiter.waiting == 4
        for _ in range(4):
            limiter.release()
            await asyncio.sleep(0)
        limiter.release()
        assert order == ["far", "mid", "new-a", "new-b"]
        assert (limiter.in_flight, limiter.waiting, limiter.room) == (0, 0, 1)
        assert len(freed) == 5

        # The drain order: lowest first, applied to calls already queued too.
        await limiter.acquire()
        order.clear()
        tasks = [asyncio.create_task(wait(name, p)) for name, p in (("a", 5), ("b", 1), ("c", 3))]
        await asyncio.sleep(0)
        limiter.set_order(lowest_first=True)
        for _ in range(3):
            limiter.release()
            await asyncio.sleep(0)
        assert order == ["b", "c", "a"]
        await asyncio.gather(*tasks)

    asyncio.run(go())


def test_estimate_tokens_counts_prompt_schema_and_output_cap():
    messages = [{"role": "user", "content": "x" * 400}]
    assert estimate_tokens(messages, 100) == 100 + 4 + 3 + 100
    assert estimate_tokens(messages, 100, SCHEMA) > estimate_tokens(messages, 100)
    assert estimate_tokens(messages, None) > estimate_tokens(messages, 100)


# ----------------------------------------------------------------------------- units: schemas


OBJ = {"type": "object", "additionalProperties": False, "required": ["letter", "steps", "score"],
       "properties": {
           "letter": {"type": "string", "enum": ["A", "B", "C", "D"]},
           "steps": {"type": "array", "minItems": 1, "maxItems": 3,
                     "items": {"type": "string", "maxLength": 5}},
           "score": {"type": "number", "minimum": 0, "maximum": 1},
           "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
       }}


@pytest.mark.parametrize("instance, problem", [
    ({"letter": "A", "steps": ["ok"], "score": 0.5}, None),
    ({"letter": "A", "steps": ["ok"], "score": 1, "note": None}, None),
    ({"letter": "E", "steps": ["ok"], "score": 0.5}, "not one of"),
    ({"letter": "A", "steps": [], "score": 0.5}, "minItems"),
    ({"letter": "A", "steps": ["a", "b", "c", "d"], "score": 0.5}, "maxItems"),
    ({"letter": "A", "steps": ["toolong"], "score": 0.5}, "maxLength"),
    ({"letter": "A", "steps": ["ok"], "score": 1.5}, "maximum"),
    ({"letter": "A", "steps": ["ok"], "score": -1}, "minimum"),
    ({"letter": "A", "steps": ["ok"], "score": True}, "expected number"),
    ({"letter": "A", "steps": ["ok"]}, "missing required property 'score'"),
    ({"letter": "A", "steps": ["ok"], "score": 0, "x": 1}, "unexpected property 'x'"),
    ({"letter": "A", "steps": ["ok"], "score": 0, "note": 3}, "anyOf"),
    (["not", "an", "object"], "expected object"),
])
def test_validator(instance, problem):
    errors = validate(instance, OBJ)
    if problem is None:
        assert errors == []
    else:
        assert errors and problem in errors[0], errors


def test_integer_type_follows_json_not_python():
    schema = {"type": "integer"}
    assert validate(3, schema) == [] and validate(3.0, schema) == []
    assert validate(True, schema) and validate(3.5, schema)


def test_check_schema_refuses_what_the_validator_would_ignore():
    check_schema(OBJ, strict=False)
    with pytest.raises(SchemaError, match="unsupported schema keyword"):
        check_schema({"type": "object", "properties": {"a": {"$ref": "#/x"}}})
    with pytest.raises(SchemaError, match="unsupported schema keyword"):
        check_schema({"oneOf": [{"type": "string"}]})
    with pytest.raises(SchemaError, match="required names undefined"):
        check_schema({"type": "object", "properties": {}, "required": ["a"]})


def test_strict_mode_rules_are_checked_before_sending(fault_server, api_key):
    with pytest.raises(SchemaError, match="every property in required"):
        check_schema(OBJ, strict=True)  # "note" is optional
    loose = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"]}
    with pytest.raises(SchemaError, match="additionalProperties"):
        call_once(fault_server, api_key, schema=loose)
    assert fault_server.total == 0
    # vLLM does not need strict-mode shapes.
    assert call_once(fault_server, None, cfg_kw={"kind": "vllm"}, schema=loose).parsed == {
        "echo": "hello"}


def test_schema_names_follow_openai_rules():
    assert response_format("step_1-ok", {})["json_schema"]["name"] == "step_1-ok"
    with pytest.raises(SchemaError):
        response_format("has space", {})
