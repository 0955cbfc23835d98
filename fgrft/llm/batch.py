"""Provider batches (OpenAI's Batch API): the engine's ``mode=batch`` path, in rounds.

    engine = Engine(cache=SqliteResponseCache.in_dir(...), ledger=...)
    ep = engine.endpoint(EndpointSettings(..., mode="batch", batch_poll_s=60, batch_max_tries=3))
    engine.batcher.set_workers(n)        # how many callers take part in each round
    result = await ep.call(messages, ...)   # returns once the row's batch has finished

A call of a batch endpoint that misses the response cache waits in the batcher. A *round* is
sent when every worker is waiting (the pipeline's questions are its workers, so a round holds
every question's next call: all P1s, then all P2s, ...); calls to sync endpoints go on meanwhile
and simply delay the round. Per lane (base_url, model) a round becomes one or more input files
of ``{"custom_id": <request key>, "method": "POST", "url": "/v1/chat/completions", "body": ...}``
lines, split to the provider's limits (``MAX_REQUESTS_PER_FILE`` requests and
``MAX_FILE_BYTES`` per file) and, when ``max_enqueued_tokens`` is set, into waves whose
estimated tokens fit the per-model enqueued-token limit.

Lifecycle (each step is durable before the next starts):

1. upload the input file; commit the *intent* (round key, input file id, request keys) to the
   cache database; then ``batches.create`` with the round key in ``metadata``; then record the
   batch id. A run killed between create and that record finds the batch on re-run through
   ``batches.list`` (by the round key) instead of creating it again; a run killed while
   polling re-attaches to the recorded batch. Either way no row is submitted twice.
2. poll ``batches.retrieve`` every ``batch_poll_s``, backing off to ``POLL_BACKOFF_MAX`` times
   that, with a progress line (requests completed/failed/total, elapsed, next poll).
3. ``completed``, ``expired`` and ``cancelled`` batches alike: download the output and error
   files and account for every row. A row answered with HTTP 200 is written to the response
   cache under its request key (the same key a sync call uses, so a run can switch modes and
   pay nothing twice) and charged at the batch price; failed rows and rows that never ran are
   resubmitted alone, up to ``batch_max_tries`` batches per row, then raise
   :class:`BatchFailedError` (the pipeline drops the question as ``batch_failed``; a re-run
   tries it again, as a sync re-run retries a failed call).
4. ``failed`` batches (a validation error) are logged with the provider's errors and count as a
   try for their rows; one refused for the model's enqueued-token limit
   (``token_limit_exceeded``) is submitted again after a poll interval and is not counted.

Budget: before a file is submitted its estimated cost (prompt estimate plus the caller's
expected output tokens, at batch prices) is reserved; requests that do not fit raise
:class:`~fgrft.llm.accounting.BudgetExhaustedError`. Once the budget is spent, in-flight batches
are cancelled, ``cancelling`` is waited out (the provider takes up to ten minutes), and the
rows that finished are kept and charged: the provider bills them.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai

from fgrft.llm.accounting import BudgetExhaustedError
from fgrft.llm.errors import ConfigError, LLMError

if TYPE_CHECKING:  # pragma: no cover
    from fgrft.llm.engine import Endpoint, Engine

log = logging.getLogger(__name__)

MAX_REQUESTS_PER_FILE = 50_000          # OpenAI: requests per batch input file
MAX_FILE_BYTES = 200 * 1024 * 1024      # OpenAI: bytes per batch input file
CANCEL_WAIT_S = 660.0                   # "cancelling" lasts up to 10 minutes (provider docs)
POLL_BACKOFF = 1.5
POLL_BACKOFF_MAX = 8.0                  # longest poll interval, in batch_poll_s
ROUND_TAG = "fgrft_round"               # the metadata key holding the round key
URL = "/v1/chat/completions"
DONE = frozenset({"completed", "expired", "cancelled"})
TOKEN_LIMIT_CODES = frozenset({"token_limit_exceeded"})
API_TRIES = 6                           # per Files/Batches API call, on transient failures
TRANSIENT = (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
             openai.InternalServerError)


class BatchFailedError(LLMError):
    """A request found no usable row in ``batch_max_tries`` batches."""


@dataclass
class _Item:
    ep: "Endpoint"
    key: str
    body: dict
    tokens: int                  # estimated prompt + expected output tokens
    reserve_usd: float
    future: asyncio.Future


@dataclass
class BatchStats:
    rounds: int = 0
    batches: int = 0             # batches created by this process
    rows_submitted: int = 0      # rows in those batches
    rows_resubmitted: int = 0    # of which rows sent again after a batch left them unanswered
    reattached: int = 0          # batches of an earlier process followed to their end
    token_limit_refusals: int = 0
    cancelled: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Batcher:
    def __init__(self, engine: "Engine"):
        store = engine.cache
        if store is None or not hasattr(store, "add_batch_intent"):
            raise ConfigError("mode=batch needs the SQLite response cache (it keeps the batch "
                              "intents that make a killed run re-attach instead of resubmitting)")
        self.engine = engine
        self.store = store
        self.workers = 0
        self.stats = BatchStats()
        self.max_requests_per_file = MAX_REQUESTS_PER_FILE
        self.max_file_bytes = MAX_FILE_BYTES
        self.api_retry_base_s = 1.0
        self._waiting: list[_Item] = []
        self._round: asyncio.Task | None = None
        self._flush_scheduled = False
        self._clients: dict[tuple[str, str], Any] = {}
        # Batches that left each request key unanswered (refusals for the token limit are not
        # tries): across processes, to count resubmitted rows; in this process, to give up
        # after batch_max_tries (a re-run tries a dropped row again, as sync mode does).
        self._tries: Counter[str] = Counter()
        self._tries_here: Counter[str] = Counter()
        for intent in store.batch_intents():
            if intent["status"] == "done":
                self._tries.update(intent["unanswered"])

    # -- the round trigger --------------------------------------------------------------
    def set_workers(self, n: int) -> None:
        """How many callers take part: a round is sent once that many calls wait."""
        self.workers = max(0, int(n))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        # On the next loop turn, so calls made in the same turn join one round.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._round is not None or not self._waiting or len(self._waiting) < self.workers:
            return
        items, self._waiting = self._waiting, []
        self._round = asyncio.ensure_future(self._run_round(items))
        self._round.add_done_callback(self._round_done)

    def _round_done(self, task: asyncio.Task) -> None:
        self._round = None
        if not task.cancelled() and task.exception() is not None:
            log.error("batch round failed: %s", task.exception())
        if self._waiting:
            self._schedule_flush()

    async def fetch(self, ep: "Endpoint", request: dict, key: str, tokens: int,
                    reserve_usd: float) -> dict:
        """The response dict of ``request`` (as the sync path would cache it), from a batch."""
        from fgrft.llm.engine import _wire_body

        future = asyncio.get_running_loop().create_future()
        self._waiting.append(_Item(ep, key, _wire_body(request), tokens, reserve_usd, future))
        self._schedule_flush()
        return await future

    # -- one round ----------------------------------------------------------------------
    async def _run_round(self, items: list[_Item]) -> None:
        self.stats.rounds += 1
        lanes: dict[tuple[str, str], list[_Item]] = defaultdict(list)
        for item in items:
            lanes[item.ep.cfg.lane_key].append(item)
        log.info("batch round %d: %d requests on %s", self.stats.rounds, len(items),
                 ", ".join(f"{m} ({len(v)})" for (_, m), v in lanes.items()))
        try:
            await asyncio.gather(*(self._run_lane(v) for v in lanes.values()))
        except BaseException as exc:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(exc if isinstance(exc, Exception)
                                              else LLMError(f"batch round stopped: {exc!r}"))
            raise

    async def _run_lane(self, items: list[_Item]) -> None:
        ep = items[0].ep
        by_key: dict[str, list[_Item]] = defaultdict(list)
        for item in items:
            by_key[item.key].append(item)

        def settle(answers: dict[str, dict], unanswered: set[str], *, counted: bool = True) -> None:
            for key, response in answers.items():
                for item in by_key.pop(key, ()):
                    if not item.future.done():
                        item.future.set_result(response)
            for key in unanswered:
                if key not in by_key:
                    continue
                if counted:
                    self._tries[key] += 1
                    self._tries_here[key] += 1
                if self._tries_here[key] >= ep.cfg.batch_max_tries:
                    err = BatchFailedError(f"endpoint {ep.cfg.label!r} (model {ep.cfg.model}): "
                                           f"no usable row for request {key[:12]} in "
                                           f"{self._tries_here[key]} batch(es)")
                    for item in by_key.pop(key):
                        if not item.future.done():
                            item.future.set_exception(err)

        # Re-attach: requests that an earlier process already put into a batch still open.
        lane = (ep.cfg.base_url.rstrip("/"), ep.cfg.model)
        open_intents = [i for i in self.store.batch_intents()
                        if i["status"] in ("intent", "submitted")
                        and (i["base_url"].rstrip("/"), i["model"]) == lane
                        and not by_key.keys().isdisjoint(i["request_keys"])]
        for result in await asyncio.gather(*(self._follow(ep, i, reattach=True)
                                              for i in open_intents)):
            if result is not None:
                settle(*result)

        while by_key:
            keys = list(by_key)
            for wave in self._waves(ep, [by_key[k][0] for k in keys]):
                chunks = [self._reserve(chunk, by_key) for chunk in wave]
                results = await asyncio.gather(*(self._submit(ep, chunk, reserved)
                                                 for chunk, reserved in chunks if chunk))
                for result in results:
                    if result is None:
                        continue  # refused for the token limit: submitted again below
                    settle(*result)
            if by_key and self._budget_spent():
                err = BudgetExhaustedError("budget_usd is spent: the rest of this batch round "
                                           "is not submitted")
                for key in list(by_key):
                    for item in by_key.pop(key):
                        if not item.future.done():
                            item.future.set_exception(err)

    def _waves(self, ep: "Endpoint", items: list[_Item]) -> list[list[list[_Item]]]:
        """Files (lists of rows) within the provider's limits, grouped into waves whose
        estimated tokens fit ``max_enqueued_tokens`` (one wave when it is unset)."""
        files = _pack(items, lambda item: len(json.dumps(item.body)) + 120, self.max_file_bytes,
                      max_count=self.max_requests_per_file)
        cap = ep.cfg.max_enqueued_tokens
        if not cap:
            return [files]
        parts = [part for f in files for part in _split_to_tokens(f, cap)]
        return _pack(parts, lambda part: sum(i.tokens for i in part), cap)

    def _reserve(self, chunk: list[_Item], by_key: dict) -> tuple[list[_Item], float]:
        """The part of ``chunk`` whose estimated cost the budget can set aside (the rest of
        its requests raise BudgetExhaustedError), and the amount set aside."""
        budget = self.engine.ledger.budget if self.engine.ledger is not None else None
        if budget is None:
            return chunk, 0.0
        kept: list[_Item] = []
        reserved = 0.0
        for item in chunk:
            if budget.reserve(item.reserve_usd):
                kept.append(item)
                reserved += item.reserve_usd
            else:
                err = BudgetExhaustedError(
                    f"budget_usd={budget.limit_usd:g}: ${budget.spent_usd:.4f} spent and "
                    f"${budget.reserved_usd:.4f} set aside for submitted batches; this request's "
                    f"estimated ${item.reserve_usd:.4f} does not fit, so it is not submitted")
                for it in by_key.pop(item.key, ()):
                    if not it.future.done():
                        it.future.set_exception(err)
        return kept, reserved

    def _budget_spent(self) -> bool:
        ledger = self.engine.ledger
        return ledger is not None and ledger.budget is not None and ledger.budget.exhausted

    # -- one batch ----------------------------------------------------------------------
    async def _submit(self, ep: "Endpoint", chunk: list[_Item], reserved: float):
        """Upload, commit the intent, create, follow. None when refused for the token limit."""
        try:
            while True:
                client = self._client(ep)
                keys = [item.key for item in chunk]
                data = "".join(json.dumps({"custom_id": i.key, "method": "POST", "url": URL,
                                           "body": i.body}, ensure_ascii=False) + "\n"
                               for i in chunk).encode()
                digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
                round_key = f"{digest}-{uuid.uuid4().hex[:8]}"
                file = await self._api(lambda: client.files.create(
                    file=(f"fgrft-{round_key}.jsonl", data), purpose="batch"), "files.create")
                self.store.add_batch_intent(round_key, ep.cfg.base_url, ep.cfg.model, file.id, keys)
                intent = {"round_key": round_key, "input_file_id": file.id, "request_keys": keys,
                          "batch_id": None}
                result = await self._follow(ep, intent, reattach=False)
                if result is not None:
                    return result
                self.stats.token_limit_refusals += 1
                log.warning("batch of %d requests to %s refused for the model's enqueued-token "
                            "limit; submitting it again in %gs", len(keys), ep.cfg.model,
                            ep.cfg.batch_poll_s)
                await self.engine.clock.sleep(ep.cfg.batch_poll_s)
        finally:
            budget = self.engine.ledger.budget if self.engine.ledger is not None else None
            if budget is not None and reserved:
                budget.release(reserved)

    async def _create(self, ep: "Endpoint", intent: dict) -> Any:
        async def create() -> Any:
            try:
                return await self._client(ep).batches.create(
                    input_file_id=intent["input_file_id"], endpoint=URL, completion_window="24h",
                    metadata={ROUND_TAG: intent["round_key"]})
            except TRANSIENT:
                # The provider may have created it before the connection failed: look first.
                found = await self._find(ep, intent["round_key"], time.time())
                if found is not None:
                    return found
                raise
        batch = await self._api(create, "batches.create")
        self.store.update_batch_intent(intent["round_key"], batch_id=batch.id, status="submitted",
                                       provider_status=batch.status)
        self.stats.batches += 1
        self.stats.rows_submitted += len(intent["request_keys"])
        self.stats.rows_resubmitted += sum(self._tries[k] > 0 for k in intent["request_keys"])
        return batch

    async def _find(self, ep: "Endpoint", round_key: str, since: float = 0.0) -> Any | None:
        """The provider's batch carrying ``round_key`` in its metadata, if it was created.
        The list is newest first; paging stops at batches older than the intent (``since``,
        unix seconds, less a minute for clock skew)."""
        async for batch in self._client(ep).batches.list(limit=100):
            if (batch.metadata or {}).get(ROUND_TAG) == round_key:
                return batch
            if since and batch.created_at < since - 60:
                break
        return None

    async def _follow(self, ep: "Endpoint", intent: dict, *, reattach: bool):
        """Poll a batch to its end and collect its rows: (answers, unanswered), or None when
        the provider refused it for the token limit."""
        round_key = intent["round_key"]
        batch_id = intent.get("batch_id")
        if batch_id is None:
            found = (await self._find(ep, round_key, intent.get("created_at") or 0.0)
                     if reattach else None)
            if found is not None:
                log.info("batch %s of round %s was created before the last run stopped: "
                         "following it", found.id, round_key)
                self.store.update_batch_intent(round_key, batch_id=found.id, status="submitted")
                batch_id = found.id
                self.stats.reattached += 1
            else:
                batch_id = (await self._create(ep, intent)).id
        elif reattach:
            log.info("re-attaching to batch %s (round %s)", batch_id, round_key)
            self.stats.reattached += 1
        batch = await self._poll(ep, batch_id)
        keys = list(intent["request_keys"])
        self.store.update_batch_intent(round_key, provider_status=batch.status)
        if batch.status == "failed":
            errors = [e for e in ((batch.errors.data if batch.errors else None) or [])]
            if errors and all(e.code in TOKEN_LIMIT_CODES for e in errors):
                self.store.update_batch_intent(round_key, status="refused")
                return None
            log.error("batch %s (%s, %d requests) failed: %s", batch_id, ep.cfg.model, len(keys),
                      "; ".join(f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "")
                                for e in errors) or "no errors given")
            self.store.update_batch_intent(round_key, status="done", unanswered=keys, billed_usd=0.0)
            return {}, set(keys)
        answers, billed = await self._collect(ep, batch, keys)
        unanswered = set(keys) - set(answers)
        self.store.update_batch_intent(round_key, status="done", unanswered=sorted(unanswered),
                                       billed_usd=billed)
        if unanswered:
            log.warning("batch %s ended %s with %d of %d rows unanswered", batch_id, batch.status,
                        len(unanswered), len(keys))
        if batch.status == "cancelled" and self._budget_spent():
            # Cancelled for the budget: its missing rows are not retried, they are budget drops.
            return answers, set()
        return answers, unanswered

    async def _poll(self, ep: "Endpoint", batch_id: str) -> Any:
        client = self._client(ep)
        clock = self.engine.clock
        started = time.monotonic()
        delay = ep.cfg.batch_poll_s
        cancel_started: float | None = None
        while True:
            batch = await self._api(lambda: client.batches.retrieve(batch_id), "batches.retrieve")
            if batch.status in DONE or batch.status == "failed":
                return batch
            if cancel_started is None and self._budget_spent():
                log.warning("budget_usd is spent: cancelling batch %s (finished rows are kept)",
                            batch_id)
                batch = await self._api(lambda: client.batches.cancel(batch_id), "batches.cancel")
                self.stats.cancelled += 1
                cancel_started = time.monotonic()
            if batch.status == "cancelling" and cancel_started is None:
                cancel_started = time.monotonic()
            if cancel_started is not None and time.monotonic() - cancel_started > CANCEL_WAIT_S:
                log.error("batch %s is still cancelling after %.0fs; leaving it", batch_id,
                          CANCEL_WAIT_S)
                return batch
            counts = batch.request_counts
            log.info("batch %s (%s) %s: %s completed, %s failed of %s; %.0fs elapsed, next poll "
                     "in %.1fs", batch_id, ep.cfg.model, batch.status,
                     counts.completed if counts else "?", counts.failed if counts else "?",
                     counts.total if counts else "?", time.monotonic() - started, delay)
            await clock.sleep(delay)
            delay = min(delay * POLL_BACKOFF, ep.cfg.batch_poll_s * POLL_BACKOFF_MAX)

    async def _collect(self, ep: "Endpoint", batch: Any, keys: list[str]) -> tuple[dict, float]:
        """Every usable row of the output and error files, cached and charged; (answers, USD)."""
        from fgrft.llm.engine import Usage, _parse_body

        wanted = set(keys)
        answers: dict[str, dict] = {}
        billed = 0.0
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await self._api(lambda: self._client(ep).files.content(file_id),
                                      "files.content")
            for line in content.text.splitlines():
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("batch %s: an unreadable row in file %s", batch.id, file_id)
                    continue
                key = row.get("custom_id")
                response = row.get("response") or {}
                if key not in wanted or key in answers or response.get("status_code") != 200:
                    continue
                answer = _parse_body(json.dumps(response.get("body")), 0.0)
                if not answer.get("well_formed"):
                    continue
                await self.engine._cache_put(key, answer)
                billed += self.engine._account(ep, Usage(**answer["usage"]), cached=False,
                                               mode="batch")
                answers[key] = answer
        return answers, billed

    async def _api(self, call, what: str) -> Any:
        """``call()`` with a few retries on transient failures (connection, timeout, 429, 5xx):
        a flaky network must not lose a round that may take hours."""
        for attempt in range(API_TRIES):
            try:
                return await call()
            except TRANSIENT as exc:
                if attempt == API_TRIES - 1:
                    raise
                delay = min(60.0, self.api_retry_base_s * 2.0 ** attempt)
                log.warning("%s failed (%s); trying again in %.0fs", what, exc, delay)
                await self.engine.clock.sleep(delay)

    def use_client(self, lane_key: tuple[str, str], client: Any) -> None:
        """Serve a lane's Files and Batches calls with ``client`` (anything with the SDK's
        ``files``/``batches`` methods used here, e.g. the embedded model's local runner)."""
        self._clients[(lane_key[0].rstrip("/"), lane_key[1])] = client

    def _client(self, ep: "Endpoint") -> Any:
        from fgrft.llm.engine import sdk_client

        key = ep.cfg.lane_key
        client = self._clients.get(key)
        if client is None:
            owner = self.engine._lane_owner[key]
            client = self._clients[key] = sdk_client(owner, self.engine._keys[key])
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()


def _pack(things: list, cost, limit: int, *, max_count: int | None = None) -> list[list]:
    """Consecutive groups, each closed before it would pass ``limit`` total ``cost`` (or hold
    more than ``max_count``); a single thing over the limit still gets a group of its own."""
    groups: list[list] = []
    group: list = []
    total = 0
    for thing in things:
        c = cost(thing)
        if group and (total + c > limit or (max_count is not None and len(group) >= max_count)):
            groups.append(group)
            group, total = [], 0
        group.append(thing)
        total += c
    if group:
        groups.append(group)
    return groups


def _split_to_tokens(items: list[_Item], cap: int) -> list[list[_Item]]:
    parts: list[list[_Item]] = []
    part: list[_Item] = []
    tokens = 0
    for item in items:
        if part and tokens + item.tokens > cap:
            parts.append(part)
            part, tokens = [], 0
        part.append(item)
        tokens += item.tokens
    if part:
        parts.append(part)
    return parts
