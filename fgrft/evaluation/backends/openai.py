"""`inference=openai`: evaluation through any OpenAI-compatible server, via the call engine.

    generate_openai(cfg.inference, pending, sampling, sink, cfg.paths.cache,
                    budget=Budget.from_setting(cfg.budget_usd))

Each request is one plain-text chat completion (the prompt as the user message; the server
applies the model's chat template), with the request's own seed and the run's temperature,
top_p and output cap. Calls go through :class:`fgrft.llm.Engine` (lanes, limits, the single
retry owner) and its crash-safe response cache under ``paths.cache``, and each finished
completion is appended to the job's :class:`CompletionSink`. An interrupted evaluation
therefore resumes twice over: the sink skips what was written, and anything answered but not
yet written is replayed from the cache for free; only requests that were in flight are sent
again.

In evaluation every answer the server gives is a result to score, not an error: an answer cut
by ``max_new_tokens`` (finish_reason=length: the model rambled), an empty answer, a refusal or
a content-filtered one are all written as completions (empty text where there is none).
Transport failures that outlive the retry budget leave their requests missing (the job says
so and a re-run retries them); a fatal server error stops the run; so does ``budget_usd``
(:class:`~fgrft.llm.accounting.BudgetExhaustedError`, after writing everything that finished).

Nothing here imports torch or a tokenizer: the prompt is sent as text.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from fgrft.config import PRICES_FILE
from fgrft.evaluation.requests import Completion, CompletionSink, GenerationRequest, Sampling
from fgrft.llm import (Budget, BudgetExhaustedError, ConfigError, EndpointSettings, Engine,
                       Estimate, FatalAPIError, Ledger, OutputError, PlannedCall,
                       SqliteResponseCache, build_request, estimate, load_prices, profile_for,
                       request_key)
from fgrft.llm.cache import default_path

log = logging.getLogger(__name__)

STEP = "evaluate"
ENDPOINT_KEYS = ("kind", "base_url", "model", "api_key_env", "concurrency", "rpm", "tpm", "timeout_s",
                 "mode", "batch_poll_s", "batch_max_tries", "max_enqueued_tokens")
FLUSH_EVERY_S = 0.5


# ----------------------------------------------------------------------------- configuration


def _as_dict(cfg: Any) -> dict:
    if isinstance(cfg, Mapping) and not hasattr(cfg, "_get_node"):
        return dict(cfg)
    from omegaconf import MissingMandatoryValue, OmegaConf

    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"inference=openai: {exc.full_key} must be set "
                          "(inference.model is the served model name)") from None


def endpoint_config(inference_cfg: Any, *, cache_scope: str = "") -> EndpointSettings:
    """The engine endpoint for the ``inference`` group (kind, base_url, model, api_key_env,
    concurrency, rpm, tpm, timeout_s; the local backends' keys are ignored)."""
    data = _as_dict(inference_cfg)
    if data.get("kind") not in ("vllm", "openai"):
        raise ConfigError("inference=openai: inference.kind must be vllm or openai, "
                          f"got {data.get('kind')!r}")
    for key in ("base_url", "model"):
        if not data.get(key):
            raise ConfigError(f"inference=openai: inference.{key} must be set")
    values = {k: data[k] for k in ENDPOINT_KEYS if data.get(k) is not None}
    return EndpointSettings(name="inference", cache_scope=cache_scope, **values)


def evaluation_cache_scope(model_cfg: Any, inference_cfg: Any) -> str:
    """What separates cached answers of different weights served under one model name.

    A hosted model name identifies its weights; a local server's name may not (successive
    checkpoints served as "model"), so for kind=vllm the run's model label and path are added
    to every cache key. Changing only the label re-pays a local server, which costs nothing.
    """
    if _as_dict(inference_cfg).get("kind") != "vllm":
        return ""
    model = _as_dict(model_cfg) if model_cfg is not None else {}
    return f"model={model.get('name')};path={model.get('path')}"


def call_sampling(sampling: Sampling, seed: int) -> Sampling:
    """The engine's sampling for one request, matching the local backends: greedy sends
    temperature 0 and no seed, sampling sends the request's own seed."""
    if sampling.temperature <= 0:
        return Sampling(temperature=0.0, top_p=1.0, max_tokens=sampling.max_tokens)
    return Sampling(temperature=sampling.temperature, top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens, seed=seed)


# ----------------------------------------------------------------------------- generation


def generate_openai(inference_cfg: Any, requests: Sequence[GenerationRequest], sampling: Sampling,
                    sink: CompletionSink, cache_dir: str | Path, budget: Budget | None = None, *,
                    ledger: Ledger | None = None, cache_scope: str = "") -> None:
    """Generate every request through the configured server; see the module docstring.

    ``ledger`` (optional) receives the calls, cache hits, tokens and cost; ``budget`` caps the
    spend (a zero budget allows cache hits only). Raises :class:`FatalAPIError` and
    :class:`BudgetExhaustedError` after writing every completion that finished.
    """
    cfg = endpoint_config(inference_cfg, cache_scope=cache_scope)
    if ledger is None:
        ledger = Ledger(load_prices(PRICES_FILE), budget)
    elif budget is not None:
        ledger.budget = budget
    if not requests:
        return
    cache = SqliteResponseCache.in_dir(cache_dir)
    try:
        asyncio.run(_generate(cfg, requests, sampling, sink, cache, ledger))
    finally:
        cache.close()


async def _generate(cfg: EndpointSettings, requests: Sequence[GenerationRequest], sampling: Sampling,
                    sink: CompletionSink, cache: SqliteResponseCache, ledger: Ledger) -> None:
    writer = _SinkWriter(sink)
    progress = _Progress(len(requests))
    # No output retries: without a schema nothing is retried for its content.
    async with Engine(cache=cache, ledger=ledger, output_retries=0) as engine:
        endpoint = engine.endpoint(cfg)
        # inference.mode=batch: every request not answered in the cache goes into one round.
        batcher = engine.batcher
        if batcher is not None:
            batcher.set_workers(len(requests))

        async def one(request: GenerationRequest) -> None:
            try:
                result = await endpoint.call(request.messages, sampling=call_sampling(sampling, request.seed),
                                             allow_length=True, id=request.key, step=STEP)
            except OutputError as exc:  # empty, refused or filtered: still the model's answer
                result = exc.result
            finally:
                if batcher is not None:
                    batcher.set_workers(batcher.workers - 1)
            writer.add(Completion(key=request.key, text=result.text or "",
                                  finish_reason=result.finish_reason,
                                  output_tokens=result.usage.completion))
            progress.tick()

        writer.start()
        try:
            outcomes = await asyncio.gather(*(one(r) for r in requests), return_exceptions=True)
        finally:
            await writer.close()

    errors = [o for o in outcomes if isinstance(o, BaseException)]
    summary = ledger.summary()
    log.info("openai: %d of %d completions written; %d calls, %d cache hits, $%.4f",
             writer.written, len(requests), summary["calls"], summary["cache_hits"], summary["cost_usd"])
    for kind in (FatalAPIError, BudgetExhaustedError):
        first = next((e for e in errors if isinstance(e, kind)), None)
        if first is not None:
            if kind is BudgetExhaustedError:
                raise BudgetExhaustedError(f"{first} ({writer.written} of {len(requests)} completions "
                                           "written this run)") from None
            raise first
    unexpected = [e for e in errors if not _is_transport_failure(e)]
    if unexpected:
        raise unexpected[0]
    if errors:
        log.warning("openai: %d requests failed after their retries (first: %s); re-run the same "
                    "command to retry them", len(errors), errors[0])


def _is_transport_failure(exc: BaseException) -> bool:
    from fgrft.llm import BatchFailedError, RetryExhaustedError, RunStoppedError

    # A batch row that never got an answer is left missing like a transport failure: a
    # re-run sends it again.
    return isinstance(exc, (RetryExhaustedError, RunStoppedError, BatchFailedError))


class _SinkWriter:
    """Appends finished completions to the sink in batches, off the event loop.

    The sink fsyncs each append; doing that per completion on the loop would stall every call
    in flight. A crash loses at most the last half second of the sink, and those answers are
    already committed in the response cache, so the re-run replays them for free.
    """

    def __init__(self, sink: CompletionSink):
        self.sink = sink
        self.written = 0
        self._buffer: list[Completion] = []
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    def add(self, completion: Completion) -> None:
        self._buffer.append(completion)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_EVERY_S)
            await self.flush()

    async def flush(self) -> None:
        async with self._lock:
            batch, self._buffer = self._buffer, []
            if batch:
                await asyncio.to_thread(self.sink.append, batch)
                self.written += len(batch)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()


