"""Token and cost accounting, the spending cap (``budget_usd``) and dry-run estimates.

    prices = load_prices(PRICES_FILE)            # conf/prices.yaml, versioned
    ledger = Ledger(prices, budget=Budget(5.0))  # the engine records every attempt here
    engine = Engine(cache=..., ledger=ledger)
    ...
    summary.update(ledger.summary())             # calls, cache_hits, tokens{model: ...}, cost_usd

* Tokens are tallied per model as ``prompt``, ``cached``, ``completion``, ``reasoning`` (the
  summary.json shape). Only tokens this run paid for are tallied: a cache hit counts as a
  cache hit, costs 0 and adds no tokens.
* Cost follows OpenAI's usage semantics: ``cached`` is the part of ``prompt`` served from the
  provider's prompt cache (billed at the cached rate), and ``reasoning`` is the part of
  ``completion`` spent thinking (already billed as completion, never added twice).
* :class:`Budget` stops a run cleanly: the engine consults it right before sending anything,
  so once the spend reaches the cap no new request starts (retries included) and
  :class:`BudgetExhaustedError` is raised instead; requests already in flight finish, are
  charged and cached. The overshoot is therefore at most the cost of the calls in flight.
* :func:`estimate` turns a plan (model, prompt size, expected output, count) into per-model
  and per-step totals for ``dry_run``; it needs nothing but the price table (works offline).
"""
from __future__ import annotations

import dataclasses
import math
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from fgrft.llm.errors import ConfigError, RunStoppedError

PER_TOKENS = 1_000_000  # prices are USD per this many tokens
# Tokenizer-free prompt estimate, the same rule the lanes use for TPM (lanes.estimate_tokens).
CHARS_PER_TOKEN = 4
# Dated snapshots ("gpt-4o-2024-08-06", "gpt-4-0613") bill as their family name.
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{4})$")
TOKEN_FIELDS = ("prompt", "cached", "completion", "reasoning")


class BudgetExhaustedError(RunStoppedError):
    """``budget_usd`` is spent: no new request is sent (finished calls are kept and cached)."""


# ----------------------------------------------------------------------------- prices


MODES = ("sync", "batch")   # how a call was sent: one request, or a row of a provider batch


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens; ``batch`` is the provider's Batch API price (None: not offered or
    not known, and a batch row is then charged at the synchronous price, never less)."""

    prompt: float
    cached_prompt: float
    completion: float
    batch: "ModelPrice | None" = None

    def cost(self, prompt: int, cached: int, completion: int) -> float:
        uncached = max(prompt - cached, 0)
        return (uncached * self.prompt + min(cached, prompt) * self.cached_prompt
                + completion * self.completion) / PER_TOKENS

    def for_mode(self, mode: str) -> "ModelPrice":
        return self.batch if mode == "batch" and self.batch is not None else self


FREE = ModelPrice(0.0, 0.0, 0.0)


@dataclass(frozen=True)
class PriceTable:
    version: int
    as_of: str
    models: Mapping[str, ModelPrice]

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of ``model``: exact name, else without a ``provider/`` prefix, else
        without a dated snapshot suffix. Prefixes are not matched on purpose: ``o3-mini``
        must not bill as ``o3``."""
        for name in _candidates(model):
            if name in self.models:
                return self.models[name]
        return None

    def price_for(self, model: str, *, local: bool = False) -> ModelPrice | None:
        """``lookup``, with self-hosted endpoints free unless the table names their model."""
        price = self.lookup(model)
        if price is None and local:
            return FREE
        return price

    def cost(self, model: str, usage: Any, *, local: bool = False, mode: str = "sync") -> float | None:
        """USD for one response's usage (anything with the Usage fields) sent in ``mode``;
        None if unpriced."""
        price = self.price_for(model, local=local)
        if price is None:
            return None
        return price.for_mode(mode).cost(int(usage.prompt), int(usage.cached), int(usage.completion))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "price table") -> "PriceTable":
        for key in ("version", "as_of", "models"):
            if key not in data:
                raise ConfigError(f"{source}: missing {key!r}")
        models = {}
        for name, entry in (data["models"] or {}).items():
            def parse(e: Any, what: str) -> ModelPrice:
                try:
                    price = ModelPrice(float(e["prompt"]), float(e["cached_prompt"]),
                                       float(e["completion"]))
                except (KeyError, TypeError, ValueError) as exc:
                    raise ConfigError(f"{source}: {what} needs numeric prompt, "
                                      f"cached_prompt and completion prices ({exc})") from None
                if min(price.prompt, price.cached_prompt, price.completion) < 0:
                    raise ConfigError(f"{source}: {what} has a negative price")
                return price

            price = parse(entry, f"model {name!r}")
            if entry.get("batch") is not None:
                price = dataclasses.replace(price, batch=parse(entry["batch"], f"model {name!r} batch"))
            models[str(name)] = price
        return cls(version=int(data["version"]), as_of=str(data["as_of"]), models=models)


