"""`inference=openai`: completions through the engine and the cache, resumption, dry runs.

The server is the fault fixture; what it received is the evidence.
"""
from __future__ import annotations

import asyncio
import math

import pytest
from omegaconf import OmegaConf

from fgrft.evaluation.backends.openai import (call_sampling, endpoint_config, estimate_openai,
                                    evaluation_cache_scope, generate_openai)
from fgrft.evaluation.requests import CompletionSink, GenerationRequest, Sampling, request_seed
from fgrft.config import PRICES_FILE
from fgrft.llm import (Budget, BudgetExhaustedError, ConfigError, EndpointSettings, Engine,
                       FatalAPIError, Ledger, OutputError, load_prices)
from tests.support.fault_server import (FaultServer, error, length, null_content, refusal, reply)

SAMPLING = Sampling(temperature=0.5, top_p=0.9, max_tokens=64)


def inference_cfg(server: FaultServer, **overrides):
    """The `inference` group as conf/inference/openai.yaml composes it (local-backend keys too)."""
    cfg = {"backend": "openai", "path": None, "tensor_parallel_size": 1, "data_parallel_size": 1,
           "gpu_memory_utilization": None, "max_model_len": 4096, "enforce_eager": None, "dtype": "auto",
           "batch_size": None, "kind": "vllm", "base_url": server.base_url, "model": "served-model",
           "api_key_env": None, "concurrency": 8, "rpm": None, "tpm": None, "timeout_s": 5.0}
    return OmegaConf.create({**cfg, **overrides})


def make_requests(n: int, prefix: str = "Question") -> list[GenerationRequest]:
    return [GenerationRequest(key=f"item{i}:0", messages=[{"role": "user", "content": f"{prefix} {i}?"}],
                              seed=request_seed(7, f"item{i}", 0)) for i in range(n)]


def answer_with_prompt(request):
    return reply(f"The answer to '{request.last_content}' is B.")


@pytest.fixture
def server():
    with FaultServer(responder=answer_with_prompt, latency_s=0.01) as s:
        yield s


def test_completions_are_written_with_the_request_seed_and_sampling(server, tmp_path):
    requests = make_requests(6)
    sink = CompletionSink(tmp_path / "run" / "completions.partial.jsonl")
    sink.path.parent.mkdir()
    ledger = Ledger(load_prices(PRICES_FILE))
    generate_openai(inference_cfg(server), requests, SAMPLING, sink, tmp_path / "cache", ledger=ledger)

    done = sink.done()
    assert set(done) == {r.key for r in requests}
    first = done["item0:0"]
    assert first.text == "The answer to 'Question 0?' is B." and first.finish_reason == "stop"
    assert first.output_tokens > 0 and first.prompt_token_ids_hash is None
    bodies = {r.last_content: r.body for r in server.requests}
    for r in requests:
        body = bodies[r.messages[0]["content"]]
        assert body["messages"] == r.messages and body["model"] == "served-model"
        sent = (body["seed"], body["temperature"], body["top_p"], body["max_tokens"])
        assert sent == (r.seed, 0.5, 0.9, 64)
        assert "response_format" not in body  # plain text, no schema
    assert (ledger.calls, ledger.cache_hits, ledger.cost_usd) == (6, 0, 0)  # a local server is free
    assert (tmp_path / "cache" / "llm" / "responses.sqlite").exists()


def test_greedy_sends_temperature_zero_and_no_seed():
    greedy = call_sampling(Sampling(temperature=0.0, top_p=0.9, max_tokens=8), seed=3)
    assert (greedy.temperature, greedy.top_p, greedy.seed, greedy.max_tokens) == (0.0, 1.0, None, 8)
    sampled = call_sampling(SAMPLING, seed=3)
    assert (sampled.temperature, sampled.top_p, sampled.seed) == (0.5, 0.9, 3)


