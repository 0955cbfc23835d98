"""A real OpenAI-compatible HTTP server with scripted answers and injected faults.

The SDK talks through ``httpx2``, which respx cannot intercept, and the engine's behaviour under
timeouts, dropped sockets and 429s is what matters; so the tests talk to a real server on
127.0.0.1. It is a small HTTP/1.1 server on asyncio streams (keep-alive, Content-Length and
chunked request bodies), running in its own thread and event loop, so it serves many concurrent
requests (3,000 calls at 200 ms with 64 in flight) without touching the caller's loop.

    with FaultServer(latency_s=0.01) as server:
        server.push(rate_limit(0.2), server_error(), reply_json({"answer": "B"}))
        ...  # point an OpenAI client at server.base_url
        assert server.counts == {"429": 1, "500": 1, "ok": 1}
        assert server.peak_in_flight <= 4

Answers come from the scripted queue (:meth:`FaultServer.push`, first in first out) and, when
it is empty, from ``responder(request)`` (default: echo the last message as ``{"echo": ...}``).
Every chat request is recorded (:attr:`FaultServer.requests`), counted under its action's
``kind`` and included in the in-flight peak. ``GET /v1/models``, ``/health`` and ``/stats``
are served too.

Run standalone (e.g. for a benchmark in another process):
``python -m tests.support.fault_server --port 0 --latency-s 0.2`` prints ``READY <base_url>``.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import http
import json
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Action:
    """How to answer one chat request; build with the helper functions below."""

    kind: str                                  # counter label ("ok", "429", "drop", ...)
    status: int = 200
    content: str | None = None                 # assistant content (200 answers)
    finish_reason: str = "stop"
    refusal: str | None = None
    usage: dict | None = None                  # default: estimated from the text sizes
    error: dict | None = None                  # error object for non-200 answers
    headers: tuple[tuple[str, str], ...] = ()  # extra response headers
    raw_body: bytes | None = None              # send exactly these bytes as the body
    hang_s: float | None = None                # never answer; give up after this long
    drop: bool = False                         # close the socket without any response
    echo_auth: bool = False                    # put the request's bearer token in the message


def reply(content: str | None, *, finish_reason: str = "stop", refusal: str | None = None,
          usage: dict | None = None, kind: str = "ok") -> Action:
    return Action(kind=kind, content=content, finish_reason=finish_reason, refusal=refusal,
                  usage=usage)


def reply_json(obj: Any, **kwargs) -> Action:
    return reply(json.dumps(obj), **kwargs)


def error(status: int, message: str = "", *, code: str | None = None,
          retry_after: float | None = None, retry_after_ms: float | None = None,
          echo_auth: bool = False, kind: str | None = None) -> Action:
    headers = []
    if retry_after is not None:
        headers.append(("Retry-After", f"{retry_after:g}"))
    if retry_after_ms is not None:
        headers.append(("retry-after-ms", f"{retry_after_ms:g}"))
    err = {"message": message or http.HTTPStatus(status).phrase, "type": "fault_server",
           "param": None, "code": code}
    return Action(kind=kind or str(status), status=status, error=err, headers=tuple(headers),
                  echo_auth=echo_auth)


def rate_limit(retry_after: float | None = 1.0, *, code: str | None = None) -> Action:
    return error(429, "Rate limit reached", code=code, retry_after=retry_after)


def server_error(status: int = 500) -> Action:
    return error(status, "The server had an error while processing your request")


def hang(seconds: float = 30.0) -> Action:
    """Accept the request and never answer (until the client gives up or ``seconds`` pass)."""
    return Action(kind="hang", hang_s=seconds)


def drop() -> Action:
    return Action(kind="drop", drop=True)


def truncated(obj: Any) -> Action:
    """A normal-looking answer whose JSON content is cut in half (finish_reason=stop)."""
    text = json.dumps(obj)
    return reply(text[: max(1, len(text) // 2)], kind="truncated")


def length(obj: Any) -> Action:
    """An answer cut by the output cap: half the JSON, finish_reason=length."""
    text = json.dumps(obj)
    return reply(text[: max(1, len(text) // 2)], finish_reason="length", kind="length")


def null_content() -> Action:
    return reply(None, kind="null")


def refusal(text: str = "I can't help with that.") -> Action:
    return reply(None, refusal=text, kind="refusal")


def bad_body() -> Action:
    """HTTP 200 whose body is not JSON at all (a broken proxy, a half-written response)."""
    return Action(kind="bad_body", raw_body=b'{"id": "chatcmpl-x", "choices": [{"index": 0,')


# ----------------------------------------------------------------------------- server


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any                       # parsed JSON body, or None
    arrived: float = field(default_factory=time.monotonic)

    @property
    def messages(self) -> list[dict]:
        return (self.body or {}).get("messages") or []

    @property
    def last_content(self) -> str:
        return str(self.messages[-1].get("content", "")) if self.messages else ""


def echo_responder(request: Request) -> Action:
    return reply_json({"echo": request.last_content})


class FaultServer:
    """See the module docstring. Start with ``with FaultServer() as s`` or ``start()``/``stop()``."""

    def __init__(self, *, latency_s: float = 0.0,
                 responder: Callable[[Request], Action] | None = None,
                 models: tuple[str, ...] = ("fault-model",), host: str = "127.0.0.1",
                 port: int = 0):
        self.latency_s = latency_s
        self.responder = responder or echo_responder
        self.models = models
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._queue: collections.deque[Action] = collections.deque()
        self._counts: collections.Counter[str] = collections.Counter()
        self._requests: list[Request] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._conns: set[asyncio.Task] = set()

    # -- life cycle ---------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> "FaultServer":
        self._thread = threading.Thread(target=self._run, name="fault-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault server did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError("fault server failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop_event is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> "FaultServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._startup_error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._handle, self.host, self.port, backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop_event.wait()
            server.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (the command-line mode)."""
        self.start()
        print(f"READY {self.base_url}", flush=True)
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # -- scripting and counters ---------------------------------------------------------
    def push(self, *actions: Action) -> None:
        """Queue actions; each chat request takes the next one (then the responder)."""
        with self._lock:
            self._queue.extend(actions)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def counts(self) -> dict[str, int]:
        """Chat requests answered, per action kind."""
        with self._lock:
            return dict(self._counts)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self._counts.clear()
            self._requests.clear()
            self.peak_in_flight = self.in_flight

    def stats(self) -> dict:
        with self._lock:
            return {"counts": dict(self._counts), "total": sum(self._counts.values()),
                    "peak_in_flight": self.peak_in_flight, "in_flight": self.in_flight}

    def _next_action(self, request: Request) -> Action:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.responder(request)

    # -- HTTP ---------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._conns.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                try:
                    method, target, _version = lines[0].split(" ", 2)
                except ValueError:
                    return
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                try:
                    raw = await self._read_body(reader, headers)
                except (asyncio.IncompleteReadError, ValueError, ConnectionError):
                    return
                keep_open = await self._dispatch(method, target.split("?", 1)[0], headers, raw,
                                                 reader, writer)
                if not keep_open or headers.get("connection", "").lower() == "close":
                    return
        except asyncio.CancelledError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, headers: dict) -> bytes:
        if "content-length" in headers:
            return await reader.readexactly(int(headers["content-length"]))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    return b"".join(chunks)
                chunks.append(chunk[:-2])
        return b""

    async def _dispatch(self, method: str, path: str, headers: dict, raw: bytes,
                        reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path in ("/health", "/v1/health"):
            return await self._send(writer, 200, b"")
        if method == "GET" and path == "/v1/models":
            data = [{"id": m, "object": "model", "owned_by": "fault-server", "created": 0}
                    for m in self.models]
            return await self._send_json(writer, 200, {"object": "list", "data": data})
        if method == "GET" and path == "/stats":
            return await self._send_json(writer, 200, self.stats())
        if method == "POST" and path == "/v1/chat/completions":
            return await self._chat(headers, raw, reader, writer)
        return await self._send_json(writer, 404, {"error": {"message": f"no route {path}"}})

    async def _chat(self, headers: dict, raw: bytes, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bool:
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = None
        request = Request("POST", "/v1/chat/completions", headers, body)
        with self._lock:
            self._requests.append(request)
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            action = self._next_action(request)
            with self._lock:
                self._counts[action.kind] += 1
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            if action.drop:
                return False  # the connection closes with no response at all
            if action.hang_s is not None:
                # Wait until the client hangs up (read returns b"" at EOF) or the time is up.
                try:
                    await asyncio.wait_for(reader.read(1), action.hang_s)
                except asyncio.TimeoutError:
                    pass
                return False
            return await self._answer(action, request, writer)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(self, action: Action, request: Request, writer: asyncio.StreamWriter) -> bool:
        extra = list(action.headers)
        if action.raw_body is not None:
            return await self._send(writer, action.status, action.raw_body, extra)
        if action.status != 200:
            err = dict(action.error or {})
            if action.echo_auth:
                # Real servers echo (part of) a rejected key; the engine must not pass it on.
                token = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                err["message"] = f"Incorrect API key provided: {token}."
            return await self._send_json(writer, action.status, {"error": err}, extra)
        return await self._send_json(writer, 200, self._completion(action, request), extra)

    @staticmethod
    def _completion(action: Action, request: Request) -> dict:
        prompt_chars = sum(len(str(m.get("content", ""))) for m in request.messages)
        out_chars = len(action.content or action.refusal or "")
        usage = action.usage or {
            "prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": out_chars // 4 + 1,
            "total_tokens": prompt_chars // 4 + out_chars // 4 + 2,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        return {
            "id": f"chatcmpl-fault-{id(request):x}", "object": "chat.completion",
            "created": int(time.time()), "model": (request.body or {}).get("model", "unknown"),
            "choices": [{"index": 0, "logprobs": None, "finish_reason": action.finish_reason,
                         "message": {"role": "assistant", "content": action.content,
                                     "refusal": action.refusal}}],
            "usage": usage,
        }

    async def _send_json(self, writer, status: int, obj: Any, headers=()) -> bool:
        return await self._send(writer, status, json.dumps(obj).encode(), headers)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: bytes, headers=()) -> bool:
        reason = http.HTTPStatus(status).phrase
        head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
                f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        try:
            await writer.drain()
        except ConnectionError:
            return False
        return True


class ServerProcess:
    """A server in a child process, so that its event loop does not share the caller's CPU
    time slices: ``with ServerProcess(["-m", "tests.support.fault_server"]) as s: s.base_url``.

    ``args`` follow ``python``; the child prints ``READY <base_url>`` once it listens (what
    :meth:`FaultServer.serve_forever` does) and is terminated on exit.
    """

    def __init__(self, args: list[str]):
        self.args = args
        self.proc: subprocess.Popen | None = None
        self.base_url = ""

    def __enter__(self) -> "ServerProcess":
        self.proc = subprocess.Popen([sys.executable, *self.args], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"server {' '.join(self.args)!r} did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        return self

    def stats(self) -> dict:
        """The child's ``GET /stats`` answer."""
        with urllib.request.urlopen(self.base_url.rsplit("/v1", 1)[0] + "/stats", timeout=10) as r:
            return json.loads(r.read())

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible fault-injection server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-s", type=float, default=0.0)
    args = parser.parse_args(argv)
    FaultServer(host=args.host, port=args.port, latency_s=args.latency_s).serve_forever()


if __name__ == "__main__":
    main()