def _candidates(model: str) -> list[str]:
    names = [model]
    if "/" in model:
        names.append(model.rsplit("/", 1)[1])
    names += [_SNAPSHOT.sub("", n) for n in list(names) if _SNAPSHOT.search(n)]
    return names


def load_prices(path: str | Path) -> PriceTable:
    """The price table at ``path`` (the project's is ``fgrft.config.PRICES_FILE``)."""
    import yaml

    path = Path(path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: not a price table")
    return PriceTable.from_mapping(data, source=str(path))


# ----------------------------------------------------------------------------- budget


class Budget:
    """A spending cap in USD; ``None`` or a negative limit is refused (use no Budget instead)."""

    def __init__(self, limit_usd: float):
        if limit_usd is None or not math.isfinite(float(limit_usd)) or float(limit_usd) < 0:
            raise ConfigError(f"budget_usd must be a number >= 0, got {limit_usd!r}")
        self.limit_usd = float(limit_usd)
        self._spent = 0.0
        self._reserved = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_setting(cls, budget_usd: float | None) -> "Budget | None":
        """The Budget for a ``budget_usd`` config value (null means no cap)."""
        return None if budget_usd is None else cls(budget_usd)

    @property
    def spent_usd(self) -> float:
        return self._spent

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.limit_usd - self._spent)

    @property
    def exhausted(self) -> bool:
        # A zero budget is exhausted from the start: it allows cache hits only.
        return self._spent >= self.limit_usd

    def charge(self, usd: float) -> None:
        with self._lock:
            self._spent += usd

    @property
    def reserved_usd(self) -> float:
        return self._reserved

    def reserve(self, usd: float) -> bool:
        """Set ``usd`` aside for work whose bill comes later (a submitted batch); False, and
        nothing set aside, when spent + reserved + ``usd`` would pass the cap."""
        with self._lock:
            if self._spent + self._reserved + usd > self.limit_usd:
                return False
            self._reserved += usd
            return True

    def release(self, usd: float) -> None:
        """Give back a reservation (its real bill is charged separately)."""
        with self._lock:
            self._reserved = max(0.0, self._reserved - usd)

    def check(self) -> None:
        """Raise :class:`BudgetExhaustedError` once the cap is reached."""
        if self.exhausted:
            raise BudgetExhaustedError(
                f"budget_usd={self.limit_usd:g} is spent (${self._spent:.4f}); no new calls are "
                "sent. Finished calls are cached: re-run with a larger budget_usd to go on.")


# ----------------------------------------------------------------------------- ledger


@dataclass
class ModelTally:
    calls: int = 0          # attempts sent over the network (or answered as batch rows)
    batch_calls: int = 0    # of which rows of a provider batch (mode=batch)
    batch_cost_usd: float = 0.0
    cache_hits: int = 0
    prompt: int = 0
    cached: int = 0
    completion: int = 0
    reasoning: int = 0
    cost_usd: float = 0.0
    priced: bool = True

    def tokens(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in TOKEN_FIELDS}


