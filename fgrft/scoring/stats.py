"""Statistics for accuracies: intervals, paired comparisons, sample summaries.

Everything here is deterministic: resampling takes an explicit seed.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

import numpy as np

Z_95 = 1.959963984540054  # the 0.975 quantile of the standard normal
DEFAULT_RESAMPLES = 10_000
_CHUNK = 1_000  # resamples drawn at once: bounds memory to CHUNK x items


def wilson_interval(correct: int, total: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default).

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not
    collapse to a point at 0/n or n/n. With no trials it is [0, 1].
    """
    if total < 0 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total, got {correct}/{total}")
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    z2 = z * z
    denom = 1.0 + z2 / total
    centre = (p + z2 / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denom
    # Clamp only floating-point spill: the exact bounds are 0 at k=0 and 1 at k=n.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def _join(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of the items present in both runs, aligned by id."""
    ids = [i for i in a if i in b]
    if not ids:
        raise ValueError("the two runs share no item ids")
    return (np.fromiter((bool(a[i]) for i in ids), dtype=bool, count=len(ids)),
            np.fromiter((bool(b[i]) for i in ids), dtype=bool, count=len(ids)))


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of run a minus run b on their shared items, with a bootstrap CI."""

    difference: float
    ci_low: float
    ci_high: float
    n_items: int
    n_resamples: int
    seed: int


def paired_bootstrap(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool], *,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     confidence: float = 0.95) -> PairedDifference:
    """Percentile bootstrap CI of acc(a) - acc(b) over items joined by id.

    Items are resampled with replacement, keeping each item's pair together.
    The per-item difference takes only the values -1, 0, +1, so the mean of a
    resample depends only on how many of each were drawn: drawing those counts
    from a multinomial is exactly the same distribution as resampling indices,
    and costs O(resamples) instead of O(resamples x items).
    """
    x, y = _join(a, b)
    n = len(x)
    d = x.astype(np.int8) - y.astype(np.int8)
    p = np.array([(d == -1).mean(), (d == 0).mean(), (d == 1).mean()])
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, p, size=n_resamples)
    means = (counts[:, 2] - counts[:, 0]) / n
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return PairedDifference(float(d.mean()), float(low), float(high), n, n_resamples, seed)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test: discordant pairs and the two-sided p-value."""

    a_only: int  # items a got right and b got wrong
    b_only: int  # items b got right and a got wrong
    n_items: int
    p_value: float


def binomial_two_sided_half(k: int, n: int) -> float:
    """Two-sided exact binomial p-value of k successes in n trials at p = 1/2.

    The distribution is symmetric, so the two-sided value is twice the smaller
    tail (capped at 1). Computed with exact integers, so it does not lose
    precision in the tails.
    """
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2 ** n)


def mcnemar_exact(a: Mapping[Hashable, bool], b: Mapping[Hashable, bool]) -> McNemarResult:
    """McNemar's exact test on items joined by id (two-sided binomial on discordant pairs)."""
    x, y = _join(a, b)
    a_only = int((x & ~y).sum())
    b_only = int((~x & y).sum())
    return McNemarResult(a_only, b_only, len(x), binomial_two_sided_half(a_only, a_only + b_only))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the sd of one value is nan."""
    if not values:
        raise ValueError("mean_sd needs at least one value")
    arr = np.asarray(values, dtype=float)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")
    return float(arr.mean()), sd


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most frequent answer over samples given in sample order.

    Unparsed samples (None) do not vote; with no vote at all the result is None.
    A tie goes to the tied answer that appears first in sample order, i.e. the
    one the lowest-numbered sample gave: deterministic, and since sample order
    is arbitrary it favours no answer in particular.
    """
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return None
    top = max(votes.values())
    return next(a for a in answers if a is not None and votes[a] == top)


def clustered_bootstrap_interval(correct: Sequence[int], trials: Sequence[int], *,
                                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile CI of a pooled accuracy whose trials are clustered by item.

    ``correct[i]`` of ``trials[i]`` samples of item i were right. Items (not
    single samples) are resampled, because samples of one item are not
    independent: treating them as independent would make the interval too
    narrow.
    """
    c = np.asarray(correct, dtype=np.int64)
    t = np.asarray(trials, dtype=np.int64)
    n = len(c)
    if n == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    acc = np.empty(n_resamples)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))
        acc[start:start + size] = c[idx].sum(axis=1) / np.maximum(t[idx].sum(axis=1), 1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(acc, [alpha, 1 - alpha])
    return float(low), float(high)
