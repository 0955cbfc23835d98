"""The SQLite response cache: what it stores, that it is consulted and committed, and that a
run killed with SIGKILL re-sends only the calls that were in flight.

Every claim is judged by what reached the fault server, never by the cache's own counters.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fgrft.llm import EndpointSettings, Engine, RetryPolicy, Sampling, build_request, profile_for, request_key
from fgrft.llm.cache import CacheError, SqliteResponseCache, default_path
from tests.support.fault_server import FaultServer, bad_body, reply_json, truncated

ROOT = Path(__file__).resolve().parent.parent
FAST = RetryPolicy(max_retries=3, base_delay_s=0.005, max_delay_s=0.02)
SCHEMA = {"type": "object", "properties": {"echo": {"type": "string"}}, "required": ["echo"],
          "additionalProperties": False}
RESPONSE = {"well_formed": True, "content": '{"echo": "x"}', "refusal": None, "finish_reason": "stop",
            "model": "m", "usage": {"prompt": 11, "cached": 2, "completion": 7, "reasoning": 1},
            "latency_s": 0.25}


def run_calls(server: FaultServer, cache, contents: list[str], *, concurrency: int = 8, events=None):
    """One engine over ``cache``, every content as one structured call; returns the results."""
    async def go():
        trace = events.append if events is not None else None
        async with Engine(retry=FAST, cache=cache, trace=trace) as engine:
            ep = engine.endpoint(EndpointSettings(base_url=server.base_url, model="fault-model", kind="vllm",
                                                concurrency=concurrency, timeout_s=5.0))
            return await asyncio.gather(*(ep.call([{"role": "user", "content": c}], schema=SCHEMA,
                                                  sampling=Sampling(temperature=0.7, seed=1))
                                          for c in contents))
    return asyncio.run(go())


@pytest.fixture
def cache(tmp_path):
    with SqliteResponseCache.in_dir(tmp_path) as c:
        yield c


# ----------------------------------------------------------------------------- storage


def test_round_trip_survives_reopening_with_usage_and_latency_columns(tmp_path):
    with SqliteResponseCache.in_dir(tmp_path) as cache:
        assert cache.path == tmp_path / "llm" / "responses.sqlite" == default_path(tmp_path)
        assert cache.get("k1") is None
        cache.put_blocking("k1", RESPONSE)
        assert cache.get("k1") == RESPONSE
    with SqliteResponseCache.in_dir(tmp_path) as reopened:
        assert reopened.get("k1") == RESPONSE and len(reopened) == 1
    with sqlite3.connect(default_path(tmp_path)) as conn:
        row = conn.execute("SELECT model, prompt_tokens, cached_tokens, completion_tokens, "
                           "reasoning_tokens, latency_s FROM responses").fetchone()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert row == ("m", 11, 2, 7, 1, 0.25) and mode == "wal"


def test_only_well_formed_responses_are_accepted(cache):
    with pytest.raises(ValueError, match="well-formed"):
        cache.put_blocking("k", {"well_formed": False, "problem": "not JSON"})
    assert len(cache) == 0


def test_a_cache_of_another_schema_version_is_refused(tmp_path):
    SqliteResponseCache.in_dir(tmp_path).close()
    with sqlite3.connect(default_path(tmp_path)) as conn:
        conn.execute("UPDATE meta SET value='99' WHERE name='schema_version'")
    with pytest.raises(CacheError, match="schema version 99"):
        SqliteResponseCache.in_dir(tmp_path)


def test_concurrent_puts_are_group_committed_and_a_cancelled_one_harms_nothing(cache):
    async def go():
        await asyncio.gather(*(cache.put(f"k{i}", RESPONSE) for i in range(200)))
        waiter = asyncio.ensure_future(cache.put("cancelled", RESPONSE))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await cache.put("after", RESPONSE)  # the writer thread is still alive

    asyncio.run(go())
    assert {f"k{i}" for i in range(200)} | {"after"} <= cache.keys()
    assert cache.commits < 200, "puts queued together must share a transaction"


def test_put_returns_at_the_commit_and_the_wal_is_fsynced_after_it_once_for_many(tmp_path,
                                                                                monkeypatch):
    fsynced, unblock = [], threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd):
        unblock.wait(10)  # a disk that takes its time
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    cache = SqliteResponseCache.in_dir(tmp_path)

    async def go():
        await asyncio.gather(*(cache.put(f"k{i}", RESPONSE) for i in range(100)))

    asyncio.run(go())  # returns although no fsync has finished
    assert fsynced == []
    # Committed: another connection (another process, a re-run after kill -9) reads every row.
    with sqlite3.connect(cache.path) as other:
        assert other.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 100
    unblock.set()
    cache.close()  # returns once the last commit is synced
    assert fsynced and set(fsynced) == {f"{cache.path}-wal"}
    assert 1 <= cache.syncs == len(fsynced) <= cache.commits < 100


def test_a_non_durable_cache_never_fsyncs(tmp_path, monkeypatch):
    fsynced = []
    monkeypatch.setattr(os, "fsync", fsynced.append)
    with SqliteResponseCache.in_dir(tmp_path, durable=False) as cache:
        asyncio.run(cache.put("k", RESPONSE))
        assert cache.get("k") == RESPONSE
    assert fsynced == [] and cache.syncs == 0


# ----------------------------------------------------------------------------- through the engine


def test_a_second_run_is_served_from_the_cache_entirely(fault_server, cache):
    contents = [f"q{i}" for i in range(12)]
    first = run_calls(fault_server, cache, contents)
    assert fault_server.total == 12 and len(cache) == 12
    events = []
    second = run_calls(fault_server, cache, contents, events=events)
    assert fault_server.total == 12, "a cached call must not reach the server"
    assert [r.parsed for r in second] == [r.parsed for r in first]
    assert all(e.cached for e in events) and len(events) == 12


def test_editing_one_prompt_re_pays_only_that_call(fault_server, cache):
    contents = [f"q{i}" for i in range(10)]
    run_calls(fault_server, cache, contents)
    assert fault_server.total == 10
    contents[3] = "q3, reworded"
    results = run_calls(fault_server, cache, contents)
    assert fault_server.total == 11
    assert fault_server.requests[-1].last_content == "q3, reworded"
    assert results[3].parsed == {"echo": "q3, reworded"} and not results[3].cached
    assert sum(r.cached for r in results) == 9


def test_failed_attempts_are_replayed_but_broken_bodies_are_not_stored(fault_server, cache):
    # Attempt 0 answers cut-off JSON content in a well-formed body (stored, replayed on resume),
    # attempt 1 a body that is not JSON at all (a transport accident: not stored), attempt 2
    # succeeds.
    fault_server.push(truncated({"echo": "x" * 40}), bad_body())
    first = run_calls(fault_server, cache, ["q"])
    assert first[0].attempt == 2 and fault_server.total == 3 and len(cache) == 2
    again = run_calls(fault_server, cache, ["q"])
    # Attempt 0 and 2 come from the cache; attempt 1 is asked again and now succeeds.
    assert fault_server.total == 4 and again[0].attempt == 1


def _key(profile, sampling: Sampling, *, model="m", scope="", attempt=0) -> str:
    request = build_request(profile, model, [{"role": "user", "content": "hi"}], sampling, attempt=attempt)
    return request_key(profile.kind, request, None, attempt, scope)


def test_the_key_covers_every_sampling_field_and_the_scope():
    """A Sampling field that build_request forgot to send would make different requests share
    one cached answer; every field is varied here, so adding one without wiring it fails."""
    vllm = profile_for(EndpointSettings(base_url="http://x/v1", model="m", kind="vllm"))
    reasoning = profile_for(EndpointSettings(base_url="http://x/v1", model="o3", kind="openai"))
    values = {"temperature": 0.3, "top_p": 0.5, "max_tokens": 17, "seed": 5, "stop": ("END",),
              "presence_penalty": 0.2, "frequency_penalty": 0.1, "top_k": 3, "min_p": 0.1,
              "repetition_penalty": 1.2, "extra": {"ignore_eos": True}}
    fields = {f.name for f in dataclasses.fields(Sampling)}
    assert fields == set(values) | {"reasoning_effort"}, "a new Sampling field needs a case here"
    base = _key(vllm, Sampling())
    keys = {name: _key(vllm, Sampling(**{name: value})) for name, value in values.items()}
    assert base not in keys.values() and len(set(keys.values())) == len(keys)
    assert _key(reasoning, Sampling(reasoning_effort="low")) != _key(reasoning, Sampling())
    assert _key(vllm, Sampling(), scope="ckpt-2") != base
    assert _key(vllm, Sampling(), attempt=1) != base
    # The endpoint URL is deliberately not part of the key (a restarted local server on
    # another port answers the same requests).
    other = profile_for(EndpointSettings(base_url="http://elsewhere:1/v1", model="m", kind="vllm"))
    assert _key(other, Sampling()) == base


# ----------------------------------------------------------------------------- processes

# A run in its own process: N slow calls through the engine and the cache, printing "DONE i"
# as each call returns (by then the engine has committed its answer), then whether torch was
# imported. Its calls are plain engine calls; the cache and engine are the ones under test.
WORKER = textwrap.dedent("""
    import asyncio, sys
    from fgrft.llm import EndpointSettings, Engine, RetryPolicy, SqliteResponseCache
    base_url, cache_dir, first, last, concurrency = sys.argv[1:6]
    cache = SqliteResponseCache.in_dir(cache_dir)

    async def main():
        async with Engine(cache=cache, retry=RetryPolicy(max_retries=2, base_delay_s=0.01)) as engine:
            ep = engine.endpoint(EndpointSettings(base_url=base_url, model="fault-model", kind="vllm",
                                                concurrency=int(concurrency), timeout_s=10))
            async def one(i):
                await ep.call([{"role": "user", "content": f"job-{i}"}], sampling={"seed": i})
                print(f"DONE {i}", flush=True)
            await asyncio.gather(*(one(i) for i in range(int(first), int(last))))

    asyncio.run(main())
    cache.close()
    print(f"TORCH {'torch' in sys.modules}", flush=True)