class _Progress:
    def __init__(self, total: int):
        self.total, self.done = total, 0
        self._step = max(1, total // 10)

    def tick(self) -> None:
        self.done += 1
        if self.done % self._step == 0 or self.done == self.total:
            log.info("openai: %d/%d generated", self.done, self.total)


# ----------------------------------------------------------------------------- dry run


def estimate_openai(inference_cfg: Any, requests: Sequence[GenerationRequest], sampling: Sampling, *,
                    cache_dir: str | Path | None = None, cache_scope: str = "",
                    prices=None) -> Estimate:
    """The dry run of :func:`generate_openai`: calls, tokens (prompt from characters, output at
    its cap ``max_new_tokens``, an upper bound) and USD, without contacting the server.

    With ``cache_dir``, requests whose answer is already in the response cache are left out of
    the plan (they would cost nothing) and counted in ``Estimate.already_cached``.
    """
    cfg = endpoint_config(inference_cfg, cache_scope=cache_scope)
    profile = profile_for(cfg)
    cached_keys = _cached_keys(cache_dir)
    planned, already = [], 0
    for r in requests:
        call = call_sampling(sampling, r.seed)
        if cached_keys:
            body = build_request(profile, cfg.model, r.messages, call, attempt=0)
            if request_key(profile.kind, body, None, 0, cfg.cache_scope) in cached_keys:
                already += 1
                continue
        chars = sum(len(str(m.get("content", ""))) for m in r.messages)
        planned.append(PlannedCall(step=STEP, model=cfg.model, prompt_chars=chars,
                                   output_tokens=sampling.max_tokens, local=cfg.kind == "vllm"))
    result = estimate(planned, prices if prices is not None else load_prices(PRICES_FILE))
    result.already_cached = already
    return result


def _cached_keys(cache_dir: str | Path | None) -> set[str]:
    if cache_dir is None or not default_path(cache_dir).exists():
        return set()  # a dry run must not create the cache
    with SqliteResponseCache.in_dir(cache_dir) as cache:
        return cache.keys()
