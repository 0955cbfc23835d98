"""The single retry owner for transport failures.

The SDK's own retries are off (``max_retries=0``) so that exactly one place decides: this one.

* Retried: connection errors, timeouts, HTTP 408/409/429/5xx (and whatever a server marks with
  ``x-should-retry: true``), with exponential backoff and full jitter from a seeded RNG.
* ``Retry-After`` (``retry-after-ms``, seconds or an HTTP date) is honoured, capped at
  ``max_retry_after_s``, and pauses the whole lane: the limit it reports is the account's.
* Fatal at once: every other 4xx (400/401/403/404/422 ...), and a 429 whose error code says
  the quota is gone (``insufficient_quota``), which no amount of waiting fixes.

Output problems (a malformed body, off-schema JSON) are not transport failures; the engine
handles them with their own, smaller budget (``output_retries``).
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping, TypeVar

import openai

from fgrft.llm.errors import FatalAPIError, RetryExhaustedError, redact
from fgrft.llm.lanes import Clock, Lane

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 429})
# Error codes that mean "waiting will not help" even on a retryable status.
FATAL_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "account_deactivated"})


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 8              # transport retries after the first try
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_retry_after_s: float = 120.0  # a longer Retry-After is waited for this long, then retried
    seed: int | None = 0              # jitter RNG seed; None = nondeterministic

    def backoff(self, retry: int, rng: random.Random) -> float:
        """Delay before retry number ``retry`` (0-based): full jitter over an exponential cap,
        so many calls failing together do not come back together."""
        cap = min(self.max_delay_s, self.base_delay_s * (2.0 ** min(retry, 60)))
        return rng.uniform(0.5 * cap, cap)


@dataclass(frozen=True)
class Decision:
    retry: bool
    reason: str                    # short, printable ("HTTP 429", "timeout", "connection")
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""               # the server's message, to be redacted before use


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return None


def _error_body(exc: openai.APIStatusError) -> tuple[str, str]:
    """(code, message) from an OpenAI-style error body, if any."""
    body: Any = exc.body
    if isinstance(body, Mapping):
        err = body.get("error", body)
        if isinstance(err, Mapping):
            return str(err.get("code") or err.get("type") or ""), str(err.get("message") or "")
        if isinstance(err, str):
            return "", err
    if isinstance(body, str):
        return "", body[:500]
    return "", ""


def classify(exc: BaseException) -> Decision | None:
    """How to treat a failed try; ``None`` for exceptions that are not transport failures
    (programming errors must surface, not be retried)."""
    if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError, TimeoutError)):
        return Decision(True, "timeout")
    if isinstance(exc, openai.APIConnectionError):
        return Decision(True, "connection")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        code, message = _error_body(exc)
        headers = exc.response.headers if exc.response is not None else None
        retry_after = parse_retry_after(headers)
        hint = (headers or {}).get("x-should-retry")
        if code in FATAL_CODES:
            retry = False
        elif hint in ("true", "false"):
            retry = hint == "true"
        else:
            retry = status in RETRYABLE_STATUS or status >= 500
        detail = f"{code}: {message}" if code and message else (code or message)
        return Decision(retry, f"HTTP {status}", status, retry_after, detail)
    return None


async def call_with_retries(
    try_once: Callable[[], Awaitable[T]],
    *,
    lane: Lane,
    policy: RetryPolicy,
    rng: random.Random,
    clock: Clock,
    where: dict,
    secrets: tuple[str, ...] = (),
) -> tuple[T, int]:
    """Run ``try_once`` until it succeeds; return ``(value, retries_used)``.

    ``where`` holds ``endpoint``, ``base_url`` and ``model`` for messages. Raises
    :class:`FatalAPIError` at once for a fatal answer and :class:`RetryExhaustedError` when the
    budget is spent. Neither keeps the SDK exception as its cause or context: that exception
    holds the request, whose headers carry the API key.
    """
    retries = 0
    while True:
        decision: Decision | None = None
        try:
            return await try_once(), retries
        except Exception as exc:  # noqa: BLE001 - classified right below, re-raised if unknown
            decision = classify(exc)
            if decision is None:
                raise
        # Outside the except block on purpose: the new error gets no __context__.
        if not decision.retry or retries >= policy.max_retries:
            raise _endpoint_error(decision, retries, where, secrets)
        if decision.retry_after is not None:
            delay = min(decision.retry_after, policy.max_retry_after_s)
            lane.pause(delay, reason=f"{decision.reason}, Retry-After")
        else:
            delay = policy.backoff(retries, rng)
        log.info("%s: %s; retry %d/%d in %.2fs", _describe(where), decision.reason, retries + 1,
                 policy.max_retries, delay)
        retries += 1
        if decision.retry_after is None:
            await clock.sleep(delay)
        # With Retry-After the lane pause does the waiting, for this call and its lane-mates.


def _describe(where: dict) -> str:
    return f"endpoint {where['endpoint']!r} ({where['base_url']}, model {where['model']})"


def _endpoint_error(decision: Decision, retries: int, where: dict, secrets: tuple[str, ...]):
    detail = redact(decision.detail, secrets)[:500] if decision.detail else ""
    suffix = f": {detail}" if detail else ""
    if not decision.retry:
        message = f"{_describe(where)} refused the request ({decision.reason}){suffix}"
        cls = FatalAPIError
    else:
        message = f"{_describe(where)} still failing after {retries} retries ({decision.reason}){suffix}"
        cls = RetryExhaustedError
    return cls(redact(message, secrets), endpoint=where["endpoint"], base_url=where["base_url"],
               model=where["model"], status=decision.status, reason=decision.reason)
