"""Seeded draws of n items that do not depend on input order.

Each item is ranked by ``sha256(f"{seed}:{stem_id}")`` (ties, i.e. one stem
with different options, broken by ``id``) and the first n of that ranking are
drawn. Ranking by a hash of the question stem, rather than shuffling a list,
gives three properties the experiments rely on:

* the same seed draws the same questions whatever order the set was read in;
* a set that holds the same questions with or without parsed options (the
  MedQA training split, the naive-CoT set built on it) yields the same draw,
  because the stem alone decides the rank; so ``source.n``/``seed`` in Stage 1
  and ``data.n``/``seed`` for the naive-CoT arms pick the same questions;
* the draw of n is the first n of the draw of n + 1.

Asking for more items than there are returns them all (in rank order) with a
warning, so toy-scale runs on the bundled sample still work; pass
``strict=True`` to make it an error instead.
"""
from __future__ import annotations

import hashlib
import logging
from typing import Any, Sequence, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def rank_key(item: Any, seed: int) -> tuple[str, str]:
    """The sort key of an item in the draw with this seed."""
    stem = getattr(item, "stem_id", None) or item.id
    return hashlib.sha256(f"{seed}:{stem}".encode()).hexdigest(), str(item.id)


def draw(items: Sequence[T], n: int | None, seed: int, *, strict: bool = False) -> list[T]:
    """The n items of the seeded draw, in rank order; every item when n is None.

    Items need an ``id`` and, preferably, a ``stem_id`` (Question and
    TrainingRecord have both).
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"the draw needs an integer seed, got {seed!r}")
    ranked = sorted(items, key=lambda item: rank_key(item, seed))
    if n is None:
        return ranked
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if n > len(ranked):
        message = f"asked to draw {n} items from {len(ranked)}"
        if strict:
            raise ValueError(message)
        log.warning("%s: using all of them", message)
    return ranked[:n]
