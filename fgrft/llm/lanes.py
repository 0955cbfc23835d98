"""Lanes: the per-(base_url, model) place where concurrency and rate limits are enforced.

Providers limit an account per model, so every role that calls the same model on the same
server shares one lane: one bound on calls in flight, one requests-per-minute bucket, one
tokens-per-minute bucket, one pause (a server's Retry-After applies to the account, so it stops
the whole lane, not just the call that received it).

Everything here is asyncio and takes a :class:`Clock`, so the buckets can be tested with a fake
clock and no waiting.
"""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
from typing import AsyncIterator, Sequence

log = logging.getLogger(__name__)

# Output tokens assumed for a call without an output cap (for the TPM estimate only).
DEFAULT_OUTPUT_ESTIMATE = 1024


class Clock:
    """Monotonic time and sleeping; replaceable in tests."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def estimate_tokens(messages: Sequence[dict], max_tokens: int | None,
                    schema: dict | None = None) -> int:
    """A tokenizer-free upper-ish estimate of what a call costs against a TPM limit.

    About 4 characters per token for English text, a few tokens of framing per message, the
    schema (sent in the request) and the full output cap, because providers count the cap.
    """
    chars = 0
    for message in messages:
        content = message.get("content")
        chars += len(content) if isinstance(content, str) else len(json.dumps(content or ""))
    if schema is not None:
        chars += len(json.dumps(schema))
    prompt = chars // 4 + 4 * len(messages) + 3
    return prompt + (max_tokens if max_tokens is not None else DEFAULT_OUTPUT_ESTIMATE)


class TokenBucket:
    """A token bucket refilled at ``per_minute / 60`` per second.

    Capacity is ``burst_s`` seconds of refill (at least 1), so with the default one second a
    limit of 600 RPM lets at most 10 calls start together and then spaces them 100 ms apart;
    providers enforce their per-minute limits over short windows, so small bursts are safer.
    A request larger than the capacity (a long prompt against a small TPM) waits for a full
    bucket and then drives it negative: it can always proceed, and the debt delays the next
    ones, so the long-run rate still holds. Waiters are served in arrival order.
    """

    def __init__(self, per_minute: float, *, burst_s: float = 1.0, clock: Clock | None = None):
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_s)
        self.clock = clock or Clock()
        self._tokens = self.capacity
        self._stamp: float | None = None
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock.now()
        if self._stamp is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float = 1.0) -> None:
        need = min(amount, self.capacity)
        async with self._lock:  # FIFO: the head waiter alone watches the bucket
            while True:
                self._refill()
                if self._tokens >= need:
                    self._tokens -= amount
                    return
                await self.clock.sleep((need - self._tokens) / self.rate)


class Limiter:
    """A counting bound on calls in flight whose limit can be raised while in use, serving
    waiters by priority (highest first; arrival order among equals).

    (``asyncio.Semaphore`` cannot grow; a lane's bound grows when a second role joins it.)
    Priorities let the pipeline send the calls of chains further along first, so the run
    finishes questions (and drains) instead of starting new ones while old ones wait.
    It also records the peak number in flight, which the tests and benchmarks check, and calls
    its ``listeners`` whenever a slot is given back (the pipeline admits new questions then).
    """

    def __init__(self, limit: int):
        self.limit = int(limit)
        self.in_flight = 0
        self.peak = 0
        self.listeners: list = []
        self.lowest_first = False   # serve the lowest priority first instead (see set_order)
        self._waiters: list[tuple[float, int, float, asyncio.Future]] = []   # heap
        self._waiting = 0
        self._seq = itertools.count()

    @property
    def waiting(self) -> int:
        """Calls queued for a slot."""
        return self._waiting

    @property
    def room(self) -> int:
        """Slots that would be idle if no other call arrived: limit - in flight - queued."""
        return self.limit - self.in_flight - self._waiting

    def raise_limit(self, limit: int) -> None:
        self.limit = max(self.limit, int(limit))
        self._wake()

    def set_order(self, *, lowest_first: bool) -> None:
        """Serve waiters lowest priority first (or back to highest first), queued ones too."""
        if lowest_first != self.lowest_first:
            self.lowest_first = lowest_first
            self._waiters = [(self._key(p), seq, p, fut) for _, seq, p, fut in self._waiters]
            heapq.heapify(self._waiters)

    def _key(self, priority: float) -> float:
        return priority if self.lowest_first else -priority

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            _, _, _, fut = heapq.heappop(self._waiters)
            if fut.done():  # cancelled while queued; already uncounted
                continue
            self._waiting -= 1
            self._take()
            fut.set_result(None)  # the slot is handed over already taken

    def _take(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    async def acquire(self, priority: float = 0) -> None:
        if self.in_flight < self.limit and not self._waiting:
            self._take()
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (self._key(priority), next(self._seq), priority, fut))
        self._waiting += 1
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # cancelled right after being handed a slot: give it back
            else:
                self._waiting -= 1  # its heap entry is skipped when it comes up
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()
        for listener in self.listeners:
            listener()


class Lane:
    """Limits shared by every endpoint config that names the same (base_url, model)."""

    def __init__(self, key: tuple[str, str], *, concurrency: int, rpm: float | None,
                 tpm: float | None, burst_s: float = 1.0, clock: Clock | None = None):
        self.key = key
        self.clock = clock or Clock()
        self.limiter = Limiter(concurrency)
        self.burst_s = burst_s
        self.rpm = self.tpm = None
        self.rpm_bucket: TokenBucket | None = None
        self.tpm_bucket: TokenBucket | None = None
        self.set_rates(rpm, tpm)
        self._resume_at = 0.0

    def __repr__(self) -> str:
        return f"Lane({self.key[0]!r}, {self.key[1]!r}, concurrency={self.limiter.limit})"

    def set_rates(self, rpm: float | None, tpm: float | None) -> None:
        """Tighten the rate limits: the lowest setting of the roles sharing the lane wins,
        since the limit belongs to the account, not to the role."""
        rpm = rpm or None
        tpm = tpm or None
        if rpm is not None and (self.rpm is None or rpm < self.rpm):
            self.rpm, self.rpm_bucket = rpm, TokenBucket(rpm, burst_s=self.burst_s, clock=self.clock)
        if tpm is not None and (self.tpm is None or tpm < self.tpm):
            self.tpm, self.tpm_bucket = tpm, TokenBucket(tpm, burst_s=self.burst_s, clock=self.clock)

    @property
    def concurrency(self) -> int:
        return self.limiter.limit

    @property
    def peak_in_flight(self) -> int:
        return self.limiter.peak

    def pause(self, seconds: float, reason: str = "") -> None:
        """Hold every call of this lane for ``seconds`` (a server's Retry-After)."""
        resume_at = self.clock.now() + seconds
        if resume_at > self._resume_at:
            self._resume_at = resume_at
            log.info("lane %s / %s paused for %.2fs%s", self.key[0], self.key[1], seconds,
                     f" ({reason})" if reason else "")

    async def wait_unpaused(self) -> None:
        while (delay := self._resume_at - self.clock.now()) > 0:
            await self.clock.sleep(delay)

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int, priority: float = 0) -> AsyncIterator[None]:
        """Hold one in-flight slot after the pause, RPM and TPM allow a request to start;
        waiting calls get their slots highest ``priority`` first."""
        await self.limiter.acquire(priority)
        try:
            await self.wait_unpaused()
            if self.rpm_bucket is not None:
                await self.rpm_bucket.acquire(1)
            if self.tpm_bucket is not None:
                await self.tpm_bucket.acquire(tokens)
            # A pause may have begun while this call waited for the buckets.
            await self.wait_unpaused()
            yield
        finally:
            self.limiter.release()
