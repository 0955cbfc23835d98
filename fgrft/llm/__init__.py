"""OpenAI-compatible call engine: lanes, limits, one retry owner, structured outputs.

Knows nothing about the pipeline: it sends chat messages to an endpoint and returns a checked
answer. See :mod:`fgrft.llm.engine` for the call life cycle, :mod:`fgrft.llm.cache` for the
crash-safe response cache and :mod:`fgrft.llm.accounting` for tokens, cost, budget and dry runs.
Imports only :mod:`fgrft.errors` and :mod:`fgrft.secrets` from the rest of fgrft (never the
config package: settings, the price table included, arrive as plain values).
"""
from fgrft.llm.accounting import (Budget, BudgetExhaustedError, Estimate, Ledger, PlannedCall,
                                  PriceTable, estimate, load_prices)
from fgrft.llm.batch import BatchFailedError, Batcher
from fgrft.llm.cache import SqliteResponseCache
from fgrft.llm.config import EndpointSettings, Sampling
from fgrft.llm.engine import (CallResult, Endpoint, Engine, ResponseCache, TraceEvent, Usage)
from fgrft.llm.errors import (ConfigError, EndpointError, FatalAPIError, LLMError, OutputError,
                              RetryExhaustedError, RunStoppedError, redact)
from fgrft.llm.lanes import Clock, Lane, TokenBucket, estimate_tokens
from fgrft.llm.profiles import Profile, build_request, profile_for, request_key
from fgrft.llm.retry import RetryPolicy
from fgrft.llm.structured import SchemaError, check_schema, validate

__all__ = [
    "Budget", "BudgetExhaustedError", "Estimate", "Ledger", "PlannedCall", "PriceTable",
    "SqliteResponseCache", "estimate", "load_prices", "BatchFailedError", "Batcher",
    "CallResult", "Clock", "ConfigError", "Endpoint", "EndpointSettings", "EndpointError", "Engine",
    "FatalAPIError", "LLMError", "Lane", "OutputError", "Profile", "ResponseCache",
    "RetryExhaustedError", "RetryPolicy", "RunStoppedError", "Sampling", "SchemaError",
    "TokenBucket", "TraceEvent", "Usage", "build_request", "check_schema", "estimate_tokens",
    "profile_for", "redact", "request_key", "validate",
]