def test_every_answer_is_a_result_length_empty_and_refused_included(server, tmp_path):
    server.push(length({"text": "rambling " * 20}), null_content(), refusal("No."),
                reply("filtered", finish_reason="content_filter"))
    requests = make_requests(4)
    sink = CompletionSink(tmp_path / "c.jsonl")
    # Concurrency 1 keeps the scripted answers in request order.
    generate_openai(inference_cfg(server, concurrency=1), requests, SAMPLING, sink, tmp_path)
    done = sink.done()
    assert [done[r.key].finish_reason for r in requests] == ["length", "stop", "stop", "content_filter"]
    assert done["item0:0"].text.startswith('{"text": "rambling') and done["item1:0"].text == ""
    assert done["item2:0"].text == "" and done["item3:0"].text == "filtered"
    assert server.total == 4


def test_allow_length_is_a_plain_text_flag_of_the_engine(server):
    async def go(**kwargs):
        async with Engine() as engine:
            ep = engine.endpoint(EndpointSettings(base_url=server.base_url, model="m", kind="vllm"))
            return await ep.call([{"role": "user", "content": "go"}], **kwargs)

    server.push(length({"a": "b" * 40}), length({"a": "b" * 40}))
    result = asyncio.run(go(allow_length=True))
    assert result.outcome == "ok" and result.finish_reason == "length"
    with pytest.raises(OutputError) as info:
        asyncio.run(go())
    assert info.value.outcome == "length"
    schema = {"type": "object", "properties": {}, "additionalProperties": False, "required": []}
    with pytest.raises(ConfigError, match="plain-text"):
        asyncio.run(go(allow_length=True, schema=schema))
    assert server.total == 2


# Fixed usage for budget arithmetic: 1,000 + 1,000 tokens of gpt-4o-mini cost $0.00075.
USAGE = {"prompt_tokens": 1000, "completion_tokens": 1000, "total_tokens": 2000}
CALL_USD = (1000 * 0.15 + 1000 * 0.60) / 1e6


def test_a_resumed_run_requests_only_what_is_missing(tmp_path, monkeypatch):
    """Interrupted by the budget after 3 calls; the re-run sends exactly the other 7, and a run
    whose sink lost its lines replays them from the cache without a single request."""
    monkeypatch.setenv("FGRFT_TEST_OPENAI_KEY", "sk-test-0123456789")
    requests = make_requests(10)
    responder = lambda r: reply(f"Answer to {r.last_content}", usage=USAGE)  # noqa: E731
    with FaultServer(responder=responder) as server:
        cfg = inference_cfg(server, kind="openai", model="gpt-4o-mini",
                            api_key_env="FGRFT_TEST_OPENAI_KEY", concurrency=1)
        sink = CompletionSink(tmp_path / "c.jsonl")
        with pytest.raises(BudgetExhaustedError, match="3 of 10 completions written"):
            generate_openai(cfg, requests, SAMPLING, sink, tmp_path, budget=Budget(2.5 * CALL_USD))
        first = set(sink.done())
        assert len(first) == 3 and server.total == 3

        pending = [r for r in requests if r.key not in first]
        generate_openai(cfg, pending, SAMPLING, sink, tmp_path)
        assert set(sink.done()) == {r.key for r in requests}
        resent = {r.last_content for r in server.requests[3:]}
        assert resent == {r.messages[0]["content"] for r in pending} and server.total == 10

        sink.path.unlink()  # the sink is lost; every answer is still in the cache
        ledger = Ledger(load_prices(PRICES_FILE))
        generate_openai(cfg, requests, SAMPLING, sink, tmp_path, ledger=ledger)
        assert len(sink.done()) == 10 and server.total == 10
        assert (ledger.cache_hits, ledger.calls, ledger.cost_usd) == (10, 0, 0)


def test_different_weights_behind_one_name_do_not_share_answers(server, tmp_path):
    requests = make_requests(3)
    cfg = inference_cfg(server)
    base = evaluation_cache_scope({"name": "llama31_8b_instruct", "path": None}, cfg)
    tuned = evaluation_cache_scope({"name": "fgrft", "path": "/ckpt/fgrft"}, cfg)
    assert base != tuned
    for scope, expected_total in ((base, 3), (tuned, 6), (base, 6)):
        generate_openai(cfg, requests, SAMPLING, CompletionSink(tmp_path / f"{expected_total}.jsonl"),
                        tmp_path, cache_scope=scope)
        assert server.total == expected_total
    # Hosted model names identify their weights: no scope needed there.
    assert evaluation_cache_scope({"name": "x", "path": "/p"}, inference_cfg(server, kind="openai")) == ""


