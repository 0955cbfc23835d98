"""The fault server itself: routes, scripted faults, counters, concurrency.

These talk raw HTTP (urllib, asyncio sockets), not the OpenAI SDK, so a fault-server bug cannot
hide behind an engine bug or the other way round.
"""
from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from tests.support.fault_server import (FaultServer, bad_body, drop, error, hang, length,
                                        null_content, rate_limit, refusal, reply_json,
                                        server_error, truncated)

CHAT = {"model": "fault-model", "messages": [{"role": "user", "content": "ping"}]}


def http(server: FaultServer, method: str, path: str, body=None):
    root = server.base_url.removesuffix("/v1")
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(root + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def test_health_models_stats_and_unknown_route(fault_server):
    assert http(fault_server, "GET", "/health")[0] == 200
    status, _, body = http(fault_server, "GET", "/v1/models")
    assert status == 200 and json.loads(body)["data"][0]["id"] == "fault-model"
    assert http(fault_server, "GET", "/nope")[0] == 404
    stats = json.loads(http(fault_server, "GET", "/stats")[2])
    assert stats["total"] == 0  # GET requests are not chat calls


def test_scripted_actions_are_served_in_order_and_counted(fault_server):
    fault_server.push(rate_limit(2.5), server_error(), reply_json({"a": 1}), null_content(),
                      refusal("no"), length({"echo": "x" * 40}), truncated({"echo": "y" * 40}))
    status, headers, body = http(fault_server, "POST", "/v1/chat/completions", CHAT)
    assert status == 429 and headers["Retry-After"] == "2.5"
    assert json.loads(body)["error"]["message"] == "Rate limit reached"
    assert http(fault_server, "POST", "/v1/chat/completions", CHAT)[0] == 500
    replies = [json.loads(http(fault_server, "POST", "/v1/chat/completions", CHAT)[2])
               for _ in range(5)]
    choices = [r["choices"][0] for r in replies]
    assert json.loads(choices[0]["message"]["content"]) == {"a": 1}
    assert replies[0]["model"] == "fault-model" and replies[0]["usage"]["prompt_tokens"] > 0
    assert choices[1]["message"]["content"] is None
    assert choices[2]["message"]["refusal"] == "no"
    assert choices[3]["finish_reason"] == "length"
    assert choices[4]["finish_reason"] == "stop"
    for cut in (choices[3], choices[4]):
        try:
            json.loads(cut["message"]["content"])
            raise AssertionError("truncated content parsed as JSON")
        except json.JSONDecodeError:
            pass
    # Queue empty: the default responder echoes the last message.
    echo = json.loads(http(fault_server, "POST", "/v1/chat/completions", CHAT)[2])
    assert json.loads(echo["choices"][0]["message"]["content"]) == {"echo": "ping"}
    assert fault_server.counts == {"429": 1, "500": 1, "ok": 2, "null": 1, "refusal": 1,
                                   "length": 1, "truncated": 1}
    assert fault_server.total == 8 and len(fault_server.requests) == 8
    assert fault_server.requests[0].body == CHAT


def test_bad_body_is_not_json(fault_server):
    fault_server.push(bad_body())
    status, _, body = http(fault_server, "POST", "/v1/chat/completions", CHAT)
    assert status == 200
    try:
        json.loads(body)
        raise AssertionError("bad_body parsed as JSON")
    except json.JSONDecodeError:
        pass


def _raw_request(body: dict, *, close: bool = True) -> bytes:
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n")
    return head.encode() + data


def test_drop_closes_the_socket_without_a_response(fault_server):
    fault_server.push(drop())
    with socket.create_connection(("127.0.0.1", fault_server.port), timeout=5) as sock:
        sock.sendall(_raw_request(CHAT))
        assert sock.recv(1024) == b""
    assert fault_server.counts == {"drop": 1}


def test_hang_holds_the_request_until_the_client_gives_up(fault_server):
    fault_server.push(hang(30))
    sock = socket.create_connection(("127.0.0.1", fault_server.port), timeout=5)
    sock.sendall(_raw_request(CHAT))
    sock.settimeout(0.3)
    try:
        assert sock.recv(1024) == b"", "a hang must not answer"
    except socket.timeout:
        pass
    assert fault_server.in_flight == 1
    sock.close()
    deadline = time.monotonic() + 2
    while fault_server.in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fault_server.in_flight == 0, "the hang must end when the client hangs up"


def test_keep_alive_and_chunked_bodies(fault_server):
    data = json.dumps(CHAT).encode()
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
               b"\r\n" + f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")

    async def two_on_one_connection():
        reader, writer = await asyncio.open_connection("127.0.0.1", fault_server.port)
        statuses = []
        for raw in (_raw_request(CHAT, close=False), chunked):
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            size = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            body = json.loads(await reader.readexactly(size))
            statuses.append((head.split(b" ")[1], body["choices"][0]["message"]["content"]))
        writer.close()
        return statuses

    statuses = asyncio.run(two_on_one_connection())
    assert statuses == [(b"200", '{"echo": "ping"}')] * 2


def test_serves_many_concurrent_requests_and_tracks_the_peak():
    n, latency = 64, 0.2
    with FaultServer(latency_s=latency) as server:
        async def one(i: int) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(_raw_request({**CHAT, "messages": [{"role": "user", "content": str(i)}]}))
            data = await reader.read()
            writer.close()
            return data

        async def all_of_them():
            return await asyncio.gather(*(one(i) for i in range(n)))

        start = time.monotonic()
        answers = asyncio.run(all_of_them())
        wall = time.monotonic() - start
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers)
        assert all(f'\\"echo\\": \\"{i}\\"'.encode() in a for i, a in enumerate(answers))
        # Served concurrently: 64 x 200 ms sequentially would be 12.8 s.
        assert wall < 2.0, wall
        assert server.peak_in_flight == n
        assert server.counts == {"ok": n}


def test_error_helper_and_reset(fault_server):
    fault_server.push(error(404, "model not found", code="model_not_found"))
    status, _, body = http(fault_server, "POST", "/v1/chat/completions", CHAT)
    assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
    fault_server.push(server_error())
    fault_server.reset()
    assert fault_server.counts == {} and fault_server.pending == 0


def test_command_line_mode_serves_until_terminated():
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.fault_server", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:"), line
        root = line.split()[1].removesuffix("/v1")
        with urllib.request.urlopen(root + "/health", timeout=5) as resp:
            assert resp.status == 200
    finally:
        proc.terminate()
        proc.wait(10)