""")


def start_worker(server: FaultServer, cache_dir: Path, first: int, last: int, concurrency: int):
    return subprocess.Popen([sys.executable, "-c", WORKER, server.base_url, str(cache_dir), str(first),
                             str(last), str(concurrency)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def committed_jobs(cache_dir: Path) -> set[int]:
    """Which calls' answers are on disk, read from the answers themselves (echoes of the prompt)."""
    with sqlite3.connect(default_path(cache_dir)) as conn:
        rows = conn.execute("SELECT response FROM responses").fetchall()
    return {int(json.loads(json.loads(r)["content"])["echo"].split("-")[1]) for (r,) in rows}


def wait_until_quiet(server: FaultServer, quiet_s: float = 0.3, limit_s: float = 10.0) -> None:
    deadline, last, since = time.monotonic() + limit_s, -1, time.monotonic()
    while time.monotonic() < deadline:
        total = server.total
        if total != last or server.in_flight:
            last, since = total, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.02)
    raise AssertionError("the fault server did not settle")


def sent_jobs(requests) -> list[int]:
    return [int(r.last_content.split("-")[1]) for r in requests]


@pytest.mark.parametrize("kill_after", [1, 9])
def test_kill_9_mid_run_resends_only_the_calls_in_flight(tmp_path, kill_after):
    n, concurrency = 24, 4
    with FaultServer(responder=lambda r: reply_json({"echo": r.last_content}), latency_s=0.3) as server:
        worker = start_worker(server, tmp_path, 0, n, concurrency)
        done: set[int] = set()
        while len(done) < kill_after:
            line = worker.stdout.readline()
            assert line.startswith("DONE"), f"worker ended early: {line!r}"
            done.add(int(line.split()[1]))
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert worker.returncode == -signal.SIGKILL
        wait_until_quiet(server)  # requests already in the server's socket buffers still count
        first_run = sent_jobs(server.requests)

        committed = committed_jobs(tmp_path)
        assert done <= committed, "a call reported done before its answer was committed"
        assert 0 < len(committed) < n
        in_flight = set(first_run) - committed
        assert len(in_flight) <= concurrency and len(first_run) == len(set(first_run))

        rerun = start_worker(server, tmp_path, 0, n, concurrency)
        out, _ = rerun.communicate(timeout=60)
        assert rerun.returncode == 0, out
        second_run = sent_jobs(server.requests[len(first_run):])

    assert sorted(second_run) == sorted(set(range(n)) - committed), \
        "the re-run must send exactly the calls whose answers were not committed"
    assert len(first_run) + len(second_run) <= n + concurrency
    assert len(first_run) + len(second_run) == n + len(in_flight)
    assert out.count("DONE") == n and committed_jobs(tmp_path) == set(range(n))
    assert "TORCH False" in out, "the engine/cache path must not import torch"


def test_two_processes_share_one_cache_file(tmp_path):
    with FaultServer(latency_s=0.02) as server:
        # Overlapping ranges, so both processes write (and may race on) the same keys.
        workers = [start_worker(server, tmp_path, 0, 30, 8), start_worker(server, tmp_path, 15, 45, 8)]
        outputs = [w.communicate(timeout=60)[0] for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs
        sent = server.total
        assert 45 <= sent <= 60
        rerun = start_worker(server, tmp_path, 0, 45, 8)
        rerun.communicate(timeout=60)
        assert server.total == sent, "every answer of both processes must be in the shared cache"
    with SqliteResponseCache.in_dir(tmp_path) as cache:
        assert len(cache) == 45