def test_a_fatal_error_stops_the_run_after_keeping_what_finished(server, tmp_path):
    server.push(reply("first"), error(401, "bad key"))
    sink = CompletionSink(tmp_path / "c.jsonl")
    with pytest.raises(FatalAPIError, match="HTTP 401"):
        generate_openai(inference_cfg(server, concurrency=1), make_requests(5), SAMPLING, sink, tmp_path)
    assert list(sink.done()) == ["item0:0"] and server.total == 2


def test_config_problems_are_reported_before_any_call(server, tmp_path):
    with pytest.raises(ConfigError, match="inference.model"):
        generate_openai(inference_cfg(server, model="???"), make_requests(1), SAMPLING,
                        CompletionSink(tmp_path / "c.jsonl"), tmp_path)
    with pytest.raises(ConfigError, match="kind"):
        endpoint_config(inference_cfg(server, kind="embedded"))
    assert endpoint_config(inference_cfg(server)).concurrency == 8
    assert server.total == 0


def test_dry_run_estimates_offline_and_leaves_out_cached_answers(server, tmp_path):
    requests = make_requests(5)
    hosted = inference_cfg(server, kind="openai", model="gpt-4o-mini", api_key_env="NOT_NEEDED_FOR_A_DRY_RUN")
    plan = estimate_openai(hosted, requests, SAMPLING, cache_dir=tmp_path)
    prompt = sum(math.ceil(len(r.messages[0]["content"]) / 4) for r in requests)
    total = plan.total
    assert (total.calls, total.prompt_tokens, total.completion_tokens) == (5, prompt, 5 * 64)
    assert total.cost_usd == pytest.approx((prompt * 0.15 + 5 * 64 * 0.60) / 1e6)
    assert plan.per_step["evaluate"].calls == 5 and plan.already_cached == 0
    assert not (tmp_path / "llm").exists(), "a dry run must not create the cache"
    assert server.total == 0

    local = inference_cfg(server)
    generate_openai(local, requests[:3], SAMPLING, CompletionSink(tmp_path / "c.jsonl"), tmp_path)
    plan = estimate_openai(local, requests, SAMPLING, cache_dir=tmp_path)
    assert plan.already_cached == 3 and plan.total.calls == 2 and plan.total.cost_usd == 0
    assert server.total == 3


def test_inference_mode_batch_sends_every_item_in_one_round_and_shares_the_cache_with_sync(tmp_path):
    from tests.support.batch_server import BatchScript, BatchServer

    with BatchServer(responder=answer_with_prompt, models=("served-model",)) as batch_server:
        batch_server.script(BatchScript(expire_after=4))
        requests = make_requests(10)
        cfg = inference_cfg(batch_server, mode="batch", batch_poll_s=0.02)
        sink = CompletionSink(tmp_path / "run" / "completions.partial.jsonl")
        sink.path.parent.mkdir()
        ledger = Ledger(load_prices(PRICES_FILE))
        generate_openai(cfg, requests, SAMPLING, sink, tmp_path / "cache", ledger=ledger)
        done = sink.done()
        assert set(done) == {r.key for r in requests} and batch_server.total == 0
        assert done["item3:0"].text == "The answer to 'Question 3?' is B."
        # One round: a batch of 10 that expired after 4 rows, then the 6 missing rows alone.
        assert [len(b.lines) for b in batch_server.batches.values()] == [10, 6]
        assert ledger.summary()["mode"]["batch"]["calls"] == 10

        sink = CompletionSink(tmp_path / "run2" / "completions.partial.jsonl")
        sink.path.parent.mkdir()
        generate_openai(inference_cfg(batch_server), requests, SAMPLING, sink, tmp_path / "cache")
        assert len(sink.done()) == 10 and batch_server.total == 0 and batch_server.creates == 2
