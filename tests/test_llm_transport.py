"""The lean client for local http servers: it must fail exactly as the SDK fails (the engine's
retry owner judges both the same way), read every response framing, and never reuse a
connection the server closed. The engine suite runs all its faults through it as well."""
from __future__ import annotations

import asyncio
import json

import httpx2
import openai
import pytest

from fgrft.llm import EndpointSettings, Engine, RetryPolicy
from fgrft.llm.engine import default_client, sdk_client
from fgrft.llm.retry import classify
from fgrft.llm.transport import LocalHTTPClient, applies_to
from tests.support.fault_server import (FaultServer, bad_body, drop, error, hang, rate_limit,
                                        reply_json, server_error)

KEY = "sk-test-SECRET-0123456789abcdefXYZ"
BODY = {"model": "fault-model", "messages": [{"role": "user", "content": "hi"}]}


async def outcome(client):
    """(exception type, classify's decision) or ('ok', parsed body) for one post."""
    try:
        answer = await client.post("/chat/completions", body=BODY, cast_to=httpx2.Response,
                                   options={"timeout": 0.5, "security": {"bearer_auth": True}})
    except Exception as exc:  # noqa: BLE001 - compared below
        decision = classify(exc)
        return type(exc).__name__, decision and (decision.retry, decision.reason, decision.status,
                                                 decision.retry_after, decision.detail)
    return "ok", answer.text[:20]


@pytest.mark.parametrize("action", [
    rate_limit(0.25), rate_limit(1, code="insufficient_quota"), server_error(), server_error(503),
    error(400, "bad request"), error(401, echo_auth=True), error(404), error(422),
    error(409), reply_json({"echo": "x"}), bad_body(), drop(), hang(5),
], ids=lambda a: a.kind)
def test_the_lean_client_fails_exactly_like_the_sdk(action):
    with FaultServer() as server:
        cfg = EndpointSettings(base_url=server.base_url, model="fault-model", timeout_s=0.5)

        async def both():
            results = []
            for client in (default_client(cfg, KEY), sdk_client(cfg, KEY)):
                server.push(action)
                results.append(await outcome(client))
                await client.close()
            return results

        lean, sdk = asyncio.run(both())
    assert isinstance(default_client(cfg, KEY), LocalHTTPClient)
    if lean[0] == "ok":
        assert sdk == lean
    else:
        # Same SDK exception type and the same retry decision, reason, status, Retry-After and
        # server message; messages may hold the echoed key, which the engine redacts later.
        assert lean == sdk


async def _raw_server(answers: list[bytes]):
    """Answers requests with the given raw bytes in turn; closes a connection after an answer
    whose body runs to the end of the connection (neither length nor chunked)."""
    queue = list(answers)

    async def handle(reader, writer):
        try:
            while queue:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                answer = queue.pop(0)
                writer.write(answer)
                await writer.drain()
                if b"content-length" not in answer.lower() and b"chunked" not in answer.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


PAYLOAD = json.dumps({"ok": True}).encode()
FRAMED = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(PAYLOAD), PAYLOAD)


def test_chunked_close_delimited_and_length_framed_answers():
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"5\r\n%s\r\n" % PAYLOAD[:5] + b"%x;ext=1\r\n%s\r\n" % (len(PAYLOAD) - 5, PAYLOAD[5:])
               + b"0\r\nX-Trailer: 1\r\n\r\n")
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + PAYLOAD

    async def go():
        server, url = await _raw_server([chunked, FRAMED, until_close, FRAMED])
        client = LocalHTTPClient(url, "EMPTY", 5.0)
        async with server:
            texts = [(await client.post("/chat/completions", body={"i": i})).text for i in range(4)]
            await client.close()
        return texts, client.opened

    texts, opened = asyncio.run(go())
    assert [json.loads(t) for t in texts] == [{"ok": True}] * 4
    assert opened == 2  # chunked and framed answers keep the connection; the third ends it


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def go():
        server, url = await _raw_server([FRAMED, FRAMED])
        client = LocalHTTPClient(url, "EMPTY", 5.0)
        async with server:
            await client.post("/chat/completions", body={})
            for conn in client._idle:  # the server's keep-alive timeout: its FIN arrives
                conn.reader.feed_eof()
            await client.post("/chat/completions", body={})
            await client.close()
        return client.opened

    # Sending into the closed connection would fail the call; a fresh one is opened instead.
    assert asyncio.run(go()) == 2


def test_the_engine_uses_it_for_local_urls_and_reuses_connections():
    with FaultServer(latency_s=0.01) as server:
        async def go():
            async with Engine(retry=RetryPolicy(max_retries=1, base_delay_s=0.01)) as engine:
                ep = engine.endpoint(EndpointSettings(base_url=server.base_url, model="fault-model",
                                                    kind="vllm", concurrency=4))
                await asyncio.gather(*(ep.call([{"role": "user", "content": str(i)}]) for i in range(40)))
                return engine._client(ep)

        client = asyncio.run(go())
    assert isinstance(client, LocalHTTPClient) and client.opened <= 4 and server.total == 40


def test_only_plain_http_without_a_proxy_gets_the_lean_client(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert applies_to("http://127.0.0.1:8000/v1")
    assert not applies_to("https://api.openai.com/v1")
    assert isinstance(default_client(EndpointSettings(base_url="https://api.openai.com/v1", model="m"), KEY),
                      openai.AsyncOpenAI)
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    assert not applies_to("http://gpu-node:8000/v1")
    monkeypatch.setenv("no_proxy", "gpu-node")
    assert applies_to("http://gpu-node:8000/v1")
