"""Errors raised by the call engine, and the redaction every message passes through.

Three families, because callers must react differently:

* :class:`ConfigError`     bad endpoint settings or schema; raised before any call is made
                           (:class:`fgrft.errors.ConfigError`, the same class the config
                           schema raises).
* :class:`FatalAPIError`   the server refused the request itself (400/401/403/404/422, a quota
                           that will not come back, ...): retrying cannot help and the run stops.
  :class:`RunStoppedError` raised by every later call of an engine that saw a fatal error.
  :class:`RetryExhaustedError` transient failures (timeouts, 429, 5xx) outlived the retry budget.
* :class:`OutputError`     the server answered but the answer is unusable (cut by the length limit,
                           refused, empty, malformed or off-schema after its retries). It is about
                           one call's content, not the endpoint, so the pipeline drops the item
                           and goes on. It carries the :class:`~fgrft.llm.engine.CallResult` so
                           the tokens it cost are still accounted for.

API keys never reach a message: the engine knows the key values of its lanes and every message
built here goes through :func:`fgrft.secrets.redact`, which also masks anything shaped like a
bearer token or an OpenAI key (servers echo partial keys in 401 bodies).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from fgrft.errors import ConfigError  # one definition, shared with the config schema
from fgrft.secrets import redact  # the one redaction rule

__all__ = ["ConfigError", "EndpointError", "FatalAPIError", "LLMError", "OutputError", "RetryExhaustedError",
           "RunStoppedError", "redact"]

if TYPE_CHECKING:  # pragma: no cover
    from fgrft.llm.engine import CallResult


class LLMError(Exception):
    """Base class of every error raised by :mod:`fgrft.llm`."""


class EndpointError(LLMError):
    """An error tied to one endpoint; the message names the endpoint, its URL and model."""

    def __init__(self, message: str, *, endpoint: str, base_url: str, model: str,
                 status: int | None = None, reason: str = ""):
        self.endpoint, self.base_url, self.model = endpoint, base_url, model
        self.status, self.reason = status, reason
        super().__init__(message)


class FatalAPIError(EndpointError):
    """The request itself was refused; retrying cannot help, so the run stops."""


class RetryExhaustedError(EndpointError):
    """Transient failures (timeouts, dropped connections, 429, 5xx) outlived the retry budget."""


class RunStoppedError(LLMError):
    """The engine already hit a fatal error; no further call is sent."""


class OutputError(LLMError):
    """The server answered, but the content is unusable; ``result.outcome`` says why."""

    def __init__(self, message: str, result: "CallResult"):
        self.result = result
        self.outcome = result.outcome
        super().__init__(message)
