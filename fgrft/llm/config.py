"""Endpoint settings and per-call sampling, as plain dataclasses.

Both accept a mapping (a dict or an OmegaConf node turned into one) through ``from_mapping``,
which refuses misspelt keys: a typo such as ``temprature`` must not silently become the default.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from fgrft.llm.errors import ConfigError

KINDS = ("openai", "vllm")
MODES = ("sync", "batch")
STRUCTURED_MODES = ("json_schema", "json_object", "extra_body", "none")


def _from_mapping(cls, data: Mapping[str, Any], ignore: tuple[str, ...], what: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known - set(ignore)
    if unknown:
        raise ConfigError(f"{what}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class EndpointSettings:
    """One OpenAI-compatible endpoint as a role (generator, verifier, ...) sees it.

    ``kind`` picks the capability profile: ``openai`` (the hosted API; reasoning models are
    recognised by name unless ``reasoning`` says otherwise) or ``vllm`` (extra sampling
    parameters travel in the request's ``extra_body``). ``api_key_env`` names the environment
    variable holding the key, never the key itself; a ``vllm`` endpoint may leave it unset.
    ``rpm``/``tpm`` of ``None`` (or 0) mean "no limit".
    """

    base_url: str
    model: str
    kind: str = "openai"
    api_key_env: str | None = None
    concurrency: int = 8
    rpm: float | None = None
    tpm: float | None = None
    timeout_s: float = 120.0
    name: str = ""                    # role label used in messages ("generator")
    reasoning: bool | None = None     # None: decide from kind and model name
    structured: str = "json_schema"   # how a schema is sent, see profiles.py
    # Hashed into every cache key of this endpoint when set. The key already covers the model
    # *name*; set this to what identifies the weights behind it when one name can serve
    # different weights over time (a local `vllm serve` of successive checkpoints).
    cache_scope: str = ""
    # How calls are sent: one request each (sync) or as rows of provider batches (batch, see
    # batch.py), polled every batch_poll_s, each row tried in at most batch_max_tries batches;
    # max_enqueued_tokens is the provider's per-model cap on tokens enqueued (null: none).
    mode: str = "sync"
    batch_poll_s: float = 60.0
    batch_max_tries: int = 3
    max_enqueued_tokens: int | None = None

    def __post_init__(self):
        where = f"endpoint {self.label!r}"
        if not self.base_url or not self.model:
            raise ConfigError(f"{where}: base_url and model are required")
        if self.kind not in KINDS:
            raise ConfigError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.structured not in STRUCTURED_MODES:
            raise ConfigError(f"{where}: structured must be one of {STRUCTURED_MODES}")
        if self.structured == "extra_body" and self.kind != "vllm":
            raise ConfigError(f"{where}: structured=extra_body is a vLLM feature")
        if int(self.concurrency) < 1:
            raise ConfigError(f"{where}: concurrency must be >= 1")
        if not self.timeout_s or self.timeout_s <= 0:
            # The SDK's default is 10 minutes; an unset timeout is never what a run wants.
            raise ConfigError(f"{where}: timeout_s must be > 0")
        for key in ("rpm", "tpm"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"{where}: {key} must be >= 0 or null")
        if self.mode not in MODES:
            raise ConfigError(f"{where}: mode must be one of {MODES}, got {self.mode!r}")
        if not self.batch_poll_s or self.batch_poll_s <= 0:
            raise ConfigError(f"{where}: batch_poll_s must be > 0")
        if int(self.batch_max_tries) < 1:
            raise ConfigError(f"{where}: batch_max_tries must be >= 1")
        if self.max_enqueued_tokens is not None and self.max_enqueued_tokens <= 0:
            raise ConfigError(f"{where}: max_enqueued_tokens must be > 0 or null")

    @property
    def label(self) -> str:
        return self.name or self.model

    @property
    def lane_key(self) -> tuple[str, str]:
        return (self.base_url.rstrip("/"), self.model)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, name: str = "",
                     ignore: tuple[str, ...] = ()) -> "EndpointSettings":
        """Build from a config mapping; ``ignore`` lists keys that belong to the caller
        (per-step sampling, a verifier's ``fallback``) rather than to the endpoint."""
        data = dict(data)
        if name and not data.get("name"):
            data["name"] = name
        return _from_mapping(cls, data, ignore, f"endpoint {name or data.get('model')!r}")


@dataclass(frozen=True)
class Sampling:
    """Per-call sampling. ``None`` means "not sent" (the server's default applies).

    ``max_tokens`` is the output cap whatever the profile calls it on the wire. ``top_k``,
    ``min_p`` and ``repetition_penalty`` exist only on vLLM; ``extra`` is merged into
    ``extra_body`` as is (for server-specific knobs this class does not name).
    """

    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    reasoning_effort: str | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "Sampling":
        data = dict(data or {})
        if isinstance(data.get("stop"), (list, tuple)):
            data["stop"] = tuple(data["stop"])
        return _from_mapping(cls, data, (), "sampling")