class Ledger:
    """Tokens, calls, cache hits and cost of one run, per model; optionally under a Budget.

    The engine calls :meth:`record` once per attempt and :meth:`check` before each send.
    Cost is charged by the model name the run *asked for* (the configured one): servers answer
    with snapshot names, and the summary should group by what the configuration says.
    """

    def __init__(self, prices: PriceTable, budget: Budget | None = None):
        self.prices = prices
        self.budget = budget
        self.models: dict[str, ModelTally] = {}
        self._lock = threading.Lock()

    def require_price(self, model: str, *, local: bool = False, where: str = "") -> None:
        """Refuse, before any call, to enforce a budget on a model without a price."""
        if self.budget is not None and self.prices.price_for(model, local=local) is None:
            raise ConfigError(
                f"{where or 'endpoint'}: model {model!r} has no price in the price table "
                f"(version {self.prices.version}, as of {self.prices.as_of}), so budget_usd "
                "cannot be enforced; add it to conf/prices.yaml")

    def check(self) -> None:
        if self.budget is not None:
            self.budget.check()

    def record(self, model: str, usage: Any, *, cached: bool, local: bool = False,
               mode: str = "sync") -> float:
        """Account one attempt sent in ``mode`` (``sync`` or ``batch``, priced accordingly);
        returns what it cost (0 for a cache hit or an unpriced model)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            tally = self.models.setdefault(model, ModelTally())
            if cached:
                tally.cache_hits += 1
                return 0.0
            tally.calls += 1
            tally.batch_calls += mode == "batch"
            for key in TOKEN_FIELDS:
                setattr(tally, key, getattr(tally, key) + int(getattr(usage, key)))
            cost = self.prices.cost(model, usage, local=local, mode=mode)
            if cost is None:
                tally.priced = False
                return 0.0
            tally.cost_usd += cost
            if mode == "batch":
                tally.batch_cost_usd += cost
        if self.budget is not None:
            self.budget.charge(cost)
        return cost

    @property
    def calls(self) -> int:
        return sum(t.calls for t in self.models.values())

    @property
    def cache_hits(self) -> int:
        return sum(t.cache_hits for t in self.models.values())

    @property
    def cost_usd(self) -> float:
        return sum(t.cost_usd for t in self.models.values())

    def summary(self, *, details: bool = False) -> dict[str, Any]:
        """The summary.json fields of CONTRACTS.md: ``calls``, ``cache_hits``, ``tokens``
        {model: {prompt, cached, completion, reasoning}}, ``cost_usd``. ``details`` adds the
        price table's identity (``prices``: version, as_of), ``unpriced_models`` (if any) and
        ``budget_usd`` (if capped), which are not contract fields (yet)."""
        batch_calls = sum(t.batch_calls for t in self.models.values())
        batch_cost = sum(t.batch_cost_usd for t in self.models.values())
        out: dict[str, Any] = {
            "calls": self.calls, "cache_hits": self.cache_hits,
            "tokens": {m: t.tokens() for m, t in sorted(self.models.items())},
            "cost_usd": round(self.cost_usd, 6),
            # Which mode paid for the calls: synchronous requests or provider batch rows.
            "mode": {"sync": {"calls": self.calls - batch_calls,
                              "cost_usd": round(self.cost_usd - batch_cost, 6)},
                     "batch": {"calls": batch_calls, "cost_usd": round(batch_cost, 6)}},
        }
        if not details:
            return out
        out["prices"] = {"version": self.prices.version, "as_of": self.prices.as_of}
        unpriced = sorted(m for m, t in self.models.items() if not t.priced)
        if unpriced:
            out["unpriced_models"] = unpriced
        if self.budget is not None:
            out["budget_usd"] = self.budget.limit_usd
        return out


# ----------------------------------------------------------------------------- dry run


def chars_to_tokens(chars: int) -> int:
    return math.ceil(max(chars, 0) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class PlannedCall:
    """``count`` calls of one kind that a run would make.

    Give the prompt as ``prompt_tokens`` or, without a tokenizer, as ``prompt_chars``
    (``CHARS_PER_TOKEN`` characters per token). ``output_tokens`` is the expected completion
    (reasoning included, for reasoning models). ``local`` marks a self-hosted endpoint.
    """

    step: str
    model: str
    output_tokens: int
    prompt_tokens: int | None = None
    prompt_chars: int | None = None
    count: int = 1
    local: bool = False

    def __post_init__(self):
        if (self.prompt_tokens is None) == (self.prompt_chars is None):
            raise ConfigError(f"planned call {self.step!r}: give prompt_tokens or prompt_chars")
        if self.count < 0 or self.output_tokens < 0:
            raise ConfigError(f"planned call {self.step!r}: negative count or output tokens")

    @property
    def prompt(self) -> int:
        return self.prompt_tokens if self.prompt_tokens is not None else chars_to_tokens(self.prompt_chars)


@dataclass
class EstimateRow:
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def add(self, calls: int, prompt: int, completion: int, cost: float) -> None:
        self.calls += calls
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.cost_usd += cost

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "cost_usd": round(self.cost_usd, 6)}


@dataclass
class Estimate:
    per_model: dict[str, EstimateRow] = field(default_factory=dict)
    per_step: dict[str, EstimateRow] = field(default_factory=dict)
    total: EstimateRow = field(default_factory=EstimateRow)
    unpriced: list[str] = field(default_factory=list)   # models counted at cost 0
    prices: tuple[int, str] = (0, "")                    # (version, as_of)
    already_cached: int = 0                              # calls left out: answered in the cache

    def to_dict(self) -> dict[str, Any]:
        return {"per_model": {k: v.to_dict() for k, v in self.per_model.items()},
                "per_step": {k: v.to_dict() for k, v in self.per_step.items()},
                "total": self.total.to_dict(), "unpriced": list(self.unpriced),
                "already_cached": self.already_cached,
                "prices": {"version": self.prices[0], "as_of": self.prices[1]}}

    def format(self) -> str:
        """A plain-text table for the dry run's printout."""
        lines = [f"{'':24} {'calls':>9} {'prompt tok':>13} {'output tok':>13} {'USD':>11}"]

        def row(label: str, r: EstimateRow) -> str:
            return (f"{label[:24]:24} {r.calls:>9,} {r.prompt_tokens:>13,} "
                    f"{r.completion_tokens:>13,} {r.cost_usd:>11.4f}")

        lines += ["per step:"] + [row("  " + k, v) for k, v in self.per_step.items()]
        lines += ["per model:"] + [row("  " + k, v) for k, v in self.per_model.items()]
        lines.append(row("total", self.total))
        lines.append(f"prices: version {self.prices[0]}, as of {self.prices[1]}")
        if self.already_cached:
            lines.append(f"already answered in the response cache (free): {self.already_cached:,} calls")
        if self.unpriced:
            lines.append(f"unpriced (counted as $0): {', '.join(self.unpriced)}")
        return "\n".join(lines)


def estimate(planned: Iterable[PlannedCall], prices: PriceTable, *,
             mode: str | dict[str, str] = "sync") -> Estimate:
    """Per-model, per-step and total calls, tokens and USD of a plan (no cache assumed), at
    ``mode``'s prices (one mode, or a mode per model name)."""
    out = Estimate(prices=(prices.version, prices.as_of))
    for call in planned:
        prompt, completion = call.prompt * call.count, call.output_tokens * call.count
        price = prices.price_for(call.model, local=call.local)
        if price is None:
            if call.model not in out.unpriced:
                out.unpriced.append(call.model)
            cost = 0.0
        else:
            m = mode if isinstance(mode, str) else mode.get(call.model, "sync")
            cost = price.for_mode(m).cost(prompt, 0, completion)
        for table, key in ((out.per_model, call.model), (out.per_step, call.step)):
            table.setdefault(key, EstimateRow()).add(call.count, prompt, completion, cost)
        out.total.add(call.count, prompt, completion, cost)
    return out
