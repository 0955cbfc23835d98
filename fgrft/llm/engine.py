"""The call engine: one chat completion per call, through its lane, with retries and checks.

    engine = Engine(cache=..., trace=...)
    gen = engine.endpoint(EndpointSettings(base_url=..., model=..., kind="vllm", name="generator"))
    result = await gen.call(messages, schema=SCHEMA, sampling=Sampling(temperature=0.7, seed=1))

A call runs up to ``1 + output_retries`` *attempts*. Each attempt is one distinct request (its
seed is derived from the attempt number), has its own cache key, is looked up in the cache,
and, on a miss, is sent through the lane by the transport retry owner (:mod:`.retry`), which
may resend the identical request several times. An attempt ends in an *outcome*:

    ok              parsed (and schema-valid) content
    malformed       the body or the content is not valid JSON      -> next attempt
    invalid         valid JSON that breaks the schema              -> next attempt
    length          cut by the output cap (finish_reason=length)   -> OutputError, never repaired
                    (plain-text calls with ``allow_length=True`` accept it: outcome ok)
    content_filter  finish_reason=content_filter                   -> OutputError
    refusal         the model refused (message.refusal)            -> OutputError
    empty           null or blank content                          -> OutputError
    fatal           the server refused the request                 -> FatalAPIError, run stops
    exhausted       transient failures outlived the retry budget   -> RetryExhaustedError

Every attempt (including failed ones) is reported to the ``trace`` callback as a
:class:`TraceEvent` with the traces.jsonl fields of CONTRACTS.md.

Cache hook (:class:`fgrft.llm.cache.SqliteResponseCache` is the crash-safe one): any object
with ``get(key) -> dict | None`` and ``put(key, response: dict)``, sync or async. It is looked
up before every network attempt, and it stores the *response* of each well-formed attempt
(content, finish_reason, refusal, model, usage), not the verdict, so a resumed run replays the
same attempts, reaches the same outcomes with the current validation code, and pays for
nothing twice. ``put`` is awaited before the attempt's outcome is acted on, so with a durable
cache a call never counts as done before its answer is on disk.

Accounting hook: a :class:`fgrft.llm.accounting.Ledger` (``Engine(ledger=...)``) records every
attempt (tokens, cost; cache hits cost nothing) and, when it holds a ``Budget``, is consulted
right before each request is sent: once the budget is spent no new request starts
(:class:`~fgrft.llm.accounting.BudgetExhaustedError`), while requests in flight finish.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Mapping, Protocol, Sequence

import httpx2
import openai

from fgrft.llm.config import EndpointSettings, Sampling
from fgrft.llm.errors import (ConfigError, FatalAPIError, OutputError, RetryExhaustedError,
                              RunStoppedError, redact)
from fgrft.llm.batch import BatchFailedError
from fgrft.llm.lanes import DEFAULT_OUTPUT_ESTIMATE, Clock, Lane, estimate_tokens
from fgrft.llm.profiles import Profile, build_request, profile_for, request_key
from fgrft.llm.retry import RetryPolicy, call_with_retries
from fgrft.llm.structured import check_schema, parse_json, validate
from fgrft.llm.transport import LocalHTTPClient
from fgrft.llm.transport import applies_to as transport_applies_to

if TYPE_CHECKING:  # pragma: no cover
    from fgrft.llm.accounting import Ledger
    from fgrft.llm.batch import Batcher

log = logging.getLogger(__name__)

TRACE_SCHEMA_VERSION = 1
# Outcomes worth another attempt with a new seed: sampling noise, not the request's fault.
RETRIED_OUTCOMES = frozenset({"malformed", "invalid"})
# Keyless local servers still need a non-empty key: the SDK refuses to send without one, and
# passing None would make it fall back to OPENAI_API_KEY and send that key to the local server.
KEYLESS_PLACEHOLDER = "EMPTY"


@dataclass(frozen=True)
class Usage:
    prompt: int = 0
    cached: int = 0
    completion: int = 0
    reasoning: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.prompt + other.prompt, self.cached + other.cached,
                     self.completion + other.completion, self.reasoning + other.reasoning)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_api(cls, usage: Any) -> "Usage":
        """From an OpenAI ``usage`` object; vLLM omits the details, some servers omit it all."""
        if not isinstance(usage, Mapping):
            return cls()
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(prompt=int(usage.get("prompt_tokens") or 0),
                   cached=int(prompt_details.get("cached_tokens") or 0),
                   completion=int(usage.get("completion_tokens") or 0),
                   reasoning=int(completion_details.get("reasoning_tokens") or 0))


@dataclass
class CallResult:
    parsed: Any                 # the JSON object (schema calls), else None
    text: str | None            # the raw content as returned
    usage: Usage
    latency_s: float            # round trip of the answering request; 0 for a cache hit
    attempt: int                # 0-based output attempt that produced this result
    model: str                  # the model the server says answered (else the one asked)
    finish_reason: str | None
    outcome: str                # see the module docstring
    cache_key: str = ""
    cached: bool = False
    retries: int = 0            # transport retries spent on this attempt
    problem: str | None = None  # why the outcome is not "ok"


@dataclass(frozen=True)
class TraceEvent:
    """One line of traces.jsonl (CONTRACTS.md)."""

    id: str | None
    step: str | None
    attempt: int
    cache_key: str
    cached: bool
    model: str
    tokens: Usage
    latency_s: float
    outcome: str

    def to_dict(self) -> dict:
        return {"schema_version": TRACE_SCHEMA_VERSION, "id": self.id, "step": self.step,
                "attempt": self.attempt, "cache_key": self.cache_key, "cached": self.cached,
                "model": self.model, "tokens": self.tokens.to_dict(),
                "latency_s": round(self.latency_s, 4), "outcome": self.outcome}


class ResponseCache(Protocol):
    """What the engine needs from a response cache (sync or async methods both work).

    ``put`` receives a JSON-serialisable dict for every well-formed response: ``well_formed``
    (True), ``content``, ``refusal``, ``finish_reason``, ``model``, ``usage`` (the
    :class:`Usage` fields) and ``latency_s`` (of the original request); ``get`` returns it
    unchanged or ``None``. Keys come from :func:`fgrft.llm.profiles.request_key`.
    """

    def get(self, key: str) -> dict | None | Awaitable[dict | None]: ...

    def put(self, key: str, response: dict) -> None | Awaitable[None]: ...


@dataclass
class Endpoint:
    """A registered endpoint: its settings, profile and (shared) lane."""

    cfg: EndpointSettings
    profile: Profile
    lane: Lane
    engine: "Engine" = field(repr=False)

    async def call(self, messages: Sequence[dict], **kwargs) -> CallResult:
        return await self.engine.call(self, messages, **kwargs)


# Returns an ``openai.AsyncOpenAI`` or anything with the same ``post(path, *, body, cast_to,
# options)`` (whose result has ``.text``), the same errors and ``close()``: LocalHTTPClient.
ClientFactory = Callable[[EndpointSettings, str], "openai.AsyncOpenAI | LocalHTTPClient"]


def default_client(cfg: EndpointSettings, api_key: str) -> openai.AsyncOpenAI | LocalHTTPClient:
    # Plain-http endpoints (local servers) get the lean client: through the SDK, client CPU
    # per call, not the server, bounded a local run (transport.py). It raises the SDK's
    # exceptions, so everything below is the same for both.
    if transport_applies_to(cfg.base_url):
        return LocalHTTPClient(cfg.base_url, api_key, cfg.timeout_s)
    return sdk_client(cfg, api_key)


def sdk_client(cfg: EndpointSettings, api_key: str) -> openai.AsyncOpenAI:
    """The SDK client (``Engine(client_factory=sdk_client)`` forces it for any URL)."""
    # max_retries=0: the engine is the only retry owner. The timeout is also passed per call.
    return openai.AsyncOpenAI(api_key=api_key, base_url=cfg.base_url, max_retries=0,
                              timeout=cfg.timeout_s)


class Engine:
    """Registers endpoints (one lane per (base_url, model)) and makes calls through them.

    Use one engine per event loop (``async with Engine(...) as engine``): its lanes and
    clients bind to the loop that first uses them.
    """

    def __init__(self, *, retry: RetryPolicy | None = None, output_retries: int = 2,
                 cache: ResponseCache | None = None,
                 trace: Callable[[TraceEvent], None] | None = None,
                 clock: Clock | None = None, burst_s: float = 1.0,
                 client_factory: ClientFactory | None = None, ledger: "Ledger | None" = None):
        if output_retries < 0:
            raise ConfigError("output_retries must be >= 0")
        self.retry = retry or RetryPolicy()
        self.output_retries = output_retries
        self.cache = cache
        self.trace = trace
        self.ledger = ledger
        self.clock = clock or Clock()
        self.burst_s = burst_s
        self._client_factory = client_factory or default_client
        self._rng = random.Random(self.retry.seed)
        self._lanes: dict[tuple[str, str], Lane] = {}
        self._lane_owner: dict[tuple[str, str], EndpointSettings] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._clients: dict[tuple[str, str], openai.AsyncOpenAI | LocalHTTPClient] = {}
        self._stopped: FatalAPIError | None = None
        self._batcher: "Batcher | None" = None

    # -- registration -------------------------------------------------------------------
    def endpoint(self, cfg: EndpointSettings | Mapping[str, Any], *, name: str = "") -> Endpoint:
        """Register ``cfg`` (checking its key now, before any work) and return its handle.

        Endpoints naming the same (base_url, model) share a lane whose concurrency is the
        largest of their settings and whose RPM/TPM are the smallest.
        """
        if not isinstance(cfg, EndpointSettings):
            cfg = EndpointSettings.from_mapping(cfg, name=name)
        key = cfg.lane_key
        api_key = self._resolve_key(cfg)
        if self.ledger is not None:
            # A budget cannot be enforced on a model without a price: refuse before any call.
            self.ledger.require_price(cfg.model, local=_is_local(cfg),
                                      where=f"endpoint {cfg.label!r}")
        if cfg.mode == "batch" and self._batcher is None:
            from fgrft.llm.batch import Batcher

            self._batcher = Batcher(self)
        lane = self._lanes.get(key)
        if lane is None:
            lane = Lane(key, concurrency=cfg.concurrency, rpm=cfg.rpm, tpm=cfg.tpm,
                        burst_s=self.burst_s, clock=self.clock)
            self._lanes[key], self._lane_owner[key], self._keys[key] = lane, cfg, api_key
        else:
            owner = self._lane_owner[key]
            if (owner.kind, owner.api_key_env) != (cfg.kind, cfg.api_key_env):
                raise ConfigError(
                    f"endpoints {owner.label!r} and {cfg.label!r} share base_url and model "
                    f"({key[0]}, {key[1]}) but differ in kind or api_key_env")
            lane.limiter.raise_limit(cfg.concurrency)
            lane.set_rates(cfg.rpm, cfg.tpm)
        return Endpoint(cfg=cfg, profile=profile_for(cfg), lane=lane, engine=self)

    @staticmethod
    def _resolve_key(cfg: EndpointSettings) -> str:
        value = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if value:
            return value
        if cfg.kind == "openai":
            need = (f"environment variable {cfg.api_key_env} is not set" if cfg.api_key_env
                    else "api_key_env is not configured")
            raise ConfigError(f"endpoint {cfg.label!r} ({cfg.base_url}) needs an API key: {need}")
        return KEYLESS_PLACEHOLDER

    @property
    def batcher(self) -> "Batcher | None":
        """The provider-batch path, present once a ``mode=batch`` endpoint is registered."""
        return self._batcher

    @property
    def lanes(self) -> dict[tuple[str, str], Lane]:
        return dict(self._lanes)

    @property
    def _secrets(self) -> tuple[str, ...]:
        return tuple(k for k in self._keys.values() if k != KEYLESS_PLACEHOLDER)

    def _client(self, ep: Endpoint) -> openai.AsyncOpenAI | LocalHTTPClient:
        key = ep.cfg.lane_key
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self._client_factory(self._lane_owner[key], self._keys[key])
        return client

    async def aclose(self) -> None:
        if self._batcher is not None:
            await self._batcher.aclose()
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- calls --------------------------------------------------------------------------
    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise RunStoppedError(f"run stopped after a fatal error: {self._stopped}")

    async def call(self, endpoint: Endpoint | EndpointSettings, messages: Sequence[dict], *,
                   schema: dict | None = None, schema_name: str = "response",
                   sampling: Sampling | Mapping[str, Any] | None = None,
                   id: str | None = None, step: str | None = None,
                   allow_length: bool = False, priority: float = 0,
                   expected_output_tokens: int | None = None) -> CallResult:
        """One chat completion; returns an ``ok`` :class:`CallResult` or raises.

        ``id`` and ``step`` only label the trace events. ``allow_length`` (plain-text calls
        only) accepts an answer cut by the output cap, for callers to whom a rambling answer
        is a result (evaluation), not a failure; check ``finish_reason``. ``priority``
        orders calls waiting for the lane (highest first). ``expected_output_tokens`` (batch
        endpoints) sizes the budget reservation; the output cap when not given. Raises
        :class:`OutputError` (unusable content), :class:`FatalAPIError` (and
        :class:`RunStoppedError` on later calls), :class:`RetryExhaustedError`,
        :class:`~fgrft.llm.accounting.BudgetExhaustedError` (a ``RunStoppedError``),
        :class:`ConfigError`.
        """
        ep = endpoint if isinstance(endpoint, Endpoint) else self.endpoint(endpoint)
        if not isinstance(sampling, Sampling):
            sampling = Sampling.from_mapping(sampling)
        if allow_length and schema is not None:
            raise ConfigError("allow_length is for plain-text calls: a structured answer cut "
                              "by the output cap is not valid JSON")
        if schema is not None:
            strict = ep.profile.kind == "openai" and ep.profile.structured == "json_schema"
            check_schema(schema, strict=strict)
        tokens = estimate_tokens(messages, sampling.max_tokens, schema)

        for attempt in range(self.output_retries + 1):
            self._raise_if_stopped()
            request = build_request(ep.profile, ep.cfg.model, messages, sampling, schema=schema,
                                    schema_name=schema_name, attempt=attempt, label=ep.cfg.label)
            key = request_key(ep.profile.kind, request, schema, attempt, ep.cfg.cache_scope)
            response = await self._cache_get(key)
            cached, retries = response is not None, 0
            if cached:
                self._account(ep, Usage(), cached=True)
            else:
                try:
                    if ep.cfg.mode == "batch":
                        response = await self._fetch_batched(ep, request, tokens, key, sampling,
                                                             expected_output_tokens)
                    else:
                        response, retries = await self._fetch(ep, request, tokens, key, priority)
                except (FatalAPIError, RetryExhaustedError, BatchFailedError) as exc:
                    if isinstance(exc, FatalAPIError) and self._stopped is None:
                        self._stopped = exc
                    outcome = ("fatal" if isinstance(exc, FatalAPIError) else
                               "batch_failed" if isinstance(exc, BatchFailedError) else "exhausted")
                    self._account(ep, Usage(), cached=False)
                    self._emit(TraceEvent(id, step, attempt, key, False, ep.cfg.model,
                                          Usage(), 0.0, outcome))
                    raise
            result = _interpret(response, schema, ep.cfg.model, allow_length)
            result.attempt, result.cache_key, result.cached, result.retries = attempt, key, cached, retries
            if cached:
                result.latency_s = 0.0
            self._emit(TraceEvent(id, step, attempt, key, cached, result.model, result.usage,
                                  result.latency_s, result.outcome))
            if result.outcome == "ok":
                return result
            where = f"endpoint {ep.cfg.label!r} (model {ep.cfg.model})"
            if result.outcome in RETRIED_OUTCOMES and attempt < self.output_retries:
                log.info("%s: attempt %d %s (%s); trying again with a new seed", where, attempt,
                         result.outcome, result.problem)
                continue
            message = redact(f"{where}: {result.outcome} output on attempt {attempt}: "
                             f"{result.problem}", self._secrets)
            raise OutputError(message, result)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch(self, ep: Endpoint, request: dict, tokens: int, key: str,
                     priority: float = 0) -> tuple[dict, int]:
        """Send one attempt through the lane and the transport retry owner; charge and cache
        its answer before the lane slot is given back."""
        client = self._client(ep)
        timeout = ep.cfg.timeout_s
        # The request dict is exactly what ``chat.completions.create(**request)`` takes, but it
        # is sent through the client's generic ``post`` (the SDK's documented way to send
        # arbitrary bodies): same auth, timeout and status errors, without create()'s per-call
        # TypedDict transform (about a fifth of the client's CPU per call, profiled) and with
        # the raw body left for us to judge. ``security`` as create() sets it: bearer key only.
        body = _wire_body(request)
        options = {"timeout": timeout, "security": {"bearer_auth": True}}

        async def try_once() -> dict:
            async with ep.lane.slot(tokens, priority):
                # Calls queued behind a fatal error, or behind the budget running out, must
                # not reach the server; checked here, the last moment before sending.
                self._raise_if_stopped()
                if self.ledger is not None:
                    self.ledger.check()
                start = self.clock.now()
                # The SDK's timeout bounds each socket operation; this bounds the whole request.
                async with asyncio.timeout(timeout):
                    response = await client.post("/chat/completions", body=body,
                                                 cast_to=httpx2.Response, options=options)
                answer = _parse_body(response.text, self.clock.now() - start)
                # Both inside the slot. Charged first, before anything yields to the event
                # loop, so the next call sees this spend when it checks the budget; committed
                # before the slot is freed, so a kill -9 at any moment loses at most
                # `concurrency` paid answers per lane (the calls truly in flight). (The
                # SQLite cache's fsync follows the commit off this path: see cache.py.)
                self._account(ep, _usage(answer), cached=False)
                if answer.get("well_formed"):
                    await self._cache_put(key, answer)
                return answer

        where = {"endpoint": ep.cfg.label, "base_url": ep.cfg.base_url, "model": ep.cfg.model}
        return await call_with_retries(try_once, lane=ep.lane, policy=self.retry, rng=self._rng,
                                       clock=self.clock, where=where, secrets=self._secrets)

    async def _fetch_batched(self, ep: Endpoint, request: dict, tokens: int, key: str,
                             sampling: Sampling, expected_output_tokens: int | None) -> dict:
        """One attempt as a row of a provider batch (:mod:`.batch`); cached and charged there."""
        self._raise_if_stopped()
        if self.ledger is not None:
            self.ledger.check()
        cap = sampling.max_tokens
        output = expected_output_tokens if expected_output_tokens is not None else cap
        if output is None:
            output = DEFAULT_OUTPUT_ESTIMATE
        prompt = max(0, tokens - (cap if cap is not None else DEFAULT_OUTPUT_ESTIMATE))
        reserve = 0.0
        if self.ledger is not None:
            price = self.ledger.prices.price_for(ep.cfg.model, local=_is_local(ep.cfg))
            if price is not None:
                reserve = price.for_mode("batch").cost(prompt, 0, output)
        return await self._batcher.fetch(ep, request, key, prompt + output, reserve)

    async def _cache_get(self, key: str) -> dict | None:
        if self.cache is None:
            return None
        value = self.cache.get(key)
        return await value if inspect.isawaitable(value) else value

    async def _cache_put(self, key: str, response: dict) -> None:
        if self.cache is not None:
            value = self.cache.put(key, response)
            if inspect.isawaitable(value):
                await value

    def _account(self, ep: Endpoint, usage: Usage, *, cached: bool, mode: str = "sync") -> float:
        if self.ledger is None:
            return 0.0
        # Charged by the configured model name (servers answer with snapshot names).
        return self.ledger.record(ep.cfg.model, usage, cached=cached, local=_is_local(ep.cfg),
                                  mode=mode)

    def _emit(self, event: TraceEvent) -> None:
        if self.trace is not None:
            self.trace(event)


def _is_local(cfg: EndpointSettings) -> bool:
    """Self-hosted (vLLM) endpoints have no per-token bill unless the price table says so."""
    return cfg.kind == "vllm"


def _parse_body(text: str, latency_s: float) -> dict:
    """The parts of a chat-completion body the engine uses, as a cacheable dict.

    The body is parsed here rather than by the SDK: the SDK returns a bare ``str`` for a
    non-JSON body and raises ``JSONDecodeError`` for a broken JSON one, and a partially filled
    model for a body missing fields; one plain check is simpler to trust.
    """
    try:
        body = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return {"well_formed": False, "problem": f"response body is not JSON: {text[:120]!r}",
                "latency_s": latency_s}
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return {"well_formed": False, "problem": "response body has no choices",
                "latency_s": latency_s}
    message = choices[0].get("message") or {}
    if not isinstance(message, dict):
        return {"well_formed": False, "problem": "choice has no message", "latency_s": latency_s}
    return {"well_formed": True, "content": message.get("content"),
            "refusal": message.get("refusal"), "finish_reason": choices[0].get("finish_reason"),
            "model": body.get("model"), "usage": Usage.from_api(body.get("usage")).to_dict(),
            "latency_s": latency_s}


def _usage(response: dict) -> Usage:
    return Usage(**response["usage"]) if response.get("usage") else Usage()


def _interpret(response: dict, schema: dict | None, asked_model: str,
               allow_length: bool = False) -> CallResult:
    """Judge one response. Order matters: a cut-off or refused answer is reported as such
    even when its partial content happens to be (in)valid JSON."""
    usage = _usage(response)
    content = response.get("content")
    result = CallResult(parsed=None, text=content if isinstance(content, str) else None,
                        usage=usage, latency_s=float(response.get("latency_s") or 0.0),
                        attempt=0, model=response.get("model") or asked_model,
                        finish_reason=response.get("finish_reason"), outcome="ok")

    def fail(outcome: str, problem: str) -> CallResult:
        result.outcome, result.problem = outcome, problem
        return result

    if not response.get("well_formed"):
        return fail("malformed", response.get("problem") or "malformed response body")
    if result.finish_reason == "length" and not allow_length:
        return fail("length", "finish_reason=length: the output cap cut the answer")
    if result.finish_reason == "content_filter":
        return fail("content_filter", "finish_reason=content_filter")
    if response.get("refusal"):
        return fail("refusal", f"refused: {str(response['refusal'])[:200]}")
    if not isinstance(content, str) or not content.strip():
        return fail("empty", "content is null or blank")
    if schema is None:
        return result
    value, problem = parse_json(content)
    if problem:
        return fail("malformed", problem)
    errors = validate(value, schema)
    if errors:
        return fail("invalid", "; ".join(errors[:5]) + (" ..." if len(errors) > 5 else ""))
    result.parsed = value
    return result


def _wire_body(request: dict) -> dict:
    """The JSON body ``chat.completions.create(**request)`` would send: ``extra_body`` keys
    merged at the top level (and winning, as in the SDK)."""
    body = {k: v for k, v in request.items() if k != "extra_body"}
    body.update(request.get("extra_body") or {})
    return body
