"""Capability profiles: what each kind of endpoint accepts, and the one canonical request.

The profile comes from configuration (``kind``, optional ``reasoning``), never from the URL:
a vLLM server behind a proxy and OpenAI behind a gateway look alike from their URLs.

* OpenAI reasoning models (gpt-5*, o1*, o3*, o4*) take ``max_completion_tokens`` and reject
  ``temperature``/``top_p``/penalties; those are left out of the request (and a warning says so
  once per endpoint) rather than sent to fail with a 400.
* vLLM takes its own sampling knobs (``top_k``, ``min_p``, ``repetition_penalty``) and,
  optionally, the schema in ``extra_body`` (``structured="extra_body"``). Per-request seeds are
  deterministic there (RUNTIME.md), best-effort on OpenAI.

:func:`build_request` produces the exact keyword arguments given to
``chat.completions.create``; :func:`request_key` hashes that dict plus the schema, kind and
attempt number, so anything that changes the bytes sent changes the cache key.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any, Sequence

from fgrft.llm.config import EndpointSettings, Sampling
from fgrft.llm.errors import ConfigError
from fgrft.llm.structured import response_format

log = logging.getLogger(__name__)

# OpenAI's reasoning families; an optional "provider/" prefix is tolerated.
_REASONING_MODEL = re.compile(r"^(?:.*/)?(?:gpt-5|o1|o3|o4)(?:$|[-.:])")
_VLLM_ONLY = ("top_k", "min_p", "repetition_penalty")
_NOT_FOR_REASONING = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class Profile:
    kind: str          # "openai" | "vllm"
    reasoning: bool    # max_completion_tokens; no temperature/top_p/penalties
    structured: str    # "json_schema" | "json_object" (response_format) | "extra_body" (vLLM) | "none"


def is_reasoning_model(model: str) -> bool:
    return bool(_REASONING_MODEL.match(model))


def profile_for(cfg: EndpointSettings) -> Profile:
    if cfg.reasoning is not None:
        reasoning = cfg.reasoning
    else:
        # Only OpenAI's own names are recognised: a vLLM-served reasoning model still takes
        # temperature, and a name alone says nothing about a third-party server.
        reasoning = cfg.kind == "openai" and is_reasoning_model(cfg.model)
    return Profile(kind=cfg.kind, reasoning=reasoning, structured=cfg.structured)


def derive_seed(seed: int | None, attempt: int) -> int | None:
    """The seed sent on output attempt ``attempt``.

    Attempt 0 sends the configured seed unchanged (so runs match the configuration); later
    attempts get a different but reproducible seed, because an identical seeded request would
    return the same malformed bytes again.
    """
    if seed is None or attempt == 0:
        return seed
    digest = hashlib.sha256(f"fgrft-seed:{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def build_request(profile: Profile, model: str, messages: Sequence[dict], sampling: Sampling,
                  *, schema: dict | None = None, schema_name: str = "response",
                  attempt: int = 0, label: str = "") -> dict[str, Any]:
    """The keyword arguments for ``chat.completions.create`` (without ``timeout``)."""
    where = f"endpoint {label or model!r}"
    req: dict[str, Any] = {"model": model, "messages": [dict(m) for m in messages]}
    extra_body: dict[str, Any] = {}

    if sampling.max_tokens is not None:
        req["max_completion_tokens" if profile.reasoning else "max_tokens"] = int(sampling.max_tokens)
    for key in _NOT_FOR_REASONING:
        value = getattr(sampling, key)
        if value is None:
            continue
        if profile.reasoning:
            _warn_once(label or model, key)
        else:
            req[key] = value
    if sampling.reasoning_effort is not None:
        if not profile.reasoning:
            raise ConfigError(f"{where}: reasoning_effort is only for reasoning models")
        req["reasoning_effort"] = sampling.reasoning_effort
    seed = derive_seed(sampling.seed, attempt)
    if seed is not None:
        req["seed"] = seed
    if sampling.stop is not None:
        req["stop"] = sampling.stop if isinstance(sampling.stop, str) else list(sampling.stop)

    for key in _VLLM_ONLY:
        value = getattr(sampling, key)
        if value is None:
            continue
        if profile.kind != "vllm":
            raise ConfigError(f"{where}: {key} is a vLLM sampling parameter (kind is {profile.kind})")
        extra_body[key] = value

    if schema is not None:
        if profile.structured == "json_schema":
            req["response_format"] = response_format(schema_name, schema)
        elif profile.structured == "json_object":
            # JSON mode: any JSON object; the schema is checked on return only.
            req["response_format"] = {"type": "json_object"}
        elif profile.structured == "extra_body":
            extra_body["structured_outputs"] = {"json": schema}
        # "none": the prompt asks for JSON and the reply is validated on return only.

    extra_body.update(sampling.extra or {})
    if extra_body:
        req["extra_body"] = extra_body
    return req


_warned: set[tuple[str, str]] = set()


def _warn_once(label: str, key: str) -> None:
    if (label, key) not in _warned:
        _warned.add((label, key))
        log.warning("endpoint %r is a reasoning model: %s is not sent", label, key)


def canonical_json(value: Any) -> str:
    """Stable text for hashing: sorted keys, no whitespace, unicode kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def request_key(kind: str, request: dict, schema: dict | None, attempt: int,
                scope: str = "") -> str:
    """The response-cache key of one attempt: a hash of everything that shapes the answer.

    ``request`` already holds the model, messages, every sampling parameter sent (with the
    attempt folded into the seed) and the schema as sent; the schema and attempt are hashed
    again explicitly because with ``structured="none"`` or no seed they are not in the request.
    ``scope`` (the endpoint's ``cache_scope``) separates different weights served under one
    model name; it is left out of the hash when empty so unscoped keys never change.
    The endpoint's URL is not hashed on purpose: a local server restarted on another port, or
    a hosted API reached through a gateway, still answers the same requests.
    """
    envelope = {"v": 1, "kind": kind, "request": request, "schema": schema, "attempt": attempt}
    if scope:
        envelope["scope"] = scope
    return hashlib.sha256(canonical_json(envelope).encode()).hexdigest()
