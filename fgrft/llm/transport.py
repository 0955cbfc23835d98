"""A lean HTTP/1.1 client for plain-``http://`` endpoints (local vLLM servers).

Why: against a local server the client's CPU, not the server, bounded the engine. Per call
the SDK path (request options models, httpx's request and header objects, and above all
httpcore's connection pool, which re-probes every pooled socket with system calls on every
request and response) cost about 3.5 ms of CPU, so 64 calls in flight could not keep up with
a 200 ms server. This client does what the engine needs and nothing else: keep-alive
connections on a stack per origin, one write, one ``readuntil`` plus one ``readexactly``
per answer.

It stands in for ``openai.AsyncOpenAI`` only where the engine uses it (``post`` of a chat
body, ``close``) and fails the way the SDK fails, so the engine's retry owner is unchanged:

    non-2xx status         openai.APIStatusError subclass (the SDK's, by status), with the
                           parsed error object as ``body`` and the response's headers
                           (Retry-After, x-should-retry)
    timeout                openai.APITimeoutError
    refused, reset, cut    openai.APIConnectionError

Scope, on purpose: plain ``http://`` with no proxy, which is what local servers are.
``https://`` endpoints (hosted APIs: TLS, proxies, HTTP/2, ...) and URLs that a proxy
variable applies to keep the SDK client (:func:`applies_to`).

Nothing is resent here: a connection dropped after the request went out may have been
answered (and billed) by the server, so even that is the retry owner's (counted) decision.
An idle connection the server has closed (its keep-alive ran out) is seen before reuse: the
event loop has already read its FIN. No exception carries a request's headers, so none can
carry the API key.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from typing import Any

import httpx2
import openai

# Response heads are small; bodies are read by length, not through this limit.
READ_LIMIT = 1 << 20
MAX_IDLE_PER_ORIGIN = 512
USER_AGENT = f"fgrft-engine (openai-python {openai.__version__} compatible)"

# The SDK's exception class per status (openai._client._make_status_error).
_STATUS_ERRORS = {400: openai.BadRequestError, 401: openai.AuthenticationError,
                  403: openai.PermissionDeniedError, 404: openai.NotFoundError,
                  409: openai.ConflictError, 422: openai.UnprocessableEntityError,
                  429: openai.RateLimitError}


def applies_to(base_url: str) -> bool:
    """Whether :class:`LocalHTTPClient` should carry requests to ``base_url``."""
    url = httpx2.URL(base_url)
    if url.scheme != "http":
        return False
    proxies = urllib.request.getproxies()
    proxy = proxies.get("http") or proxies.get("all")
    return not proxy or bool(urllib.request.proxy_bypass(url.host))


class Answer:
    """The part of an HTTP response the engine reads (``text``), like ``httpx2.Response``."""

    __slots__ = ("status_code", "headers", "content")

    def __init__(self, status_code: int, headers: list[tuple[bytes, bytes]], content: bytes):
        self.status_code, self.headers, self.content = status_code, headers, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @property
    def usable(self) -> bool:
        # If the server closed the connection while idle, the loop has already read its FIN.
        return not (self.reader.at_eof() or self.writer.is_closing())

    def close(self) -> None:
        self.writer.close()


class _Broken(Exception):
    """The exchange failed in a way the SDK reports as a connection error."""


class LocalHTTPClient:
    """See the module docstring. One instance per endpoint lane and event loop."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float,
                 max_idle: int = MAX_IDLE_PER_ORIGIN):
        url = httpx2.URL(base_url)
        if url.scheme != "http":
            raise ValueError(f"LocalHTTPClient is for http:// URLs, not {base_url}")
        self.base_url = str(url).rstrip("/")
        self.host, self.port = url.host, url.port or 80
        self._prefix = url.raw_path.rstrip(b"/")
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        host_header = url.netloc
        self._fixed_headers = (b"Host: %s\r\nAuthorization: Bearer %s\r\nUser-Agent: %s\r\n"
                               b"Accept: application/json\r\nContent-Type: application/json\r\n"
                               % (host_header, api_key.encode(), USER_AGENT.encode()))
        self._idle: list[_Connection] = []
        self.opened = 0  # connections opened, for tests and benchmarks

    async def post(self, path: str, *, body: Any, cast_to: Any = None,
                   options: dict | None = None) -> Answer:
        """POST ``body`` as JSON to ``base_url + path``; the signature mirrors the SDK's."""
        timeout = (options or {}).get("timeout") or self.timeout_s
        payload = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        head = (b"POST %s%s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n"
                % (self._prefix, path.encode(), self._fixed_headers, len(payload)))
        try:
            async with asyncio.timeout(timeout):
                answer = await self._exchange(head + payload)
        except TimeoutError:
            raise openai.APITimeoutError(request=self._request(path)) from None
        except _Broken as exc:
            raise openai.APIConnectionError(message=str(exc), request=self._request(path)) from None
        if not 200 <= answer.status_code < 300:
            raise self._status_error(answer, path)
        return answer

    # -- connections --------------------------------------------------------------------
    async def _exchange(self, data: bytes) -> Answer:
        conn = self._take_idle() or await self._open()
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            answer, keep = await _read_answer(conn.reader)
        except BaseException as exc:
            # Cancelled, timed out or broken half-way: the connection's state is unknown.
            conn.close()
            if isinstance(exc, (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError)):
                raise _Broken(f"connection to {self.host}:{self.port} broken: {exc!r}") from None
            raise
        if keep and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()  # most recently used first: the likeliest to be alive
            if conn.usable:
                return conn
            conn.close()
        return None

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_LIMIT)
        except OSError as exc:
            raise _Broken(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        self.opened += 1
        return _Connection(reader, writer)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()

    # -- errors, shaped as the SDK shapes them -------------------------------------------
    def _request(self, path: str) -> httpx2.Request:
        # Deliberately without headers: nothing attached to an error may hold the key.
        return httpx2.Request("POST", self.base_url + path)

    def _status_error(self, answer: Answer, path: str) -> openai.APIStatusError:
        response = httpx2.Response(answer.status_code, headers=answer.headers, content=answer.content,
                                   request=self._request(path))
        try:
            body: Any = json.loads(answer.content)
        except ValueError:
            body = answer.text or None
        data = body.get("error", body) if isinstance(body, dict) else body
        status = answer.status_code
        default = openai.InternalServerError if status >= 500 else openai.APIStatusError
        cls = _STATUS_ERRORS.get(status, default)
        return cls(f"Error code: {status} - {body}", response=response, body=data)


async def _read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """One HTTP/1.1 response; returns it and whether the connection may be reused."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Broken("server disconnected without sending a response") from None
        raise
    lines = head[:-4].split(b"\r\n")
    try:
        version, status_text = lines[0].split(b" ", 2)[:2]
        status = int(status_text)
    except ValueError:
        raise _Broken(f"bad status line {lines[0][:100]!r}") from None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    connection = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            if not value.isdigit():
                raise _Broken(f"bad content-length {value[:40]!r}")
            length = int(value)
        elif lower == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif lower == b"connection":
            connection = value.lower()
        elif lower == b"content-encoding" and value.lower() not in (b"identity", b""):
            # Never asked for (no Accept-Encoding is sent); refuse rather than misread.
            raise _Broken(f"unexpected content-encoding {value!r}")
    keep = (connection != b"close") if version == b"HTTP/1.1" else (connection == b"keep-alive")
    if chunked:  # RFC 9112: transfer-encoding wins over content-length
        content = await _read_chunked(reader)
    elif length is not None:
        content = await reader.readexactly(length)
    elif status in (204, 304) or 100 <= status < 200:
        content = b""
    else:
        content, keep = await reader.read(-1), False  # the body runs to the end of the connection
    return Answer(status, headers, content), keep


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _Broken(f"bad chunk size line {size_line[:40]!r}") from None
        if size == 0:
            # Optional trailer fields, then the final empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(parts)
        parts.append((await reader.readexactly(size + 2))[:-2])
